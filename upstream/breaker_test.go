package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

// TestBreakerTransitions drives the breaker through its table: each step is
// an allow or a recorded verdict at a time (seconds after t0), and the state
// and open period after it.
func TestBreakerTransitions(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		at      int     // seconds after t0
		allow   bool    // an allow call (else a record)
		probe   bool    // record: the attempt was the probe; allow: want a probe
		ok      bool    // allow: want ok
		v       verdict // record
		state   breakerState
		backoff time.Duration
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"throttling opens at once", []step{
			{at: 0, allow: true, ok: true, state: closed},
			{at: 0, v: throttled, state: open, backoff: 10 * time.Second},
			{at: 5, allow: true, ok: false, state: open, backoff: 10 * time.Second},
		}},
		{"three connection failures open", []step{
			{at: 0, v: connFailure, state: closed},
			{at: 0, v: connFailure, state: closed},
			{at: 0, v: answered, state: closed}, // an answer resets the count
			{at: 0, v: connFailure, state: closed},
			{at: 0, v: connFailure, state: closed},
			{at: 0, v: connFailure, state: open, backoff: 10 * time.Second},
		}},
		{"one probe at a time; its failure doubles once", []step{
			{at: 0, v: throttled, state: open, backoff: 10 * time.Second},
			{at: 10, allow: true, probe: true, ok: true, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, allow: true, ok: false, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, allow: true, ok: false, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, probe: true, v: connFailure, state: open, backoff: 20 * time.Second},
			{at: 30, allow: true, probe: true, ok: true, state: halfOpen, backoff: 20 * time.Second},
			{at: 30, probe: true, v: throttled, state: open, backoff: 40 * time.Second},
		}},
		{"failures already in flight do not double", []step{
			{at: 0, v: throttled, state: open, backoff: 10 * time.Second},
			{at: 0, v: throttled, state: open, backoff: 10 * time.Second},
			{at: 0, v: connFailure, state: open, backoff: 10 * time.Second},
			{at: 0, v: answered, state: open, backoff: 10 * time.Second},
			{at: 10, allow: true, probe: true, ok: true, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, v: throttled, state: halfOpen, backoff: 10 * time.Second}, // not the probe
		}},
		{"the probe's answer closes and resets the backoff", []step{
			{at: 0, v: throttled, state: open, backoff: 10 * time.Second},
			{at: 10, allow: true, probe: true, ok: true, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, probe: true, v: answered, state: closed},
			{at: 10, v: throttled, state: open, backoff: 10 * time.Second},
		}},
		{"a cancelled probe frees the slot for another", []step{
			{at: 0, v: throttled, state: open, backoff: 10 * time.Second},
			{at: 10, allow: true, probe: true, ok: true, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, probe: true, v: noVerdict, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, allow: true, probe: true, ok: true, state: halfOpen, backoff: 10 * time.Second},
		}},
		{"doubling stops at 10m", []step{
			{at: 0, v: throttled, state: open, backoff: 10 * time.Second},
			{at: 10, allow: true, probe: true, ok: true, state: halfOpen, backoff: 10 * time.Second},
			{at: 10, probe: true, v: throttled, state: open, backoff: 20 * time.Second},
			{at: 1000, allow: true, probe: true, ok: true, state: halfOpen, backoff: 20 * time.Second},
			{at: 1000, probe: true, v: throttled, state: open, backoff: 40 * time.Second},
			{at: 2000, allow: true, probe: true, ok: true, state: halfOpen, backoff: 40 * time.Second},
			{at: 2000, probe: true, v: throttled, state: open, backoff: 80 * time.Second},
			{at: 3000, allow: true, probe: true, ok: true, state: halfOpen, backoff: 80 * time.Second},
			{at: 3000, probe: true, v: throttled, state: open, backoff: 160 * time.Second},
			{at: 4000, allow: true, probe: true, ok: true, state: halfOpen, backoff: 160 * time.Second},
			{at: 4000, probe: true, v: throttled, state: open, backoff: 320 * time.Second},
			{at: 5000, allow: true, probe: true, ok: true, state: halfOpen, backoff: 320 * time.Second},
			{at: 5000, probe: true, v: throttled, state: open, backoff: 600 * time.Second},
		}},
	} {
		b := breaker{first: 10 * time.Second}
		for i, s := range tc.steps {
			now := t0.Add(time.Duration(s.at) * time.Second)
			if s.allow {
				probe, ok := b.allow(now)
				if probe != s.probe || ok != s.ok {
					t.Errorf("%s: step %d: allow = probe %v ok %v, want %v %v", tc.name, i, probe, ok, s.probe, s.ok)
				}
			} else {
				b.record(now, s.probe, s.v)
			}
			if b.state != s.state || b.backoff != s.backoff {
				t.Errorf("%s: step %d: state %v backoff %v, want %v %v", tc.name, i, b.state, b.backoff, s.state, s.backoff)
			}
			if s.state == open && !s.allow && b.openUntil != now.Add(b.backoff) && i > 0 && tc.steps[i-1].state != open {
				t.Errorf("%s: step %d: open until %v, want %v", tc.name, i, b.openUntil, now.Add(b.backoff))
			}
		}
	}
}

// TestManyDueAtOnceOneProbeOneDoubling: a sole upstream that is down, with
// fifty messages due at once (issue 8 item 15: a half-open breaker let
// several probes through and each failure doubled the backoff, 1s → 8m32s
// within 16 ms). The failures in flight when it opens leave it at the first
// period; after it, one probe goes and its failure doubles once.
func TestManyDueAtOnceOneProbeOneDoubling(t *testing.T) {
	t.Parallel()
	clk := newClock()
	u := config.Upstream{Name: "down", Host: "127.0.0.1", TLS: config.TLSNone, Ports: []int{testsmtp.ClosedPort(t)},
		ConnectTimeout: time.Second, BreakerBackoff: time.Second}
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, Now: clk.Now})
	burst := func() (unavailable int) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := d.Deliver(context.Background(), msg(fmt.Sprint("m", i), body))
				var e *Error
				if errors.As(r.Errs[0], &e) && strings.Contains(e.Error(), "all upstreams unavailable") {
					mu.Lock()
					unavailable++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return unavailable
	}
	t0 := clk.Now()
	burst()
	if st := status(d, "down"); st.Breaker != "open" || !st.OpenUntil.Equal(t0.Add(time.Second)) {
		t.Fatalf("after 50 failures at once: %s until %v, want open until t0+1s", st.Breaker, st.OpenUntil.Sub(t0))
	}
	clk.Advance(time.Second)
	t1 := clk.Now()
	if n := burst(); n != 49 {
		t.Errorf("half-open with 50 due: %d found no upstream, want 49 (one probe)", n)
	}
	if st := status(d, "down"); st.Breaker != "open" || !st.OpenUntil.Equal(t1.Add(2*time.Second)) {
		t.Fatalf("after the failed probe: %s until t1+%v, want open until t1+2s", st.Breaker, st.OpenUntil.Sub(t1))
	}
}

// TestQueuedDeliveriesDoNotDialAfterBreakerOpens: ten deliveries wait for
// an upstream's one connection slot while it fails (it accepts and hangs
// up); the three failures that open the breaker are the only connections
// made, and the seven deliveries still waiting give up without dialling,
// as "all upstreams unavailable" (a deferral), not as failures of their own.
func TestQueuedDeliveriesDoNotDialAfterBreakerOpens(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	u := config.Upstream{Name: "flaky", Host: "127.0.0.1", TLS: config.TLSNone, Ports: []int{ln.Addr().(*net.TCPAddr).Port},
		MaxConnections: 1, ConnectTimeout: time.Second, GreetingTimeout: time.Second}
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, Now: newClock().Now})
	var wg sync.WaitGroup
	results := make([]Result, 10)
	for i := range results {
		wg.Go(func() { results[i] = d.Deliver(context.Background(), msg(fmt.Sprint("m", i), body)) })
	}
	wg.Wait()
	if n := accepted.Load(); n != failuresToOpen {
		t.Errorf("%d connections made, want %d (the failures that open the breaker)", n, failuresToOpen)
	}
	unavailable := 0
	for _, r := range results {
		var e *Error
		if !errors.As(r.Errs[0], &e) || !e.Temporary() {
			t.Fatalf("want a temporary failure, got %v", r.Errs[0])
		}
		if strings.Contains(e.Error(), "all upstreams unavailable (circuit breakers open)") {
			unavailable++
			if len(r.Attempts) != 0 {
				t.Errorf("a passed-over delivery reports attempts: %+v", r.Attempts)
			}
		}
	}
	if unavailable != len(results)-failuresToOpen {
		t.Errorf("%d deliveries passed over, want %d", unavailable, len(results)-failuresToOpen)
	}
	if st := status(d, "flaky"); st.Breaker != "open" {
		t.Errorf("breaker %s, want open", st.Breaker)
	}
}
