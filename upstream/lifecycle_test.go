package upstream

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

// TestReloadKeepsBreakersAndPorts: a reload (a new dispatcher started with
// the old one) keeps the breakers and remembered ports, as rate limits are
// kept (issue 9 item 6); the old dispatcher stops publishing.
func TestReloadKeepsBreakersAndPorts(t *testing.T) {
	t.Parallel()
	throttled := testsmtp.Start(t, testsmtp.Options{})
	throttled.Fail(testsmtp.StageMail, 454, [3]int{4, 7, 0}, "Throttling failure")
	closedPort := testsmtp.ClosedPort(t)
	backup := testsmtp.Start(t, testsmtp.Options{})
	clk := newClock()
	p := smtpUp("reload-primary", throttled, 10)
	b := config.Upstream{Name: "reload-backup", Host: "127.0.0.1", TLS: config.TLSNone, Priority: 20,
		Ports: []int{closedPort, backup.Port()}}
	ups := []config.Upstream{p, b}
	old := newDispatcher(t, Options{Upstreams: ups, Now: clk.Now})
	mustDeliver(t, old, msg("m1", body))
	was := status(old, "reload-primary")
	if was.Breaker != "open" || status(old, "reload-backup").Port != backup.Port() || mUp.Value("reload-primary") != 0 {
		t.Fatalf("before the reload: %+v %+v up=%v", was, status(old, "reload-backup"), mUp.Value("reload-primary"))
	}

	// A reload that is refused after New (a broken policy, say) built a
	// dispatcher and closes it: the gauge and the status file stay.
	refused, err := New(Options{Upstreams: withDefaults(ups), Now: clk.Now, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	refused.Close()
	if mUp.Value("reload-primary") != 0 {
		t.Fatalf("a refused reload set sluice_upstream_up to %v", mUp.Value("reload-primary"))
	}

	d, err := New(Options{Upstreams: withDefaults(ups), Now: clk.Now, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	d.Start(old)
	t.Cleanup(d.Close)
	if st := status(d, "reload-primary"); st.Breaker != "open" || !st.OpenUntil.Equal(was.OpenUntil) {
		t.Fatalf("after the reload the breaker is %s until %v, want open until %v", st.Breaker, st.OpenUntil, was.OpenUntil)
	}
	if st := status(d, "reload-backup"); st.Port != backup.Port() {
		t.Fatalf("after the reload the remembered port is %d, want %d", st.Port, backup.Port())
	}
	before := throttled.AcceptCount()
	if r := mustDeliver(t, d, msg("m2", body)); r.Upstream != "reload-backup" || throttled.AcceptCount() != before {
		t.Fatalf("delivered by %s; the open upstream was dialled %d times", r.Upstream, throttled.AcceptCount()-before)
	}
	// The old dispatcher's late outcomes no longer move the gauge.
	throttled.ClearFailures()
	clk.Advance(time.Minute)
	mustDeliver(t, old, msg("m3", body))
	if status(old, "reload-primary").Breaker != "closed" || mUp.Value("reload-primary") != 0 {
		t.Fatalf("the replaced dispatcher published: up=%v", mUp.Value("reload-primary"))
	}
}

// TestInFlightCurrentInStatusFile: `sluice upstreams` reads upstreams.json;
// its in-flight count follows deliveries, back to 0 when they end (issue 8
// item 14: it showed 10 long after the queue emptied).
func TestInFlightCurrentInStatusFile(t *testing.T) {
	t.Parallel()
	s := testsmtp.Start(t, testsmtp.Options{})
	s.Stall(testsmtp.StageMail)
	path := filepath.Join(t.TempDir(), "upstreams.json")
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{smtpUp("inflight", s, 10)}, StatusFile: path})
	fileInFlight := func(want int) func() bool {
		return func() bool {
			st, err := ReadStatus(path)
			return err == nil && len(st) == 1 && st[0].InFlight == want
		}
	}
	done := make(chan Result, 1)
	go func() { done <- d.Deliver(context.Background(), msg("m1", body)) }()
	waitFor(t, "in_flight 1 in upstreams.json", fileInFlight(1))
	s.Release()
	if r := <-done; r.Errs[0] != nil {
		t.Fatal(r.Errs[0])
	}
	waitFor(t, "in_flight 0 in upstreams.json", fileInFlight(0))
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
	// Wait until the server holds the MAIL command, so the client is past
	// the dial (which does honour ctx) and waits for the MAIL reply.
	waitFor(t, "the MAIL command stalled", func() bool { return s.Stalled() > 0 })
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

func withDefaults(ups []config.Upstream) []config.Upstream {
	out := make([]config.Upstream, len(ups))
	for i, u := range ups {
		out[i] = u.WithDefaults()
	}
	return out
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
