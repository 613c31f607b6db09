package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluicemail/sluice/internal/dnsclient"
	"github.com/sluicemail/sluice/internal/testdns"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

const managedYAML = `state_dir: {{DIR}}/state
shutdown_timeout: 5s
{{BASE}}
{{USERS}}
dkim:
  - {domain: example.com, managed: true, algorithms: [rsa, ed25519]}
dkim_check_interval: 1s
dkim_retire_after: {{RETIRE}}
dns:
  resolver: {{DNS}}
  timeout: 2s
http:
  address: 127.0.0.1:0
queue:
  retry: [300ms]
{{UP}}`

// managedCfg is managedYAML with the test DNS server at dnsAddr and
// dkim_retire_after retire.
func managedCfg(dnsAddr, retire string) option {
	return configWith(func(port int) string {
		return strings.NewReplacer("{{UP}}", upstreamYAML(port), "{{DNS}}", dnsAddr, "{{RETIRE}}", retire).Replace(managedYAML)
	})
}

// recordLine splits one `sluice dkim dns` line into its name and value.
var recordLineRE = regexp.MustCompile(`^(\S+)\. IN TXT \((( "[^"]*")+) \)$`)

func parseRecords(t *testing.T, out string) map[string]string {
	t.Helper()
	recs := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		m := recordLineRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("not a record line: %q", line)
		}
		recs[m[1]] = strings.ReplaceAll(strings.ReplaceAll(m[2], `" "`, ""), `"`, "")[1:]
	}
	return recs
}

// verifyWith verifies every signature of data against the test DNS and
// returns the selectors that signed.
func verifyWith(t *testing.T, dnsAddr string, data []byte) []string {
	t.Helper()
	c, err := dnsclient.New(dnsAddr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(data), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		return c.LookupTXT(context.Background(), name)
	}})
	if err != nil {
		t.Fatal(err)
	}
	var sels []string
	for _, v := range vs {
		if v.Err != nil {
			t.Fatalf("signature d=%s does not verify: %v\n%s", v.Domain, v.Err, data)
		}
	}
	for _, m := range regexp.MustCompile(`(?m)\bs=([a-z0-9-]+);`).FindAllSubmatch(data, -1) {
		sels = append(sels, string(m[1]))
	}
	return sels
}

type keyLine struct {
	Domain, Selector, Algorithm, State, DNS string
	Created                                 time.Time
}

func dkimStatus(t *testing.T, cfg string) map[string]keyLine {
	t.Helper()
	out, stderr, code := runCmd(t, "", "dkim", "status", "--json", "-c", cfg)
	if code != 0 {
		t.Fatalf("dkim status: %d %s", code, stderr)
	}
	keys := map[string]keyLine{}
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var k keyLine
		if err := dec.Decode(&k); err != nil {
			t.Fatal(err)
		}
		keys[k.Selector] = k
	}
	return keys
}

// TestDKIMRotation walks a managed domain through two generations of keys
// while serve runs, against a DNS server the test changes.
func TestDKIMRotation(t *testing.T) {
	t.Parallel()
	dnsSrv := testdns.Start(t)
	d := launch(t, managedCfg(dnsSrv.Addr, "2s"), unstarted)
	today := "s" + time.Now().UTC().Format("20060102")

	// First rotate: pending, and activate refuses while DNS has nothing.
	out, stderr, code := runCmd(t, "", "dkim", "rotate", "--domain", "example.com", "-c", d.cfg)
	if code != 0 {
		t.Fatalf("rotate: %d %s", code, stderr)
	}
	gen1 := parseRecords(t, out)
	r1, e1 := today+"r._domainkey.example.com", today+"e._domainkey.example.com"
	if len(gen1) != 2 || !strings.HasPrefix(gen1[r1], "v=DKIM1; k=rsa; p=") || !strings.HasPrefix(gen1[e1], "v=DKIM1; k=ed25519; p=") {
		t.Fatalf("rotate printed:\n%s", out)
	}
	_, stderr, code = runCmd(t, "", "dkim", "activate", "--domain", "example.com", "-c", d.cfg)
	if code != 1 || !strings.Contains(stderr, r1+": no TXT record (missing)") || !strings.Contains(stderr, e1+": no TXT record (missing)") {
		t.Fatalf("activate without records: %d %q", code, stderr)
	}
	for name, v := range gen1 {
		dnsSrv.SetValue(name, v)
	}
	out, stderr, code = runCmd(t, "", "dkim", "activate", "--domain", "example.com", "-c", d.cfg)
	if code != 0 || out != "example.com: activated "+today+"r, "+today+"e\n" {
		t.Fatalf("activate: %d %q %q", code, out, stderr)
	}

	d.serve()
	sendID := func(id string) {
		t.Helper()
		if _, err := d.sendMsg(id, "rotation"); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	sendID("m1")
	msgs := d.up.WaitMessages(t, 1, 10*time.Second)
	if sels := verifyWith(t, dnsSrv.Addr, msgs[0].Data); strings.Join(sels, ",") != today+"r,"+today+"e" {
		t.Fatalf("m1 signed by %v", sels)
	}

	// m2 waits in the queue (the upstream defers it) across the rotation.
	d.up.Fail(testsmtp.StageMail, 451, [3]int{4, 3, 0}, "try later")
	sendID("m2")
	waitFor(t, 30*time.Second, "m2 deferred", func() bool { return strings.Contains(d.stderr.String(), "msg=deferred") })

	// Second rotate while serve runs: pending; mail keeps the old selectors.
	out, stderr, code = runCmd(t, "", "dkim", "rotate", "--domain", "example.com", "-c", d.cfg)
	if code != 0 {
		t.Fatalf("rotate 2: %d %s", code, stderr)
	}
	gen2 := parseRecords(t, out)
	r2, e2 := today+"r2._domainkey.example.com", today+"e2._domainkey.example.com"
	if gen2[r2] == "" || gen2[e2] == "" {
		t.Fatalf("rotate 2 printed:\n%s", out)
	}
	// dkim dns prints every record that must be in DNS: active and pending.
	out, _, code = runCmd(t, "", "dkim", "dns", "-c", d.cfg)
	if recs := parseRecords(t, out); code != 0 || len(recs) != 4 || recs[r1] != gen1[r1] || recs[e2] != gen2[e2] {
		t.Fatalf("dkim dns: %d\n%s", code, out)
	}
	st := dkimStatus(t, d.cfg)
	if k := st[today+"r2"]; k.State != "pending" || k.DNS != "missing" || k.Algorithm != "rsa" || k.Domain != "example.com" || time.Since(k.Created) > time.Minute {
		t.Fatalf("status of the new key: %+v", k)
	}
	if k := st[today+"r"]; k.State != "active" || k.DNS != "ok" {
		t.Fatalf("status of the old key: %+v", k)
	}
	// Wrong key at the RSA name: mismatch, named.
	dnsSrv.SetValue(r2, gen1[r1])
	dnsSrv.SetValue(e2, gen2[e2])
	_, stderr, code = runCmd(t, "", "dkim", "activate", "--domain", "example.com", "-c", d.cfg)
	if code != 1 || !strings.Contains(stderr, r2+": p= publishes a different RSA key (mismatch)") || strings.Contains(stderr, e2) {
		t.Fatalf("activate with a wrong key: %d %q", code, stderr)
	}
	if st := dkimStatus(t, d.cfg); st[today+"r2"].DNS != "mismatch" || st[today+"r2"].State != "pending" {
		t.Fatalf("status after a wrong key: %+v", st[today+"r2"])
	}
	sendID("m3")
	msgs = d.up.Messages()
	// Mail keeps flowing, over new connections, while the keys switch.
	stop := make(chan struct{})
	flowDone := make(chan []string)
	go func() {
		var ids []string
		for i := 0; ; i++ {
			select {
			case <-stop:
				flowDone <- ids
				return
			default:
			}
			id := fmt.Sprintf("flow%d", i)
			if _, err := d.sendMsg(id, "during the switch"); err != nil {
				t.Errorf("%s during the key switch: %v", id, err)
				flowDone <- ids
				return
			}
			ids = append(ids, id+"@example.com")
		}
	}()
	// Right key: the daemon activates the generation by itself.
	dnsSrv.SetValue(r2, gen2[r2])
	// (Each earlier change of the state file reloaded the keys too: wait
	// for the reload that signs with the new generation.)
	if !d.waitLog("msg=dkim_key_active", 30*time.Second) || !d.waitLog("example.com="+today+"r2,"+today+"e2", 30*time.Second) {
		t.Fatalf("the daemon did not activate the new keys:\n%s", d.stderr.String())
	}
	sendID("m4")
	close(stop)
	flow := <-flowDone
	d.up.ClearFailures()
	all := d.up.WaitMessages(t, len(msgs)+3+len(flow), 60*time.Second)
	byID := map[string][]byte{}
	for _, m := range all {
		for id := range messageIDs(m) {
			byID[id] = m.Data
		}
	}
	old, cur := today+"r,"+today+"e", today+"r2,"+today+"e2"
	// Every message sent during the switch arrived, signed by one whole
	// generation or the other, every signature verifying.
	for _, id := range flow {
		if byID[id] == nil {
			t.Errorf("%s was answered 250 but never arrived", id)
			continue
		}
		if sels := strings.Join(verifyWith(t, dnsSrv.Addr, byID[id]), ","); sels != old && sels != cur {
			t.Errorf("%s signed by %s", id, sels)
		}
	}
	t.Logf("%d messages sent while the keys switched", len(flow))
	for id, want := range map[string]string{"m2@example.com": old, "m3@example.com": old, "m4@example.com": cur} {
		if sels := verifyWith(t, dnsSrv.Addr, byID[id]); strings.Join(sels, ",") != want {
			t.Errorf("%s signed by %v, want %s", id, sels, want)
		}
	}

	// The old generation retires after dkim_retire_after (2s).
	waitFor(t, 30*time.Second, "old keys retired", func() bool {
		st := dkimStatus(t, d.cfg)
		return st[today+"r"].State == "retired" && st[today+"e"].State == "retired" && st[today+"r2"].State == "active"
	})

	// Metrics: the active keys' age and DNS state.
	addr := d.httpAddr()
	okSeries := fmt.Sprintf(`sluice_dkim_dns_ok{domain="example.com",selector="%sr2"}`, today)
	waitFor(t, 30*time.Second, "dkim metrics", func() bool {
		m := readMetrics(t, addr)
		_, old := m[fmt.Sprintf(`sluice_dkim_key_age_seconds{domain="example.com",selector="%sr"}`, today)]
		age, ok := m[fmt.Sprintf(`sluice_dkim_key_age_seconds{domain="example.com",selector="%se2"}`, today)]
		return m[okSeries] == 1 && ok && age >= 0 && age < 600 && !old
	})
	// A record that goes missing shows as 0.
	dnsSrv.SetTXT(r2)
	waitFor(t, 30*time.Second, "dns_ok 0", func() bool { return metric(t, addr, okSeries) == 0 })
}

// TestDKIMRotateKill9 kills `sluice dkim rotate` and `serve` at random
// points of rotations and activations: the state always parses, every key
// it names has its file, and only keys whose records were verified are
// ever active.
func TestDKIMRotateKill9(t *testing.T) {
	t.Parallel()
	dnsSrv := testdns.Start(t)
	d := launch(t, managedCfg(dnsSrv.Addr, "1h"), unstarted)
	stateFile := filepath.Join(d.dir, "state", "dkim", "example.com", "state.json")
	verified := map[string]bool{} // selectors whose exact record the test published
	check := func(round int) {
		t.Helper()
		b, err := os.ReadFile(stateFile)
		if os.IsNotExist(err) {
			return
		}
		var st struct {
			Keys []struct{ Selector, State string }
		}
		if err != nil || json.Unmarshal(b, &st) != nil {
			t.Fatalf("round %d: state.json unreadable: %v\n%s", round, err, b)
		}
		for _, k := range st.Keys {
			if _, err := os.Stat(filepath.Join(filepath.Dir(stateFile), k.Selector+".pem")); err != nil {
				t.Fatalf("round %d: key %s without its file", round, k.Selector)
			}
			if k.State == "active" && !verified[k.Selector] {
				t.Fatalf("round %d: key %s is active but its record was never published", round, k.Selector)
			}
		}
	}
	d.serve()
	rotate := func(killAfter time.Duration) string {
		return runKilled(t, killAfter, "dkim", "rotate", "--force", "--domain", "example.com", "-c", d.cfg)
	}
	// How long a whole rotate takes here, to kill inside it.
	begin := time.Now()
	rotate(0)
	whole := time.Since(begin)
	for round := range 12 {
		if round%3 == 2 {
			// A whole rotate whose records are published: the daemon
			// activates it; kill it too, at some point of its checks.
			out := rotate(0)
			check(round)
			for name, v := range parseRecords(t, out) {
				dnsSrv.SetValue(name, v)
				verified[strings.SplitN(name, ".", 2)[0]] = true
			}
			// Not a synchronisation: a later round kills the daemon later
			// in its checks, so the kill lands at different points.
			time.Sleep(time.Duration(round) * 100 * time.Millisecond)
			d.kill()
			check(round)
			d.serve()
			continue
		}
		// Killed at a different point each round, from the start of the
		// process to the end of its writes.
		rotate(whole * time.Duration(round+1) / 12)
		check(round)
	}
	waitFor(t, 30*time.Second, "an activation", func() bool {
		check(99)
		b, _ := os.ReadFile(stateFile)
		return bytes.Contains(b, []byte(`"state": "active"`))
	})
}
