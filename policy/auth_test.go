package policy

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/internal/testredis"
)

// guessInParallel runs n AUTH attempts from ip at once, each a wrong
// password, and returns how many had their password checked (were not
// refused as blocked).
func guessInParallel(e *Engine, ip string, n int) int {
	ctx := context.Background()
	var checked atomic.Int32
	var start, wg sync.WaitGroup
	start.Add(1)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start.Wait()
			a, _, blocked := e.BeginAuth(ctx, ip)
			if blocked {
				return
			}
			checked.Add(1)
			a.Done(ctx, false)
		}()
	}
	start.Done()
	wg.Wait()
	return int(checked.Load())
}

// TestBeginAuthParallel: the brute force of issue 8 item 3 — many
// connections guessing at once from one IP — gets exactly 10 passwords
// checked, because each attempt holds a failure slot before its check.
func TestBeginAuthParallel(t *testing.T) {
	t.Parallel()
	e := newEngine(t, &config.Config{}, newClock())
	if got := guessInParallel(e, "192.0.2.30", 120); got != authBlockAfter {
		t.Errorf("120 parallel guesses: %d passwords checked, want %d", got, authBlockAfter)
	}
	if !e.Blocked(context.Background(), "192.0.2.30") {
		t.Error("not blocked after the parallel guesses")
	}
}

// TestBeginAuthParallelRedis: the same across two instances sharing Redis.
func TestBeginAuthParallelRedis(t *testing.T) {
	t.Parallel()
	srv := testredis.Start(t)
	c := newClock()
	var engines []*Engine
	for range 2 {
		// A generous timeout: a Redis call that times out under the race
		// detector falls back to counting locally, which is not under test.
		e, err := New(redisConfig("redis://"+srv.Addr+"/0", true), Options{Now: c.Now, Metrics: &metrics.Registry{}, RedisTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(e.Close)
		engines = append(engines, e)
	}
	var total atomic.Int32
	var wg sync.WaitGroup
	for _, e := range engines {
		wg.Add(1)
		go func() { defer wg.Done(); total.Add(int32(guessInParallel(e, "192.0.2.31", 30))) }()
	}
	wg.Wait()
	if got := int(total.Load()); got != authBlockAfter {
		t.Errorf("2×30 parallel guesses on two instances: %d passwords checked, want %d", got, authBlockAfter)
	}
	for i, e := range engines {
		if !e.Blocked(context.Background(), "192.0.2.31") {
			t.Errorf("instance %d: not blocked", i)
		}
	}
}

// TestBeginAuthSuccessGivesSlotBack: a right password does not count as a
// failure, and the 10th failure blocks at once (the connect-time check
// sees it).
func TestBeginAuthSuccessGivesSlotBack(t *testing.T) {
	t.Parallel()
	onLocalAndRedis(t, func(t *testing.T, redis bool) {
		c := newClock()
		e := newAuthEngine(t, redis, Options{Now: c.Now, Metrics: &metrics.Registry{}})
		ctx := context.Background()
		const ip = "192.0.2.32"
		for i := range 20 {
			a, _, blocked := e.BeginAuth(ctx, ip)
			if blocked {
				t.Fatalf("success %d: blocked", i+1)
			}
			a.Done(ctx, true)
			c.Advance(time.Millisecond)
		}
		for i := 1; i <= authBlockAfter; i++ {
			a, d, blocked := e.BeginAuth(ctx, ip)
			if blocked {
				t.Fatalf("failure %d: blocked before it", i)
			}
			if want := authDelayFor(i - 1); d != want {
				t.Errorf("attempt %d: delay %v, want %v", i, d, want)
			}
			a.Done(ctx, false)
			c.Advance(time.Millisecond)
		}
		if !e.Blocked(ctx, ip) {
			t.Errorf("not blocked after %d failures", authBlockAfter)
		}
		if _, _, blocked := e.BeginAuth(ctx, ip); !blocked {
			t.Error("an AUTH after the block was checked")
		}
	})
}

// onLocalAndRedis runs f as two parallel subtests: the auth state kept
// locally, and kept in a real redis-server (newAuthEngine builds either).
func onLocalAndRedis(t *testing.T, f func(t *testing.T, redis bool)) {
	for _, redis := range []bool{false, true} {
		name := "local"
		if redis {
			name = "redis"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, redis)
		})
	}
}

// newAuthEngine is an engine with opts, on local state or on a fresh
// redis-server, closed at cleanup.
func newAuthEngine(t *testing.T, redis bool, opts Options) *Engine {
	t.Helper()
	cfg := &config.Config{}
	if redis {
		cfg = redisConfig("redis://"+testredis.Start(t).Addr+"/0", true)
	}
	e, err := New(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}
