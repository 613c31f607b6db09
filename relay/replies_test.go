package relay

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

const legacyListeners = `  - name: legacy
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.0/8]
  - name: untrusted
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [192.0.2.0/24]`

const tablePolicies = `    denied_recipients: ["*@blocked.example"]
    max_recipients: 3
    max_message_size: 10KB
  strict:
    allowed_senders: ["bob@example.com"]
    rate:
      messages: 2/1h
`

// TestReplies drives a real client through every row of DESIGN §4 that the
// relay decides, asserting the code and the enhanced code, and that nothing
// refused reached the upstream.
func TestReplies(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{listeners: legacyListeners, policies: tablePolicies})
	big := strings.Repeat("x", 70) + "\r\n"
	// submit sends one message as alice, a@example.com to r@example.org,
	// with the header From from.
	submit := func(t *testing.T, from, subject, body string) error {
		_, err := send(tr.dial(t, "submission", "alice"), "a@example.com", []string{"r@example.org"}, msg(from, "r@example.org", subject, body))
		return err
	}
	cases := []struct {
		name string
		run  func(t *testing.T) error
		want string
	}{
		{"MAIL before AUTH", func(t *testing.T) error {
			return tr.dial(t, "submission", "").Mail("a@example.com", nil)
		}, "530 5.7.0"},
		{"AUTH before STARTTLS", func(t *testing.T) error {
			r := rawDial(t, tr.addr("submission"), nil)
			r.reply()
			if ehlo := r.cmd("EHLO x"); strings.Contains(ehlo, "AUTH") {
				t.Errorf("AUTH offered before STARTTLS: %s", ehlo)
			}
			return parseReply(r.cmd("AUTH PLAIN " + plainIR("alice", testPassword)))
		}, "530 5.7.0"},
		{"wrong password", func(t *testing.T) error {
			return tr.dial(t, "submission", "").Auth(sasl.NewPlainClient("", "alice", "wrong"))
		}, "535 5.7.8"},
		{"unknown user", func(t *testing.T) error {
			return tr.dial(t, "submissions", "").Auth(sasl.NewPlainClient("", "mallory", testPassword))
		}, "535 5.7.8"},
		{"malformed AUTH PLAIN", func(t *testing.T) error {
			r := rawDial(t, tr.addr("submissions"), tr.tlsConfig())
			r.reply()
			r.cmd("EHLO x")
			return parseReply(r.cmd("AUTH PLAIN " + b64("no-nul-bytes")))
		}, "501 5.5.2"},
		{"client not in trusted_networks", func(t *testing.T) error {
			r := rawDial(t, tr.addr("untrusted"), nil)
			greeting := r.reply()
			if rest := r.reply(); !strings.HasPrefix(rest, "EOF") {
				t.Errorf("connection not closed after refusal: %q", rest)
			}
			return parseReply(greeting)
		}, "554 5.7.1"},
		{"REQUIRETLS on plaintext", func(t *testing.T) error {
			r := rawDial(t, tr.addr("legacy"), nil)
			r.reply()
			r.cmd("EHLO x")
			return parseReply(r.cmd("MAIL FROM:<a@example.com> REQUIRETLS"))
		}, "530 5.7.10"},
		{"bare CR", func(t *testing.T) error {
			return submit(t, "a@example.com", "barecr", "line one\rline two")
		}, "554 5.6.0"},
		{"NUL byte", func(t *testing.T) error {
			return submit(t, "a@example.com", "nul", "a\x00b")
		}, "554 5.6.0"},
		{"envelope sender not allowed", func(t *testing.T) error {
			return tr.dial(t, "submission", "alice").Mail("a@elsewhere.example", nil)
		}, "550 5.7.1"},
		{"header From not allowed", func(t *testing.T) error {
			return submit(t, "ceo@elsewhere.example", "spoof", "hi")
		}, "550 5.7.1"},
		{"{user} expands to the login", func(t *testing.T) error {
			c := tr.dial(t, "submission", "alice")
			if err := c.Mail("alice@users.example.com", nil); err != nil {
				return err
			}
			c.Reset()
			return c.Mail("bob@users.example.com", nil)
		}, "550 5.7.1"},
		{"recipient denied", func(t *testing.T) error {
			c := tr.dial(t, "submission", "alice")
			c.Mail("a@example.com", nil)
			return c.Rcpt("x@blocked.example", nil)
		}, "550 5.7.1"},
		{"too many recipients", func(t *testing.T) error {
			c := tr.dial(t, "submission", "alice")
			c.Mail("a@example.com", nil)
			for i := 0; i < 3; i++ {
				if err := c.Rcpt("r"+string(rune('a'+i))+"@example.org", nil); err != nil {
					t.Fatalf("rcpt %d: %v", i, err)
				}
			}
			return c.Rcpt("rz@example.org", nil)
		}, "452 4.5.3"},
		{"too large (SIZE=)", func(t *testing.T) error {
			r := rawDial(t, tr.addr("submission"), nil)
			r.startTLSAuth(tr.tlsConfig(), "alice", testPassword)
			return parseReply(r.cmd("MAIL FROM:<a@example.com> SIZE=20000"))
		}, "552 5.3.4"},
		{"too large (DATA)", func(t *testing.T) error {
			c := tr.dial(t, "submission", "alice")
			_, err := send(c, "a@example.com", []string{"r@example.org"},
				msg("a@example.com", "r@example.org", "big", strings.Repeat(big, 200)))
			if err == nil {
				return nil
			}
			// The session goes on after a 552.
			if nerr := c.Noop(); nerr != nil {
				t.Errorf("session ended after 552: %v", nerr)
			}
			return err
		}, "552 5.3.4"},
		{"per-user rate exceeded", func(t *testing.T) error {
			c := tr.dial(t, "submission", "bob")
			for i := 0; i < 2; i++ {
				if _, err := send(c, "bob@example.com", []string{"r@example.org"}, msg("bob@example.com", "r@example.org", "rate", "x")); err != nil {
					t.Fatalf("message %d: %v", i+1, err)
				}
			}
			return c.Mail("bob@example.com", nil)
		}, "450 4.7.1"},
		{"accepted", func(t *testing.T) error {
			id, err := send(tr.dial(t, "submissions", "alice"), "a@example.com", []string{"r@example.org"},
				msg("a@example.com", "r@example.org", "ok", "hello"))
			if err == nil && !strings.HasPrefix(id, "2.0.0 OK queued as ") {
				t.Errorf("250 text = %q, want \"2.0.0 OK queued as ID\"", id)
			}
			return err
		}, "ok"},
		{"accepted by network", func(t *testing.T) error {
			c := tr.dial(t, "legacy", "")
			_, err := send(c, "printer@example.com", []string{"r@example.org"}, msg("printer@example.com", "r@example.org", "legacy", "scan"))
			return err
		}, "ok"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := codeOf(tc.run(t)); got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
	// Exactly the two accepted messages reached the upstream, and the
	// bob messages of the rate case.
	// A refused message is never queued, so once the four accepted ones
	// arrived nothing more can: no wait is needed to see the absence.
	msgs := tr.up.WaitMessages(t, 4, 10*time.Second)
	if n := len(tr.up.Messages()); n != 4 {
		t.Errorf("upstream got %d messages, want 4 (2 accepted + 2 before the rate limit)", n)
	}
	for _, m := range msgs {
		if strings.Contains(string(m.Data), "Subject: spoof") || strings.Contains(string(m.Data), "Subject: big") {
			t.Errorf("a refused message reached the upstream: %s", m.Data[:80])
		}
	}
}

func parseReply(line string) error {
	var code, a, b, c int
	if n, _ := fmtSscanf(line, &code, &a, &b, &c); n < 1 {
		return &smtp.SMTPError{Message: line}
	}
	if code/100 == 2 {
		return nil
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{a, b, c}, Message: line}
}

// TestConnectionLimits: past max_connections_per_ip the greeting is
// 421 4.7.0 and the connection is closed; a freed slot is usable again.
func TestConnectionLimits(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{listeners: `  - name: capped
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.0/8]
    max_connections_per_ip: 2`})
	a := rawDial(t, tr.addr("capped"), nil)
	b := rawDial(t, tr.addr("capped"), nil)
	for _, r := range []*rawSession{a, b} {
		if got := r.reply(); !strings.HasPrefix(got, "220") {
			t.Fatalf("greeting within the limit: %q", got)
		}
	}
	c := rawDial(t, tr.addr("capped"), nil)
	if got := c.reply(); !strings.HasPrefix(got, "421 4.7.0") {
		t.Errorf("third connection: %q, want 421 4.7.0", got)
	}
	if got := c.reply(); !strings.HasPrefix(got, "EOF") {
		t.Errorf("refused connection not closed: %q", got)
	}
	a.cmd("QUIT")
	got := ""
	for i := 0; i < 50 && !strings.HasPrefix(got, "220"); i++ { // the slot frees when the server closes
		time.Sleep(20 * time.Millisecond)
		got = rawDial(t, tr.addr("capped"), nil).reply()
	}
	if !strings.HasPrefix(got, "220") {
		t.Errorf("after one left: %q, want 220", got)
	}
}
