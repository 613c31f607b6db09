package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluicemail/sluice/internal/testdns"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

const doctorYAML = `{{HOST}}
state_dir: {{DIR}}/state
listeners:
  - {name: submission, address: 127.0.0.1:0}
policies:
  default:
    allowed_senders: ["*@{{DOMAIN}}", "app@*", "{user}@users.example"]
dkim:
  - {domain: {{DOMAIN}}, selector: s1, key_file: {{DIR}}/dkim.pem}
dns:
  resolver: {{DNS}}
upstreams:
  - name: ses
    host: 127.0.0.1
    ports: {{PORTS}}
    tls: starttls
    tls_ca_file: {{CA}}
    profile: ses
    username: u
    password: {{PASSWORD}}
    connect_timeout: 3s
    timeout: 3s
`

func doctorLines(t *testing.T, out string) map[string]string {
	t.Helper()
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || (f[0] != "OK" && f[0] != "WARN" && f[0] != "FAIL") {
			t.Fatalf("not a doctor line: %q", l)
		}
		// CHECK is everything between the result and the detail (two spaces).
		rest := strings.TrimLeft(l[len(f[0]):], " ")
		check, detail, _ := strings.Cut(rest, "  ")
		lines[check] = f[0] + " " + strings.TrimSpace(detail)
	}
	return lines
}

func TestDoctor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dnsSrv := testdns.Start(t)
	up := testsmtp.Start(t, testsmtp.Options{TLS: testsmtp.TLSStartTLS, Username: "u", Password: "right"})
	closed := testsmtp.ClosedPort(t)
	out, stderr, code := runCmd(t, "", "dkim", "keygen", "--domain", "good.example", "--selector", "s1", "--algo", "ed25519", "--out", filepath.Join(e.dir, "dkim.pem"))
	if code != 0 {
		t.Fatal(stderr)
	}
	rec := parseRecords(t, out)["s1._domainkey.good.example"]
	cfgFor := func(domain, ports, pw string) string {
		return e.config(strings.NewReplacer("{{DOMAIN}}", domain, "{{DNS}}", dnsSrv.Addr, "{{PORTS}}", ports, "{{CA}}", up.CAFile(), "{{PASSWORD}}", pw).Replace(doctorYAML))
	}

	// A good domain: the record, SPF through a nested include, DMARC reject.
	dnsSrv.SetValue("s1._domainkey.good.example", rec)
	dnsSrv.SetTXT("good.example", []string{"v=spf1 include:_spf.good.example ~all"}, []string{"site-verification=1"})
	dnsSrv.SetTXT("_spf.good.example", []string{"v=spf1 include:amazonses.com -all"})
	dnsSrv.SetTXT("_dmarc.good.example", []string{"v=DMARC1; p=reject; rua=mailto:d@good.example"})
	dnsSrv.SetTXT("users.example", []string{"v=spf1 include:amazonses.com -all"})
	dnsSrv.SetTXT("_dmarc.users.example", []string{"v=DMARC1; p=quarantine"})
	cfg := cfgFor("good.example", fmt.Sprintf("[%d]", up.Port()), "right")
	out, stderr, code = runCmd(t, "", "doctor", "-c", cfg)
	if out == "" {
		t.Fatalf("doctor printed nothing: exit %d %s", code, stderr)
	}
	lines := doctorLines(t, out)
	port := fmt.Sprintf("upstream ses 127.0.0.1:%d", up.Port())
	want := map[string]string{
		"dkim s1._domainkey.good.example": "OK active key ed25519 publishes the key",
		"spf good.example":                `OK "v=spf1 include:_spf.good.example ~all"`,
		"dmarc good.example":              "OK p=reject",
		"dkim users.example":              "WARN no active DKIM key: mail from users.example is sent unsigned (add a dkim: entry, or `sluice dkim rotate` for a managed one)",
		"dmarc users.example":             "OK p=quarantine",
		port + " connect":                 "OK banner and EHLO answered",
		port + " tls":                     "OK TLS 1.3, certificate verified for 127.0.0.1",
		port + " auth":                    "OK AUTH PLAIN as u accepted; QUIT, nothing sent",
	}
	for check, w := range want {
		if lines[check] != w {
			t.Errorf("good: %s: got %q, want %q", check, lines[check], w)
		}
	}
	if code != 0 || len(lines) != 9 {
		t.Fatalf("good: exit %d, %d lines:\n%s%s", code, len(lines), out, stderr)
	}
	if n := len(up.Messages()); n != 0 {
		t.Errorf("doctor sent %d messages", n)
	}
	// dkim status shows the static key as active, checked against DNS.
	st := dkimStatus(t, cfg)
	if k := st["s1"]; k.Domain != "good.example" || k.State != "active" || k.DNS != "ok" || k.Algorithm != "ed25519" || k.Created.IsZero() {
		t.Errorf("dkim status of a static key: %+v", k)
	}

	// A broken one: a wrong DKIM key, SPF without amazonses.com, no DMARC,
	// a closed port, a wrong password: one line each, exit 1.
	dnsSrv.SetValue("s1._domainkey.bad.example", strings.Replace(rec, rec[len(rec)-8:], "AAAAAAA=", 1))
	dnsSrv.SetTXT("bad.example", []string{"v=spf1 include:sendgrid.net ~all"})
	cfg = cfgFor("bad.example", fmt.Sprintf("[%d, %d]", up.Port(), closed), "wrong")
	out, _, code = runCmd(t, "", "doctor", "-c", cfg)
	lines = doctorLines(t, out)
	closedPort := fmt.Sprintf("upstream ses 127.0.0.1:%d", closed)
	for check, prefix := range map[string]string{
		"dkim s1._domainkey.bad.example": "FAIL record does not match the active key: p= publishes a different Ed25519 key",
		"spf bad.example":                `FAIL "v=spf1 include:sendgrid.net ~all" lacks include:amazonses.com, which upstream ses (profile ses) needs`,
		"dmarc bad.example":              `FAIL no DMARC record: publish TXT "v=DMARC1; p=none; rua=mailto:dmarc@bad.example" at _dmarc.bad.example`,
		closedPort + " connect":          "FAIL upstream ses: dial",
		port + " auth":                   "FAIL upstream ses: auth: 535 5.7.8",
	} {
		if !strings.HasPrefix(lines[check], prefix) {
			t.Errorf("broken: %s: got %q, want %q...", check, lines[check], prefix)
		}
	}
	if code != 1 {
		t.Errorf("broken: exit %d, want 1:\n%s", code, out)
	}

	// --json and --domain: one object per check, only that domain.
	out, _, code = runCmd(t, "", "doctor", "--json", "--domain", "bad.example", "-c", cfg)
	var results []finding
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var f finding
		if err := dec.Decode(&f); err != nil {
			t.Fatal(err)
		}
		results = append(results, f)
	}
	if code != 1 || len(results) != 3 || results[0].Check != "dkim s1._domainkey.bad.example" || results[2].Result != "FAIL" {
		t.Errorf("--json --domain: exit %d %+v", code, results)
	}
}

func FuzzSPFTerms(f *testing.F) {
	f.Add("v=spf1 include:_spf.example.com ip4:192.0.2.0/24 -all")
	f.Add("v=spf1 redirect=_spf.example.net")
	f.Add("v=spf1 +include:a.example. ?all include: -")
	f.Fuzz(func(t *testing.T, rec string) {
		inc, redirect, all := spfTerms(rec)
		for _, i := range inc {
			if i == "" || strings.ContainsAny(i, " \t\n") || strings.HasSuffix(i, ".") && i != strings.TrimSuffix(i, ".") {
				t.Fatalf("include %q from %q", i, rec)
			}
		}
		if strings.ContainsAny(redirect, " \t\n") {
			t.Fatalf("redirect %q", redirect)
		}
		if all != "" && len(all) != 4 {
			t.Fatalf("all %q", all)
		}
		// Terms are read the same from the record rebuilt from them.
		rebuilt := "v=spf1"
		for _, i := range inc {
			rebuilt += " include:" + i
		}
		if redirect != "" {
			rebuilt += " redirect=" + redirect
		}
		if all != "" {
			rebuilt += " " + all
		}
		inc2, redirect2, all2 := spfTerms(rebuilt)
		if strings.Join(inc2, ",") != strings.Join(inc, ",") || redirect2 != redirect || all2 != all {
			t.Fatalf("%q -> %q: %v %q %q vs %v %q %q", rec, rebuilt, inc, redirect, all, inc2, redirect2, all2)
		}
	})
}

// TestDoctorAPIUpstreams: doctor makes one read-only call to an API
// upstream (here Mailgun's domain, over verified TLS) and reports refused
// credentials as a FAIL; nothing is sent.
func TestDoctorAPIUpstreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dnsSrv := testdns.Start(t)
	var sent atomic.Int32
	srv := e.apiServer(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			sent.Add(1)
		}
		if u, p, ok := r.BasicAuth(); !ok || u != "api" || p != "key-right" || r.URL.Path != "/v3/domains/example.com" {
			http.Error(w, `{"message":"Invalid private key"}`, http.StatusUnauthorized)
			return
		}
		io.WriteString(w, `{"domain":{"name":"example.com","state":"active"}}`)
	})
	const yaml = `hostname: relay.test
state_dir: {{DIR}}/state
tls: {cert_file: {{CERT}}, key_file: {{KEY}}}
listeners:
  - {name: submission, address: 127.0.0.1:0}
dns: {resolver: {{DNS}}}
upstreams:
  - {name: mg, api: mailgun, endpoint: "{{URL}}", domain: example.com, api_key: {{KEY_VALUE}}, tls_ca_file: {{DIR}}/api-ca.pem}
`
	for _, tc := range []struct{ key, want string }{
		{"key-right", "OK domain example.com is active; nothing sent"},
		{"key-wrong", "FAIL " + srv.URL + `/v3/domains/example.com: credentials error: HTTP 401: {"message":"Invalid private key"}: check the credentials (and the region) of mg`},
	} {
		cfg := e.config(strings.NewReplacer("{{DNS}}", dnsSrv.Addr, "{{URL}}", srv.URL, "{{KEY_VALUE}}", tc.key).Replace(yaml))
		out, stderr, code := runCmd(t, "", "doctor", "-c", cfg)
		lines := doctorLines(t, out)
		if got := lines["upstream mg mailgun"]; got != tc.want {
			t.Errorf("%s: got %q, want %q\n%s%s", tc.key, got, tc.want, out, stderr)
		}
		if wantCode := map[bool]int{true: 0, false: 1}[tc.key == "key-right"]; code != wantCode {
			t.Errorf("%s: exit %d, want %d\n%s", tc.key, code, wantCode, out)
		}
	}
	if n := sent.Load(); n != 0 {
		t.Errorf("doctor made %d non-GET requests", n)
	}
}
