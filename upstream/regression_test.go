package upstream

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

// TestRcptMailboxOverQuotaFailsOnlyThatRecipient: Gmail answers a
// recipient whose mailbox is full with "552 5.2.2 The email account that
// you tried to reach is over quota." at RCPT. That is the recipient's
// problem (RFC 3463 X.2.2 mailbox full), a 5xx on RCPT: it must fail that
// recipient only, not be retried for max_age as throttling, and must not
// take the whole upstream out of service.
func TestRcptMailboxOverQuotaFailsOnlyThatRecipient(t *testing.T) {
	t.Parallel()
	s := testsmtp.Start(t, testsmtp.Options{})
	s.FailRule(testsmtp.Rule{Stage: testsmtp.StageRcpt, Code: 552, Enhanced: [3]int{5, 2, 2},
		Message: "The email account that you tried to reach is over quota.", Rcpt: "full@example.org"})
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{smtpUp("gmail", s, 10)}})

	r := d.Deliver(context.Background(), msg("m1", body, "a@example.org", "full@example.org"))
	var e *Error
	if r.Errs[0] != nil {
		t.Fatalf("a@example.org: %v", r.Errs[0])
	}
	if !errors.As(r.Errs[1], &e) || e.Temporary() {
		t.Errorf("mailbox full at RCPT (552 5.2.2): got %v (temporary=%v), want a permanent failure of that recipient", r.Errs[1], e != nil && e.Temporary())
	}

	// The same reply as the message's only recipient must not open the
	// upstream's breaker: one full mailbox says nothing about the provider.
	d.Deliver(context.Background(), msg("m2", body, "full@example.org"))
	if st := status(d, "gmail"); st.Breaker != "closed" {
		t.Errorf("after one recipient's mailbox-full reply the upstream's breaker is %s (%s)", st.Breaker, st.LastError)
	}
}

// TestCancelAbortsStalledTransaction: the queue cancels Deliver's
// context when DrainTimeout runs out at shutdown (queue.Run's contract);
// a transaction stalled on the upstream must then end, not run on until
// the command timeout.
func TestCancelAbortsStalledTransaction(t *testing.T) {
	t.Parallel()
	s := testsmtp.Start(t, testsmtp.Options{NoLeakCheck: true})
	s.Stall(testsmtp.StageMail)
	u := smtpUp("slow", s, 10)
	u.Timeout = time.Minute
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{u}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result, 1)
	go func() { done <- d.Deliver(ctx, msg("m1", body)) }()
	// Wait until the session is greeted, so the client is past the dial
	// (which does honour ctx) and waits for the MAIL reply.
	for len(s.Hellos()) == 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case r := <-done:
		if r.Errs[0] == nil {
			t.Fatalf("delivered after cancel")
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("Deliver still blocked 3s after its context was cancelled (upstream timeout 1m): shutdown waits for the command timeout, not DrainTimeout")
	}
	s.Release()
}
