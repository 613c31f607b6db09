package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

// utf8Msg is what Postfix relays for a cron job with a UTF-8 subject: a raw
// UTF-8 Subject: and a UTF-8 recipient (RFC 6532).
const utf8Msg = "From: <app@example.com>\r\nTo: <jörg@bücher.example>\r\nSubject: Sicherung für Müller erledigt\r\n" +
	"Message-ID: <utf8-1@example.com>\r\n\r\nok\r\n"

// sendUTF8 submits utf8Msg as app with SMTPUTF8 on MAIL to rcpt.
func sendUTF8(t *testing.T, e *env, addr, rcpt string) {
	t.Helper()
	c, err := login(addr, e.tlsConfig(), nil, "app", password)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("SMTPUTF8"); !ok {
		t.Fatal("EHLO does not offer SMTPUTF8")
	}
	if err := c.Mail("app@example.com", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(rcpt, nil); err != nil {
		t.Fatalf("RCPT %s with SMTPUTF8: %v", rcpt, err)
	}
	if _, err := sendData(c, utf8Msg); err != nil {
		t.Fatal(err)
	}
	c.Quit()
}

// TestSMTPUTF8Relayed: a UTF-8 recipient and Subject sent with SMTPUTF8
// reach an upstream that offers it, with SMTPUTF8 on its MAIL and the bytes
// unchanged (DESIGN §8.5).
func TestSMTPUTF8Relayed(t *testing.T) {
	t.Parallel()
	d := launch(t, baseCfg, sinkOpts(testsmtp.Options{SMTPUTF8: true}))
	sendUTF8(t, d.env, d.addrs["submission"], "jörg@bücher.example")
	m := d.up.WaitMessages(t, 1, 20*time.Second)[0]
	if !m.UTF8 {
		t.Error("the upstream's MAIL lacked SMTPUTF8")
	}
	if len(m.To) != 1 || m.To[0] != "jörg@bücher.example" {
		t.Errorf("recipients %q, want [jörg@bücher.example]", m.To)
	}
	if !bytes.Contains(m.Data, []byte("\r\nSubject: Sicherung für Müller erledigt\r\n")) {
		t.Errorf("the UTF-8 Subject: did not arrive unchanged:\n%s", m.Data)
	}
}

// TestSMTPUTF8NotOffered: the same message meeting an upstream without
// SMTPUTF8 is not sent there: it bounces with 5.6.7 (a DSN to the sender,
// which is ASCII and goes through), and the upstream never sees it. An ASCII
// recipient does not change that when the client declared SMTPUTF8 and the
// Subject: is raw UTF-8 (Postfix's cron mail).
func TestSMTPUTF8NotOffered(t *testing.T) {
	t.Parallel()
	for _, rcpt := range []string{"jörg@bücher.example", "joerg@buecher.example"} {
		t.Run(rcpt, func(t *testing.T) {
			t.Parallel()
			testSMTPUTF8NotOffered(t, rcpt)
		})
	}
}

func testSMTPUTF8NotOffered(t *testing.T, rcpt string) {
	d := launch(t, baseCfg)
	sendUTF8(t, d.env, d.addrs["submission"], rcpt)
	var dsn opsReport
	waitFor(t, 20*time.Second, "a DSN to app@example.com", func() bool {
		for _, m := range d.up.Messages() {
			if m.From == "" && len(m.To) == 1 && m.To[0] == "app@example.com" {
				dsn = opsParseReport(t, m.Data)
				return true
			}
		}
		return false
	})
	if len(dsn.rcpts) != 1 || dsn.rcpts[0].Get("Status") != "5.6.7" || dsn.rcpts[0].Get("Action") != "failed" {
		t.Errorf("DSN recipients %v, want one failed with Status 5.6.7", dsn.rcpts)
	}
	for _, m := range d.up.Messages() {
		if m.From != "" {
			t.Errorf("the UTF-8 message reached an upstream without SMTPUTF8: %s -> %q", m.From, m.To)
		}
	}
}

// TestSMTPUTF8Parameter: a UTF-8 address in MAIL or RCPT without the
// SMTPUTF8 parameter is refused 553 5.6.7 at once, not accepted and bounced
// later; with it, the same RCPT is accepted.
func TestSMTPUTF8Parameter(t *testing.T) {
	t.Parallel()
	d := launch(t, baseCfg, edited("users:\n", `  - name: legacy
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.0/8]
users:
`), edited(`allowed_senders: ["*@example.com"]`, `allowed_senders: ["*@example.com", "*@bücher.example"]`))
	c := dialRaw(t, d.addrs["legacy"], nil, "")
	c.reply()
	c.cmd("EHLO client.test", "250")
	c.cmd("MAIL FROM:<jörg@bücher.example>", "553 5.6.7 ")
	c.cmd("MAIL FROM:<app@example.com>", "250")
	c.cmd("RCPT TO:<jörg@bücher.example>", "553 5.6.7 ")
	c.cmd("RSET", "250")
	c.cmd("MAIL FROM:<app@example.com> SMTPUTF8", "250")
	c.cmd("RCPT TO:<j\xffrg@b\xfccher.example>", "553 5.1.3 ") // not UTF-8 at all
	c.cmd("RCPT TO:<jörg@bücher.example>", "250")
	c.cmd("RSET", "250")
	// Policy patterns match UTF-8 addresses, case-folded.
	c.cmd("MAIL FROM:<JÖRG@BÜCHER.example> SMTPUTF8", "250")
	c.cmd("QUIT", "221")
}

// TestSMTPUTF8Python: Python's smtplib, a client other than Go's, sends a
// UTF-8 recipient with mail_options=['SMTPUTF8'] and it arrives with
// SMTPUTF8 at an upstream that offers it.
func TestSMTPUTF8Python(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("python3"); err != nil && os.Getenv("CI") == "" {
		t.Skip("python3 not installed; CI has it")
	}
	d := launch(t, baseCfg, sinkOpts(testsmtp.Options{SMTPUTF8: true}))
	py := `
import smtplib, ssl, sys
host, port, ca, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
s = smtplib.SMTP(host, port)
s.starttls(context=ctx)
s.login("app", pw)
msg = "From: <app@example.com>\r\nTo: <δοκιμή@παράδειγμα.example>\r\nSubject: Grüße\r\nMessage-ID: <py-utf8@example.com>\r\n\r\nok\r\n"
s.sendmail("app@example.com", ["δοκιμή@παράδειγμα.example"], msg.encode("utf-8"), mail_options=["SMTPUTF8"])
s.quit()
print("ok")
`
	h, port := splitAddr(d.addrs["submission"])
	out, err := exec.Command("python3", "-c", py, h, port, d.certFile, password).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("python smtplib: %v\n%s", err, out)
	}
	m := d.up.WaitMessages(t, 1, 20*time.Second)[0]
	if !m.UTF8 || len(m.To) != 1 || m.To[0] != "δοκιμή@παράδειγμα.example" {
		t.Errorf("arrived with UTF8 %v to %q, want SMTPUTF8 to [δοκιμή@παράδειγμα.example]", m.UTF8, m.To)
	}
	if !bytes.Contains(m.Data, []byte("\r\nSubject: Grüße\r\n")) {
		t.Errorf("the UTF-8 Subject: did not arrive unchanged:\n%s", m.Data)
	}
}
