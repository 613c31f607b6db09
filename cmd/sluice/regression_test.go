package main

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

const regressLegacy = `  - name: legacy
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.1/32]
    policy: legacy
`

// runEnv runs sluice with extra environment variables.
func runEnv(t *testing.T, stdin string, envv []string, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(sluiceBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &o, &e, strings.NewReader(stdin)
	cmd.Env = append(os.Environ(), envv...)
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// TestSendmailAuthOnStartTLSListener: `sluice sendmail --user` works on the
// usual submission listener (tls: starttls, auth: required): it speaks
// STARTTLS before AUTH.
func TestSendmailAuthOnStartTLSListener(t *testing.T) {
	t.Parallel()
	up := testsmtp.Start(t, testsmtp.Options{})
	e := newEnv(t)
	p := start(t, 1, "serve", "-c", polConfig(e, up.Port(), "", ""))
	msg := "From: <app@example.com>\nTo: <r@example.org>\nSubject: sendmail review\n\nhello\n"
	_, stderr, code := runEnv(t, msg, []string{"SLUICE_PASSWORD=" + password},
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
	p := start(t, 2, "serve", "-c", polConfig(e, up.Port(), regressLegacy, ""))
	msg := "From: <app@example.com>\nTo: <r@example.org>\nSubject: attached\n\nhello\n"
	_, stderr, code := runCmd(t, msg, "sendmail", "--server", p.addrs["legacy"], "-fapp@example.com", "-t", "-i")
	if code != 0 {
		t.Fatalf("sendmail -fapp@example.com -t -i: exit %d: %s", code, stderr)
	}
	up.WaitMessages(t, 1, 20*time.Second)
}

// TestReloadKeepsRateLimits: SIGHUP builds a new policy.Engine; it takes
// over the old one's rate-limit buckets and auth-failure counters, so a
// reload hands nobody a fresh burst and unblocks no brute-forcing IP.
func TestReloadKeepsRateLimits(t *testing.T) {
	t.Parallel()
	up := testsmtp.Start(t, testsmtp.Options{})
	e := newEnv(t)
	p := start(t, 1, "serve", "-c", polConfig(e, up.Port(), "", ""))
	addr := p.addrs["submission"]
	sendAs := func(id string) error {
		c, err := polLogin(addr, e.tlsConfig(), nil, "ratey", password)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = sendOn(c, "app@example.com", "r@example.org", message("app@example.com", "r@example.org", id, "x"))
		return err
	}
	for i, id := range []string{"r1", "r2"} {
		if err := sendAs(id); err != nil {
			t.Fatalf("message %d of the 2/1h burst: %v", i+1, err)
		}
	}
	if err := sendAs("r3"); polCode(err) != "450 4.7.1" {
		t.Fatalf("third message in the hour: %s, want 450 4.7.1", polCode(err))
	}
	p.signal(syscall.SIGHUP)
	if !p.waitLog("msg=reloaded", 10*time.Second) {
		t.Fatal("no reload")
	}
	err := sendAs("r4")
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 450 {
		t.Fatalf("after a SIGHUP with the same config the user is no longer rate limited: %s, want 450 4.7.1", polCode(err))
	}
}
