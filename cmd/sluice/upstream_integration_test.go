package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

// upYAML: one STARTTLS listener, HTTP, and the upstreams given.
const upYAML = `state_dir: {{DIR}}/state
shutdown_timeout: 2s
{{BASE}}
{{USERS}}
queue:
  retry: [10m]
http:
  address: 127.0.0.1:0
upstreams:
%s`

// upstreamRow is one line of `sluice upstreams`.
type upstreamRow struct {
	port     string
	breaker  string
	inFlight int
}

// upstreamsTable reads name's row; the zero row until the daemon wrote
// upstreams.json (within a second of a change).
func upstreamsTable(t *testing.T, cfg, name string) upstreamRow {
	t.Helper()
	out, _, code := runCmd(t, "", "upstreams", "-c", cfg)
	if code != 0 {
		return upstreamRow{}
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != name {
			continue
		}
		r := upstreamRow{port: f[2], breaker: f[3]}
		i := 4
		if f[3] == "open" && f[4] == "until" {
			i = 6
		}
		r.inFlight, _ = strconv.Atoi(f[i])
		return r
	}
	t.Fatalf("no row for %s in:\n%s", name, out)
	return upstreamRow{}
}

// upCfg is upYAML with the upstreams ups gives for the sink's port.
func upCfg(ups func(upPort int) string) option {
	return configWith(func(port int) string { return fmt.Sprintf(upYAML, ups(port)) })
}

// TestUpstreamSilentPortGreetingTimeoutAndRestart (issue 8 item 14): a port
// that accepts TCP and never greets costs greeting_timeout (1s here), not
// the 60s command timeout; the port that worked is remembered across a
// restart (read back from upstreams.json), so the silent port is dialled
// once in all; and IN-FLIGHT goes back to 0 when the queue is empty.
func TestUpstreamSilentPortGreetingTimeoutAndRestart(t *testing.T) {
	t.Parallel()
	silent := testsmtp.Start(t, testsmtp.Options{Mode: testsmtp.Silent})
	d := launch(t, upCfg(func(port int) string {
		return fmt.Sprintf(`  - name: up1
    host: 127.0.0.1
    ports: [%d, %d]
    tls: none
    timeout: 60s
    greeting_timeout: 1s
`, silent.Port(), port)
	}))
	up := d.up
	for i := range 5 {
		d.mustSend(fmt.Sprint("m", i), "x")
	}
	waitFor(t, 15*time.Second, "five messages through the second port (the first never greets)", func() bool { return len(up.Messages()) == 5 })
	waitFor(t, 5*time.Second, "IN-FLIGHT 0 and the port remembered in `sluice upstreams`", func() bool {
		r := upstreamsTable(t, d.cfg, "up1")
		return r.inFlight == 0 && r.port == strconv.Itoa(up.Port())
	})
	if n := silent.AcceptCount(); n != 1 {
		t.Fatalf("the silent port was dialled %d times, want once", n)
	}
	if code := d.stop(10 * time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	d.serve()
	d.mustSend("after-restart", "x")
	waitFor(t, 15*time.Second, "the message after the restart", func() bool { return len(up.Messages()) == 6 })
	if n := silent.AcceptCount(); n != 1 {
		t.Errorf("after a restart the silent port was dialled again (%d in all): the remembered port was not read back", n)
	}
}

// TestUpstreamRetryWhileBreakerOpen (issue 8 item 17, issue 9 item 6):
// `queue retry --all` and `queue flush` while the only upstream's breaker is
// open spend no retry step and push nothing later; a SIGHUP keeps the open
// breaker; a refused reload leaves sluice_upstream_up alone.
func TestUpstreamRetryWhileBreakerOpen(t *testing.T) {
	t.Parallel()
	ups := func(port int) string {
		return fmt.Sprintf(`  - name: up1
    host: 127.0.0.1
    ports: [%d]
    tls: none
    breaker_backoff: 1h
`, port)
	}
	d := launch(t, upCfg(ups), failAt(testsmtp.StageMail, 454, [3]int{4, 7, 0}, "Throttling failure: Maximum sending rate exceeded."))
	d.mustSend("m1", "x")
	attempts := func() (int, time.Time) {
		out, _, _ := runCmd(t, "", "queue", "list", "--json", "-c", d.cfg)
		var m struct {
			Attempts    int       `json:"attempts"`
			NextAttempt time.Time `json:"next_attempt"`
		}
		if json.Unmarshal([]byte(strings.TrimSpace(out)), &m) != nil {
			return -1, time.Time{}
		}
		return m.Attempts, m.NextAttempt
	}
	waitFor(t, 10*time.Second, "the first attempt, throttled", func() bool { n, _ := attempts(); return n == 1 })
	waitFor(t, 10*time.Second, "the breaker open in `sluice upstreams`", func() bool { return upstreamsTable(t, d.cfg, "up1").breaker == "open" })
	if v := d.metric(`sluice_upstream_up{upstream="up1"}`); v != 0 {
		t.Fatalf("sluice_upstream_up = %v with the breaker open", v)
	}

	for _, args := range [][]string{{"queue", "retry", "--all"}, {"queue", "flush"}, {"queue", "retry", "--all"}} {
		if _, stderr, code := runCmd(t, "", append(args, "-c", d.cfg)...); code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		// The worker takes the message, sees the breaker open, and puts it
		// back at the breaker's reopening (in about an hour).
		waitFor(t, 10*time.Second, "the message rescheduled to the breaker's reopening", func() bool {
			_, next := attempts()
			return time.Until(next) > 50*time.Minute
		})
	}
	if n, next := attempts(); n != 1 {
		t.Errorf("after retry --all and flush with the breaker open: %d attempts (next in %v), want 1", n, time.Until(next).Round(time.Minute))
	}
	if got := d.up.AcceptCount(); got != 1 {
		t.Errorf("the open upstream was dialled %d times, want once", got)
	}

	// A refused reload keeps the gauge; an accepted one keeps the breaker.
	os.WriteFile(d.cfg, []byte("hostname: [broken"), 0o600)
	d.reload("reload refused")
	if v := d.metric(`sluice_upstream_up{upstream="up1"}`); v != 0 {
		t.Errorf("a refused reload set sluice_upstream_up to %v", v)
	}
	d.config(fmt.Sprintf(upYAML, ups(d.up.Port())))
	d.reload("msg=reloaded")
	if r := upstreamsTable(t, d.cfg, "up1"); r.breaker != "open" {
		t.Errorf("after SIGHUP the breaker is %s, want still open", r.breaker)
	}
	if v := d.metric(`sluice_upstream_up{upstream="up1"}`); v != 0 {
		t.Errorf("after SIGHUP sluice_upstream_up = %v, want 0 (still open)", v)
	}
}

// TestUpstreamAPIWhenSMTPBlocked (DESIGN §8.5): every SMTP port of the
// first upstream is closed; the Mailgun API upstream (a local HTTPS server
// trusted through tls_ca_file) delivers the message, its bytes as signed.
func TestUpstreamAPIWhenSMTPBlocked(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got [][]byte
	var srv *httptest.Server
	api := before(func(e *env) {
		srv = e.apiServer(func(w http.ResponseWriter, r *http.Request) {
			if u, p, ok := r.BasicAuth(); !ok || u != "api" || p != "key-test" || r.URL.Path != "/v3/example.com/messages.mime" {
				http.Error(w, "Forbidden", http.StatusUnauthorized)
				return
			}
			f, _, err := r.FormFile("message")
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			b, _ := io.ReadAll(f)
			mu.Lock()
			got = append(got, b)
			mu.Unlock()
			io.WriteString(w, `{"message":"Queued. Thank you."}`)
		})
	})
	d := launch(t, api, upCfg(func(int) string {
		return fmt.Sprintf(`  - name: smtp
    host: 127.0.0.1
    ports: [%d, %d]
    tls: none
    priority: 10
  - name: mailgun
    api: mailgun
    endpoint: %s
    tls_ca_file: {{DIR}}/api-ca.pem
    domain: example.com
    api_key: key-test
    priority: 20
`, testsmtp.ClosedPort(t), testsmtp.ClosedPort(t), srv.URL)
	}))
	d.mustSend("over-https", "x")
	waitFor(t, 15*time.Second, "the message through the API upstream", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(string(got[0]), "Message-ID: <over-https@example.com>") {
		t.Errorf("stored message:\n%s", got[0])
	}
}
