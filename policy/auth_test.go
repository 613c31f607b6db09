package policy

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/internal/testredis"
)

// bareEngine is an engine with no policies on a test clock: enough for
// the AUTH counters.
func bareEngine(t *testing.T) (*Engine, *clock) {
	c := newClock()
	return newEngine(t, &config.Config{}, c), c
}

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
	e, _ := bareEngine(t)
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

func TestAuthFailures(t *testing.T) {
	t.Parallel()
	e, c := bareEngine(t)
	ctx := context.Background()
	const ip = "192.0.2.7"
	var delays []time.Duration
	for i := 1; i <= 10; i++ {
		if _, blocked := e.AuthDelay(ctx, ip); blocked {
			t.Fatalf("blocked before failure %d", i)
		}
		e.AuthFailed(ctx, ip)
		d, blocked := e.AuthDelay(ctx, ip)
		if i < 10 {
			if blocked {
				t.Fatalf("blocked after %d failures", i)
			}
			delays = append(delays, d)
		} else if !blocked {
			t.Fatal("not blocked after 10 failures")
		}
	}
	want := []time.Duration{0, 0, 0, 0, time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Errorf("delay after %d failures = %v, want %v", i+1, delays[i], want[i])
		}
	}
	if d, b := e.AuthDelay(ctx, "192.0.2.8"); d != 0 || b {
		t.Errorf("another IP: delay %v blocked %v", d, b)
	}
	c.Advance(authBlockFor - time.Second)
	if !e.Blocked(ctx, ip) {
		t.Error("block ended before 15 minutes")
	}
	c.Advance(time.Second)
	if d, b := e.AuthDelay(ctx, ip); d != 0 || b {
		t.Errorf("after 15 minutes: delay %v blocked %v, want 0 false", d, b)
	}
}

func TestAuthWindowAndPrefix(t *testing.T) {
	t.Parallel()
	e, c := bareEngine(t)
	ctx := context.Background()
	for range 4 {
		e.AuthFailed(ctx, "198.51.100.1")
	}
	c.Advance(authWindow) // the window passed: the count starts again
	e.AuthFailed(ctx, "198.51.100.1")
	if d, _ := e.AuthDelay(ctx, "198.51.100.1"); d != 0 {
		t.Errorf("5th failure in a new window: delay %v, want 0", d)
	}
	// One IPv6 host rotating through its /64 counts as one.
	for i := range 10 {
		e.AuthFailed(ctx, "2001:db8:1:2::"+strconv.Itoa(i+1))
	}
	if !e.Blocked(ctx, "2001:db8:1:2::ffff") {
		t.Error("IPv6 /64 not blocked after 10 failures from its addresses")
	}
	if e.Blocked(ctx, "2001:db8:1:3::1") {
		t.Error("a neighbouring /64 is blocked")
	}
	for range 10 {
		e.AuthFailed(ctx, "::ffff:198.51.100.9")
	}
	if !e.Blocked(ctx, "198.51.100.9") {
		t.Error("IPv4-mapped address keyed apart from its IPv4 form")
	}
}

func TestAuthTableCap(t *testing.T) {
	t.Parallel()
	c := newClock()
	e, err := New(&config.Config{}, Options{Now: c.Now, MaxKeys: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 10 {
		e.AuthFailed(ctx, "203.0.113.1")
	}
	for i := range 1000 {
		e.AuthFailed(ctx, "10.1."+strconv.Itoa(i/256)+"."+strconv.Itoa(i%256))
	}
	if n := e.auth.len(); n > 100 {
		t.Errorf("%d auth entries, want at most 100", n)
	}
	if !e.Blocked(ctx, "203.0.113.1") {
		t.Error("a flood of new IPs evicted a blocked one")
	}
}

// TestAuthWindowBoundary: DESIGN §7 "after 10 [failures] within 5 minutes,
// that IP gets 421 4.7.0". The window slides: 9 failures just before a
// fixed window's edge and 9 just after still block.
func TestAuthWindowBoundary(t *testing.T) {
	t.Parallel()
	e, c := bareEngine(t)
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
