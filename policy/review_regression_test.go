package policy

import (
	"context"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
)

// TestAuthWindowBoundary: DESIGN §7 "after 10 [failures] within 5 minutes,
// that IP gets 421 4.7.0". The window slides: 9 failures just before a
// fixed window's edge and 9 just after still block.
func TestAuthWindowBoundary(t *testing.T) {
	t.Parallel()
	c := newClock()
	e := newEngine(t, &config.Config{}, c)
	ctx := context.Background()
	const ip = "192.0.2.77"
	e.AuthFailed(ctx, ip) // opens the window at t0
	c.Advance(authWindow - time.Second)
	for range 8 {
		e.AuthFailed(ctx, ip) // 9 within the window
	}
	c.Advance(2 * time.Second)
	for range 9 {
		if e.Blocked(ctx, ip) {
			return
		}
		e.AuthFailed(ctx, ip)
	}
	if !e.Blocked(ctx, ip) {
		t.Error("17 failures within 2 seconds (18 within 5 minutes) and the IP is not blocked")
	}
}

// denied_recipients must not be bypassed by the fully qualified spelling of
// the same domain: "ceo@example.com." is delivered to ceo@example.com by
// every MTA that accepts it (Postfix strips the trailing dot).
func TestDeniedRecipientTrailingDot(t *testing.T) {
	t.Parallel()
	p, err := compilePolicy("default", &config.Policy{DeniedRecipients: []string{"ceo@example.com", "*@blocked.example"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"ceo@example.com.", "x@blocked.example."} {
		if d := p.CheckRecipient("u", rcpt, 0); d == nil {
			t.Errorf("RCPT TO:<%s> allowed despite denied_recipients", rcpt)
		}
	}
}

// TestNewRefusesBadPattern: the engine refuses what the loader refuses
// (config.CheckAddressPattern is their one definition).
func TestNewRefusesBadPattern(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Policies: map[string]*config.Policy{"default": {AllowedSenders: []string{"*.example.com"}}}}
	if _, err := New(cfg, Options{}); err == nil {
		t.Error("New accepts allowed_senders [\"*.example.com\"]")
	}
}
