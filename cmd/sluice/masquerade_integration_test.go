package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// TestMasquerade: a legacy host (admitted by network) sending as
// scanner@corp.local arrives as scanner@example.com — envelope sender,
// From:, Sender: and Return-Path: rewritten before allowed_senders and
// before signing — signed for example.com and verifying; the original is in
// the journal only (DESIGN §8.5).
func TestMasquerade(t *testing.T) {
	t.Parallel()
	d := launch(t, baseCfg, unstarted, edited("users:\n", `  - name: legacy
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.0/8]
    policy: scanners
users:
`), edited("dkim:\n", `  scanners:
    allowed_senders: ["*@example.com"]
    masquerade:
      - {match: "*@corp.local", to: "{local}@example.com"}
dkim:
`))

	out, stderr, code := runCmd(t, "", "policy", "explain", "-c", d.cfg, "--user", "app", "--from", "app@example.com", "--to", "r@example.org")
	if code != 0 {
		t.Fatalf("policy explain: exit %d\n%s%s", code, out, stderr)
	}
	c, err := smtp.Dial(d.serve().addrs["legacy"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := "Return-Path: <scanner@corp.local>\r\nFrom: \"Scanner 3rd floor\" <scanner@corp.local>\r\nSender: scanner@CORP.local\r\n" +
		"To: <r@example.org>\r\nSubject: scan\r\nMessage-ID: <masq@corp.local>\r\n\r\nscanned page\r\n"
	qid, err := transact(c, "scanner@corp.local", []string{"r@example.org"}, msg)
	if err != nil {
		t.Fatal(err)
	}
	// A sender no rule rewrites is still checked: 550 5.7.1.
	if err := c.Mail("scanner@corp.other", nil); replyCode(err) != "550 5.7.1" {
		t.Errorf("MAIL from an unrewritten, disallowed sender: %v, want 550 5.7.1", err)
	}
	c.Quit()

	m := d.up.WaitMessages(t, 1, 20*time.Second)[0]
	if m.From != "scanner@example.com" {
		t.Errorf("envelope sender %q, want scanner@example.com", m.From)
	}
	for _, want := range []string{
		"\r\nFrom: \"Scanner 3rd floor\" <scanner@example.com>\r\n",
		"\r\nSender: <scanner@example.com>\r\n",
		"Return-Path: <scanner@example.com>\r\n",
	} {
		if !bytes.Contains(m.Data, []byte(want)) {
			t.Errorf("delivered message lacks %q:\n%s", want, m.Data)
		}
	}
	if i := bytes.Index(m.Data, []byte("@corp.local>\r\n")); i >= 0 && !bytes.Contains(m.Data, []byte("Message-ID: <masq@corp.local>")) {
		t.Errorf("the original address is still in the message:\n%s", m.Data)
	}
	if bytes.Count(m.Data, []byte("scanner@corp.local")) != 0 || bytes.Count(m.Data, []byte("scanner@CORP.local")) != 0 {
		t.Errorf("the original address is still in the message:\n%s", m.Data)
	}
	verifyDKIM(t, d.txt, m.Data)

	waitQueueEmpty(t, d.env)
	out, stderr, code = runCmd(t, "", "trace", qid, "--state-dir", filepath.Join(d.dir, "state"))
	if code != 0 || !strings.Contains(out, " from scanner@example.com\n") || !strings.Contains(out, "original_sender=scanner@corp.local") ||
		!strings.Contains(out, `original_from="\"Scanner 3rd floor\" <scanner@corp.local>"`) {
		t.Errorf("trace: exit %d\n%s%s", code, out, stderr)
	}
}
