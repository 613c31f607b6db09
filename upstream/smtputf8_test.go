package upstream

import (
	"context"
	"errors"
	"testing"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

const utf8Body = "From: pelé@example.com\r\nTo: josé@example.org\r\nSubject: olá\r\n\r\nhello\r\n"

// TestSMTPUTF8GoesOnlyWhereOffered: a message that needs SMTPUTF8 skips an
// upstream that does not offer it (before MAIL) and goes to one that does,
// with the SMTPUTF8 parameter; with no such upstream it fails with 5.6.7.
func TestSMTPUTF8GoesOnlyWhereOffered(t *testing.T) {
	t.Parallel()
	plain := testsmtp.Start(t, testsmtp.Options{})
	utf8 := testsmtp.Start(t, testsmtp.Options{SMTPUTF8: true})
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{smtpUp("ascii", plain, 10), smtpUp("utf8", utf8, 20)}})
	m := msg("u1", utf8Body, "josé@example.org")
	m.SMTPUTF8 = true
	r := mustDeliver(t, d, m)
	if r.Upstream != "utf8" || len(plain.Messages()) != 0 || len(utf8.Messages()) != 1 || !utf8.Messages()[0].UTF8 {
		t.Fatalf("delivered by %s; ascii got %d, utf8 got %d", r.Upstream, len(plain.Messages()), len(utf8.Messages()))
	}
	// The ascii upstream's answer is remembered: no connection next time.
	before := plain.AcceptCount()
	d.reapAll()
	mustDeliver(t, d, m)
	if plain.AcceptCount() != before {
		t.Errorf("the upstream known not to offer SMTPUTF8 was dialled again")
	}
	// ASCII mail still goes to the first by priority.
	if r := mustDeliver(t, d, msg("a1", body)); r.Upstream != "ascii" {
		t.Errorf("ASCII message delivered by %s", r.Upstream)
	}

	only := newDispatcher(t, Options{Upstreams: []config.Upstream{smtpUp("ascii-only", plain, 10)}})
	r = only.Deliver(context.Background(), m)
	var e *Error
	if !errors.As(r.Errs[0], &e) || e.Temporary() || e.Code != 554 || e.Enhanced != [3]int{5, 6, 7} {
		t.Fatalf("no upstream offers SMTPUTF8: got %v, want a permanent 554 5.6.7", r.Errs[0])
	}
	if st := status(only, "ascii-only"); st.Breaker != "closed" {
		t.Errorf("a missing SMTPUTF8 opened the breaker: %+v", st)
	}
}
