package relay

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/policy"
)

// TestReloadRaisesSizeLimit: a SIGHUP that raises max_message_size lets
// a message between the old and the new limit through, and EHLO advertises
// the new SIZE (go-smtp fixes both per server, so Reload puts a new server
// in front).
func TestReloadRaisesSizeLimit(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{policies: reviewPolicies})

	y := strings.Replace(mustYAML(t, tr), "max_message_size: 2000\n", "max_message_size: 200000\n", -1)
	cfg, err := config.Parse([]byte(y), filepath.Join(t.TempDir(), "sluice.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(cfg, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pol.Close)
	tr.srv.Reload(cfg, pol, tr.keys)

	c := tr.dial(t, "submission", "alice")
	if ok, size := c.Extension("SIZE"); !ok || size != "200000" {
		t.Errorf("EHLO SIZE after reload = %q, want 200000 (the new largest max_message_size)", size)
	}
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n", 100) // ~7.5 KB
	_, err = send(c, "a@example.com", []string{"r@example.org"}, msg("a@example.com", "r@example.org", "big", body))
	if err != nil {
		t.Fatalf("7.5 KB message under the reloaded 200 KB limit: %s (want 250)", codeOf(err))
	}
}

const reviewPolicies = "    max_message_size: 2000\n  strict:\n    allowed_senders: [\"bob@example.com\"]\n    max_message_size: 2000\n"

// mustYAML rebuilds the YAML a relay was started from (the test config is
// not kept as text), by formatting the same template.
func mustYAML(t *testing.T, tr *testRelay) string {
	t.Helper()
	port := fmt.Sprint(tr.up.Port())
	return fmt.Sprintf(yamlBase, port, reviewPolicies, "", tr.cfg.StateDir, testHash, "")
}

// TestRequireTLSNotDowngraded: a client that sends MAIL ... REQUIRETLS
// over TLS asks that the message never travel in clear (RFC 8689). A route
// with only a plaintext (tls: none) upstream must not carry it.
func TestRequireTLSNotDowngraded(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	c := tr.dial(t, "submission", "alice")
	if ok, _ := c.Extension("REQUIRETLS"); !ok {
		t.Fatal("REQUIRETLS not advertised after STARTTLS")
	}
	if err := c.Mail("a@example.com", &smtp.MailOptions{RequireTLS: true}); err != nil {
		return // refused at MAIL: acceptable
	}
	if err := c.Rcpt("r@example.org", nil); err != nil {
		return
	}
	w, err := c.Data()
	if err != nil {
		return
	}
	fmt.Fprint(w, msg("a@example.com", "r@example.org", "requiretls", "secret"))
	if _, err := w.CloseWithResponse(); err != nil {
		return // refused at DATA: acceptable
	}
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range tr.up.Messages() {
			if !m.TLS {
				t.Fatalf("REQUIRETLS message accepted with 250 and delivered to the upstream in clear:\n%.200s", m.Data)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBDATResetRace: with CHUNKING, go-smtp runs Session.Data in its
// own goroutine; an RSET (or a new MAIL) between chunks calls Session.Reset
// on the connection goroutine while Data is still running. Data works on
// its own copy of the transaction (the race detector watches this test).
func TestBDATResetRace(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	for i := 0; i < 5; i++ {
		r := rawDial(t, tr.addr("submission"), nil)
		r.startTLSAuth(tr.tlsConfig(), "alice", testPassword)
		if got := r.cmd("MAIL FROM:<a@example.com>"); !strings.HasPrefix(got, "250") {
			t.Fatalf("MAIL: %s", got)
		}
		if got := r.cmd("RCPT TO:<r@example.org>"); !strings.HasPrefix(got, "250") {
			t.Fatalf("RCPT: %s", got)
		}
		// One chunk with the whole header and part of the body, not LAST:
		// Data parses the header and reads s.from/s.rcpts, then waits.
		chunk := "From: <a@example.com>\r\nTo: <r@example.org>\r\nSubject: bdat\r\n\r\npart one\r\n"
		r.write(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk))
		if got := r.reply(); !strings.HasPrefix(got, "250") {
			t.Fatalf("BDAT: %s", got)
		}
		r.cmd("RSET")
		r.cmd("MAIL FROM:<a@example.com>")
		r.cmd("RCPT TO:<x@example.org>")
		r.cmd("QUIT")
	}
}
