package main

// The daemon's lifecycle: what a SIGHUP keeps, replaces and closes, and
// what a shutdown closes.

import (
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

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
		c, err := login(addr, e.tlsConfig(), nil, "ratey", password)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = transact(c, "app@example.com", []string{"r@example.org"}, message("app@example.com", "r@example.org", id, "x"))
		return err
	}
	for i, id := range []string{"r1", "r2"} {
		if err := sendAs(id); err != nil {
			t.Fatalf("message %d of the 2/1h burst: %v", i+1, err)
		}
	}
	if err := sendAs("r3"); replyCode(err) != "450 4.7.1" {
		t.Fatalf("third message in the hour: %s, want 450 4.7.1", replyCode(err))
	}
	p.signal(syscall.SIGHUP)
	if !p.waitLog("msg=reloaded", 10*time.Second) {
		t.Fatal("no reload")
	}
	err := sendAs("r4")
	if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 450 {
		t.Fatalf("after a SIGHUP with the same config the user is no longer rate limited: %s, want 450 4.7.1", replyCode(err))
	}
}
