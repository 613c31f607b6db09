package policy

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/internal/testredis"
)

func redisConfig(url string, failOpen bool) *config.Config {
	cfg := rateConfig(mustRate(4, time.Minute, 0), mustRate(2, time.Hour, 0))
	cfg.RateLimit = config.RateLimit{Redis: url, FailOpen: &failOpen}
	return cfg
}

func TestRedisSharedLimits(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClock()
	regA := &metrics.Registry{}
	newShared := func(reg *metrics.Registry) *Engine {
		// A generous Redis timeout: under a loaded -race run the default
		// one fails open and the shared limit is (rightly) not enforced.
		e, err := New(redisConfig("redis://"+srv.Addr+"/0", true), Options{Now: c.Now, Metrics: reg, RedisTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		return e
	}
	a, b := newShared(regA), newShared(&metrics.Registry{})
	pa, pb := a.Lookup("default"), b.Lookup("default")
	ctx := context.Background()

	// 4/1m shared: two on each instance, then the fifth is refused on both.
	var last *Reservation
	for i, e := range []*Engine{a, b, a, b} {
		r, d := e.ReserveMessage(ctx, e.Lookup("default"), "app")
		if d != nil {
			t.Fatalf("message %d: %v", i+1, d)
		}
		last = r
	}
	for name, e := range map[string]*Engine{"a": a, "b": b} {
		_, d := e.ReserveMessage(ctx, e.Lookup("default"), "app")
		if d == nil || d.Kind != RateLimited {
			t.Fatalf("5th message on %s: %v, want RateLimited", name, d)
		}
		if d.RetryAfter != 15*time.Second {
			t.Errorf("5th message on %s: RetryAfter %v, want 15s", name, d.RetryAfter)
		}
	}
	if _, d := b.ReserveMessage(ctx, pb, "other"); d != nil {
		t.Errorf("another user: %v", d)
	}
	// Cancelling b's reservation frees a message for a.
	last.Cancel()
	if _, d := a.ReserveMessage(ctx, pa, "app"); d != nil {
		t.Errorf("after Cancel on the other instance: %v, want allowed", d)
	}
	c.Advance(15 * time.Second)
	if _, d := b.ReserveMessage(ctx, pb, "app"); d != nil {
		t.Errorf("after 15s: %v, want allowed", d)
	}

	// Recipients: shared and not refunded.
	if d := a.ChargeRecipient(ctx, pa, "app"); d != nil {
		t.Fatal(d)
	}
	if d := b.ChargeRecipient(ctx, pb, "app"); d != nil {
		t.Fatal(d)
	}
	if d := a.ChargeRecipient(ctx, pa, "app"); d == nil || d.Kind != RateLimited {
		t.Errorf("3rd recipient of 2/1h across instances: %v, want RateLimited", d)
	}

	// Auth failures: counted on a, felt on b.
	for range 5 {
		a.AuthFailed(ctx, "192.0.2.50")
	}
	if d, blocked := b.AuthDelay(ctx, "192.0.2.50"); d != time.Second || blocked {
		t.Errorf("after 5 failures on a, b says delay %v blocked %v, want 1s false", d, blocked)
	}
	for range 5 {
		b.AuthFailed(ctx, "192.0.2.50")
	}
	if !a.Blocked(ctx, "192.0.2.50") || !b.Blocked(ctx, "192.0.2.50") {
		t.Error("10 failures across instances: IP not blocked on both")
	}
	if a.Blocked(ctx, "192.0.2.51") {
		t.Error("another IP blocked")
	}
	if n := counter(regA); n != 0 {
		t.Fatalf("redis errors counted while Redis was up: %v", n)
	}

	// Redis dies. fail_open: local limits apply and the errors are counted.
	srv.Stop()
	for i := range 4 {
		if _, d := a.ReserveMessage(ctx, pa, "carol"); d != nil {
			t.Fatalf("fail_open, message %d: %v", i+1, d)
		}
	}
	if _, d := a.ReserveMessage(ctx, pa, "carol"); d == nil || d.Kind != RateLimited {
		t.Errorf("fail_open, 5th message: %v, want RateLimited by the local limiter", d)
	}
	if n := counter(regA); n < 1 {
		t.Errorf("sluice_ratelimit_redis_errors_total = %v after Redis died, want >= 1", n)
	}
	if d, blocked := a.AuthDelay(ctx, "192.0.2.60"); d != 0 || blocked {
		t.Errorf("auth check with Redis down: %v %v", d, blocked)
	}

	// fail_open false: MAIL and RCPT get Unavailable (451 4.7.1).
	closed := redisConfig("redis://"+srv.Addr+"/0", false)
	e, err := New(closed, Options{Now: c.Now, Metrics: &metrics.Registry{}, RedisTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, d := e.ReserveMessage(ctx, e.Lookup("default"), "app"); d == nil || d.Kind != Unavailable {
		t.Errorf("fail_open false, Redis down: %v, want Unavailable", d)
	}
	if d := e.ChargeRecipient(ctx, e.Lookup("default"), "app"); d == nil || d.Kind != Unavailable {
		t.Errorf("fail_open false, Redis down, RCPT: %v, want Unavailable", d)
	}
}

func counter(reg *metrics.Registry) float64 {
	return reg.NewCounter("sluice_ratelimit_redis_errors_total", "").Value()
}

func TestRedisBadURL(t *testing.T) {
	t.Parallel()
	cfg := redisConfig("redis://127.0.0.1:1/notadb", true)
	if _, err := New(cfg, Options{}); err == nil {
		t.Error("New with a bad Redis URL: no error")
	}
}

// TestRedisBlackHole: a Redis that accepts connections and never answers
// must not stall a session; the call gives up at RedisTimeout and the local
// limiter decides (without the bound this test would hang).
func TestRedisBlackHole(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	reg := &metrics.Registry{}
	e, err := New(redisConfig(l.Addr().String(), true), Options{Now: newClock().Now, Metrics: reg, RedisTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	if _, d := e.ReserveMessage(ctx, e.Lookup("default"), "app"); d != nil {
		t.Fatalf("black-holed Redis with fail_open: %v, want allowed", d)
	}
	if counter(reg) != 1 {
		t.Errorf("redis errors = %v, want 1", counter(reg))
	}
	// Within the cool-down Redis is not asked again.
	for range 3 {
		e.ReserveMessage(ctx, e.Lookup("default"), "app")
	}
	if counter(reg) != 1 {
		t.Errorf("redis errors = %v after more calls in the cool-down, want still 1", counter(reg))
	}
}
