package policy

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/metrics"
)

// TestBeginAuthParallelLogins: an application opening 40 sessions at once
// from one IP, every password right, is neither refused nor slowed: checks
// beyond the ten slots wait for a slot instead of blocking the IP (the
// DESIGN §5 load logs 20 sessions in at once). Locally and through Redis.
func TestBeginAuthParallelLogins(t *testing.T) {
	t.Parallel()
	onLocalAndRedis(t, func(t *testing.T, redis bool) {
		e := newAuthEngine(t, redis, Options{Metrics: &metrics.Registry{}, RedisTimeout: 10 * time.Second})
		ctx := context.Background()
		const ip, n = "192.0.2.40", 40
		var refused, slowed, inCheck, maxInCheck atomic.Int32
		var start, wg sync.WaitGroup
		start.Add(1)
		for range n {
			wg.Go(func() {
				start.Wait()
				a, d, blocked := e.BeginAuth(ctx, ip)
				if blocked {
					refused.Add(1)
					return
				}
				if d > 0 {
					slowed.Add(1)
				}
				c := inCheck.Add(1)
				for m := maxInCheck.Load(); c > m && !maxInCheck.CompareAndSwap(m, c); m = maxInCheck.Load() {
				}
				time.Sleep(5 * time.Millisecond) // the password check
				inCheck.Add(-1)
				a.Done(ctx, true)
			})
		}
		start.Done()
		wg.Wait()
		if refused.Load() != 0 || slowed.Load() != 0 {
			t.Fatalf("%d parallel right passwords: %d refused, %d slowed", n, refused.Load(), slowed.Load())
		}
		if m := maxInCheck.Load(); m > authBlockAfter {
			t.Errorf("%d passwords checked at once, want at most %d", m, authBlockAfter)
		}
		if e.Blocked(ctx, ip) {
			t.Error("blocked after parallel successful logins")
		}
		// Failures still block after ten, with no check in flight.
		if got := guessInParallel(e, ip, 30); got != authBlockAfter {
			t.Errorf("30 parallel guesses after the logins: %d checked, want %d", got, authBlockAfter)
		}
	})
}
