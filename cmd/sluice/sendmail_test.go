package main

// The sendmail-compatible injector, run the way cron, PHP's mail() and
// monitoring scripts run it, against a real daemon.

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

// legacyListener is a policy-scenario listener for local scripts: no TLS,
// no AUTH, loopback trusted.
const legacyListener = `  - name: legacy
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.1/32]
    policy: legacy
`

// TestSendmailAuthOnStartTLSListener: `sluice sendmail --user` works on the
// usual submission listener (tls: starttls, auth: required): it speaks
// STARTTLS before AUTH.
func TestSendmailAuthOnStartTLSListener(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg("", ""))
	msg := "From: <app@example.com>\nTo: <r@example.org>\nSubject: sendmail review\n\nhello\n"
	_, stderr, code := runCmdEnv(t, msg, []string{"SLUICE_PASSWORD=" + password},
		"sendmail", "--server", d.addrs["submission"], "--user", "app", "-f", "app@example.com", "r@example.org")
	if code != 0 {
		t.Fatalf("sendmail --user on the STARTTLS submission listener: exit %d: %s", code, stderr)
	}
	d.up.WaitMessages(t, 1, 20*time.Second)
}

// TestSendmailAttachedFlagValue: like real sendmail (and PHP's mail(),
// whose sendmail_path is usually "sendmail -t -i -fbounce@domain"), the
// sender may be attached to -f.
func TestSendmailAttachedFlagValue(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg(legacyListener, ""))
	msg := "From: <app@example.com>\nTo: <r@example.org>\nSubject: attached\n\nhello\n"
	_, stderr, code := runCmd(t, msg, "sendmail", "--server", d.addrs["legacy"], "-fapp@example.com", "-t", "-i")
	if code != 0 {
		t.Fatalf("sendmail -fapp@example.com -t -i: exit %d: %s", code, stderr)
	}
	d.up.WaitMessages(t, 1, 20*time.Second)
}

// localListener trusts loopback with the default policy and no rate, for
// tests that inject more than one message.
const localListener = `  - name: local
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.1/32]
`

// startLocal launches a daemon with the local listener and returns it and
// that listener's address.
func startLocal(t *testing.T) (*testDaemon, string) {
	t.Helper()
	d := launch(t, polCfg(localListener, ""))
	return d, d.addrs["local"]
}

// onlyMessage waits for one message upstream, then for the sentinel sent
// after it, and fails unless those two are all that arrived.
func onlyMessage(t *testing.T, d *testDaemon) testsmtp.Message {
	t.Helper()
	sentinel := "From: <app@example.com>\nTo: <sentinel@dest.test>\nMessage-ID: <sentinel@example.com>\nSubject: sentinel\n\nlast\n"
	if _, stderr, code := runCmd(t, sentinel, "sendmail", "--server", d.addrs["local"], "-f", "app@example.com", "sentinel@dest.test"); code != 0 {
		t.Fatalf("sentinel: exit %d: %s", code, stderr)
	}
	msgs := d.up.WaitMessages(t, 2, 20*time.Second)
	var rest []testsmtp.Message
	for _, m := range msgs {
		if messageIDs(m)["sentinel@example.com"] == 0 {
			rest = append(rest, m)
		}
	}
	if len(msgs) != 2 || len(rest) != 1 {
		t.Fatalf("upstream got %d messages besides the sentinel, want 1", len(msgs)-1)
	}
	return rest[0]
}

// TestSendmailHeaderRecipients: -t reads every To:, Cc: and Bcc: field (any
// case, a comment before the address), delivers to all of them, and no
// Bcc: reaches the upstream; with Resent- fields, -t sends to the resent
// recipients only (sendmail's and Postfix's rule), and every Resent-Bcc: is
// removed.
func TestSendmailHeaderRecipients(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, msg string
		rcpts     string // RCPT TO, in order
		unquoted  bool   // compare without quotes (how a quoted local part is forwarded is the relay's business)
		blind     string // what must not show in the message
	}{{
		name: "to cc bcc",
		msg: "From: <app@example.com>\n" +
			"To: u2@dest.test\n" +
			"Bcc: b2@dest.test\n" +
			"Bcc: b3@dest.test\n" +
			"To: u3@dest.test\n" +
			"To: \"Four\" <u4@dest.test>, u4b@dest.test\n" +
			"cc: u5@dest.test\n" +
			"BCC: (comment) b4@dest.test,\n  \"quoted..b5\"@dest.test\n" +
			"Bcc:\n" +
			"Subject: many fields\n\nhello\n",
		rcpts:    "[u2@dest.test u3@dest.test u4@dest.test u4b@dest.test u5@dest.test b2@dest.test b3@dest.test b4@dest.test quoted..b5@dest.test]",
		unquoted: true,
		// Whole addresses only: a generated Message-ID holds the queue ID,
		// whose last characters may read "B2@" to a case-insensitive match.
		blind: `(?im)^bcc\s*:|quoted\.\.b5|\bb[2-4]@dest\.test`,
	}, {
		name: "resent",
		msg: "Resent-From: <app@example.com>\n" +
			"Resent-To: r1@dest.test\n" +
			"Resent-Bcc: rb1@dest.test\n" +
			"Resent-bcc: rb2@dest.test\n" +
			"From: <orig@example.com>\nTo: orig@dest.test\nBcc: ob@dest.test\nSubject: forwarded\n\nhello\n",
		rcpts: "[r1@dest.test rb1@dest.test rb2@dest.test]",
		blind: `(?im)^(resent-)?bcc\s*:|\b(rb[12]|ob)@dest\.test`,
	}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			d, addr := startLocal(t)
			if _, stderr, code := runCmd(t, c.msg, "sendmail", "--server", addr, "-t", "-f", "app@example.com"); code != 0 {
				t.Fatalf("sendmail -t: exit %d: %s", code, stderr)
			}
			m := onlyMessage(t, d)
			got := fmt.Sprint(m.To)
			if c.unquoted {
				got = strings.ReplaceAll(got, `"`, "")
			}
			if got != c.rcpts {
				t.Errorf("RCPT TO %v, want %s", m.To, c.rcpts)
			}
			if regexp.MustCompile(c.blind).Match(m.Data) {
				t.Errorf("a blind copy shows in the message:\n%s", m.Data)
			}
		})
	}
}

// TestInjectorsRefuseParameterInjection: an address argument that would
// close the SMTP path and add ESMTP parameters is refused (exit 1, nothing
// sent), by sendmail and by send.
func TestInjectorsRefuseParameterInjection(t *testing.T) {
	t.Parallel()
	d, addr := startLocal(t)
	msg := "From: <app@example.com>\nSubject: injected\n\nhello\n"
	for _, args := range [][]string{
		{"sendmail", "--server", addr, "-f", "p@example.com> BODY=7BIT", "r@dest.test"},
		{"sendmail", "--server", addr, "-fp@example.com> BODY=7BIT", "r@dest.test"},
		{"sendmail", "--server", addr, "-f", "app@example.com", "ok@dest.test> ORCPT=rfc822;someone@else"},
		{"sendmail", "--server", addr, "-f", "app@example.com", "two words@dest.test"},
		{"sendmail", "--server", addr, "-f", "app@example.com", "r@dest.test\r\nRCPT TO:<x@dest.test>"},
		{"send", "--server", addr, "--tls", "none", "--from", "p@example.com> BODY=7BIT", "--to", "r@dest.test"},
		{"send", "--server", addr, "--tls", "none", "--from", "app@example.com", "--to", "ok@dest.test> NOTIFY=NEVER"},
	} {
		_, stderr, code := runCmd(t, msg, args...)
		if code != 1 || !strings.Contains(stderr, "address") {
			t.Errorf("%q: exit %d, stderr %q; want exit 1 naming the bad address", args, code, stderr)
		}
	}
	// Quoted local parts and angle brackets are addresses, not injection.
	_, stderr, code := runCmd(t, "From: <app@example.com>\nMessage-ID: <quoted@example.com>\n\nhi\n",
		"sendmail", "--server", addr, "-f", "<app@example.com>", `"a..b"@dest.test`)
	if code != 0 {
		t.Fatalf("quoted recipient: exit %d: %s", code, stderr)
	}
	// (How the relay forwards a quoted local part is the relay's business.)
	if m := onlyMessage(t, d); m.From != "app@example.com" || len(m.To) != 1 || strings.ReplaceAll(m.To[0], `"`, "") != "a..b@dest.test" {
		t.Errorf("got MAIL %q RCPT %v", m.From, m.To)
	}
}

// TestSendmailCompatFlags: a message piped with its mbox "From " line and
// the options admins pass out of habit (-r, -odq, -oem, -v, -B, -oi, -i)
// goes through, without the mbox line, from the -r sender.
func TestSendmailCompatFlags(t *testing.T) {
	t.Parallel()
	d, addr := startLocal(t)
	msg := "From app@example.com Sat Dec  5 10:00:00 2026\nFrom: <app@example.com>\nTo: <r@dest.test>\nSubject: mbox\n\nhello\n"
	for _, args := range [][]string{
		{"-r", "app@example.com", "-odq", "-oem", "-v", "-B", "8BITMIME", "-oi", "-i", "r@dest.test"},
		{"-rapp@example.com", "-odb", "-oee", "-B8BITMIME", "-em", "-U", "-bm", "r@dest.test"},
	} {
		_, stderr, code := runCmd(t, msg, append([]string{"sendmail", "--server", addr}, args...)...)
		if code != 0 {
			t.Fatalf("sendmail %q: exit %d: %s", args, code, stderr)
		}
	}
	for _, m := range d.up.WaitMessages(t, 2, 20*time.Second) {
		if m.From != "app@example.com" || bytes.HasPrefix(m.Data, []byte("From ")) || !bytes.Contains(m.Data, []byte("From: <app@example.com>")) {
			t.Errorf("MAIL FROM %q, data:\n%s\nwant the -r sender and no mbox From line", m.From, m.Data)
		}
	}
}
