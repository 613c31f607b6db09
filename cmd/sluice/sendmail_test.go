package main

// The sendmail-compatible injector, run the way cron, PHP's mail() and
// monitoring scripts run it, against a real daemon.

import (
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
	up := testsmtp.Start(t, testsmtp.Options{})
	e := newEnv(t)
	p := start(t, 1, "serve", "-c", polConfig(e, up.Port(), "", ""))
	msg := "From: <app@example.com>\nTo: <r@example.org>\nSubject: sendmail review\n\nhello\n"
	_, stderr, code := runCmdEnv(t, msg, []string{"SLUICE_PASSWORD=" + password},
		"sendmail", "--server", p.addrs["submission"], "--user", "app", "-f", "app@example.com", "r@example.org")
	if code != 0 {
		t.Fatalf("sendmail --user on the STARTTLS submission listener: exit %d: %s", code, stderr)
	}
	up.WaitMessages(t, 1, 20*time.Second)
}

// TestSendmailAttachedFlagValue: like real sendmail (and PHP's mail(),
// whose sendmail_path is usually "sendmail -t -i -fbounce@domain"), the
// sender may be attached to -f.
func TestSendmailAttachedFlagValue(t *testing.T) {
	t.Parallel()
	up := testsmtp.Start(t, testsmtp.Options{})
	e := newEnv(t)
	p := start(t, 2, "serve", "-c", polConfig(e, up.Port(), legacyListener, ""))
	msg := "From: <app@example.com>\nTo: <r@example.org>\nSubject: attached\n\nhello\n"
	_, stderr, code := runCmd(t, msg, "sendmail", "--server", p.addrs["legacy"], "-fapp@example.com", "-t", "-i")
	if code != 0 {
		t.Fatalf("sendmail -fapp@example.com -t -i: exit %d: %s", code, stderr)
	}
	up.WaitMessages(t, 1, 20*time.Second)
}
