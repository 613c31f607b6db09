package policy

import (
	"context"
	"net/netip"
	"sync"
	"time"
)

// Auth-failure limits (DESIGN §7): after authSlowAfter failures within
// authWindow every further AUTH answer from that IP is delayed, growing up
// to authMaxDelay; the authBlockAfter-th failure blocks the IP for
// authBlockFor (421 4.7.0 at connect and to AUTH, correct passwords too).
// A success does not reset the count: otherwise one valid account would let
// its holder guess at every other one without limit.
const (
	authWindow     = 5 * time.Minute
	authSlowAfter  = 5
	authBlockAfter = 10
	authBlockFor   = 15 * time.Minute
	authFirstDelay = time.Second
	authMaxDelay   = 5 * time.Second
)

// authDelayFor is the delay after n failures in the window: 1s, 2s, 4s, then 5s.
func authDelayFor(n int) time.Duration {
	if n < authSlowAfter {
		return 0
	}
	d := authFirstDelay << min(n-authSlowAfter, 8)
	return min(d, authMaxDelay)
}

// authKey groups IPv6 clients by /64 (one host usually holds a whole /64,
// so counting single addresses would let it rotate past the limit).
func authKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// authEntry keeps the times of an IP's most recent failures (enough to
// block), so the window slides: failures cannot hide on either side of a
// fixed window's edge.
type authEntry struct {
	times        [authBlockAfter]int64 // unix ns, a ring; 0 = unused
	next         uint8
	blockedUntil int64
}

// inWindow counts the failures after now-authWindow.
func (e *authEntry) inWindow(now int64) int {
	n := 0
	for _, t := range e.times {
		if t != 0 && t > now-int64(authWindow) {
			n++
		}
	}
	return n
}

// authTable counts failures per IP in memory. Entries whose window and
// block have both passed are dropped on a sweep; at the cap, an entry that is
// not blocked makes room (blocked IPs are the ones worth remembering).
type authTable struct {
	mu        sync.Mutex
	m         map[string]authEntry
	cap       int
	nextSweep int64
}

func newAuthTable(maxKeys int) *authTable {
	return &authTable{m: map[string]authEntry{}, cap: maxKeys}
}

func (t *authTable) sweepLocked(now int64) {
	before := len(t.m)
	for k, e := range t.m {
		if e.inWindow(now) == 0 && e.blockedUntil <= now {
			delete(t.m, k)
		}
	}
	if before >= 256 && len(t.m) < before/4 { // free the table a flood left behind
		m := make(map[string]authEntry, len(t.m))
		for k, e := range t.m {
			m[k] = e
		}
		t.m = m
	}
	t.nextSweep = now + int64(sweepInterval)
}

func (t *authTable) state(key string, now time.Time) (time.Duration, bool) {
	n := now.UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[key]
	switch {
	case !ok:
		return 0, false
	case e.blockedUntil > n:
		return 0, true
	}
	return authDelayFor(e.inWindow(n)), false
}

func (t *authTable) failed(key string, now time.Time) {
	n := now.UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	if n >= t.nextSweep {
		t.sweepLocked(n)
	}
	e, ok := t.m[key]
	if !ok && len(t.m) >= t.cap {
		t.sweepLocked(n)
		for k, old := range t.m {
			if len(t.m) < t.cap {
				break
			}
			if old.blockedUntil <= n {
				delete(t.m, k)
			}
		}
		if len(t.m) >= t.cap {
			return // every entry is a blocked IP: keep those
		}
	}
	if e.blockedUntil > n {
		return
	}
	e.times[e.next] = n
	e.next = (e.next + 1) % authBlockAfter
	if e.inWindow(n) >= authBlockAfter {
		e = authEntry{blockedUntil: n + int64(authBlockFor)}
	}
	t.m[key] = e
}

func (t *authTable) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// AuthDelay says how long to wait before answering an AUTH from ip, and
// whether ip is blocked (then answer 421 4.7.0 whatever the password).
// With Redis configured the counters are shared by every instance; if Redis
// fails, this instance's own counters decide (whatever fail_open says:
// refusing every login because Redis is down would be an outage of our own
// making, and local counting still slows a guesser).
func (e *Engine) AuthDelay(ctx context.Context, ip string) (delay time.Duration, blocked bool) {
	key := authKey(ip)
	now := e.now()
	if e.redis != nil && e.redis.usable(now) {
		n, blocked, err := e.redis.authState(ctx, key, now)
		if err == nil {
			if blocked {
				return 0, true
			}
			return authDelayFor(n), false
		}
		e.redis.failed(now, err)
	}
	return e.auth.state(key, now)
}

// Blocked reports whether ip is in its cool-down (the connect-time check).
func (e *Engine) Blocked(ctx context.Context, ip string) bool {
	_, b := e.AuthDelay(ctx, ip)
	return b
}

// AuthFailed records one failed AUTH from ip.
func (e *Engine) AuthFailed(ctx context.Context, ip string) {
	key := authKey(ip)
	now := e.now()
	if e.redis != nil && e.redis.usable(now) {
		err := e.redis.authFailed(ctx, key, now)
		if err == nil {
			return
		}
		e.redis.failed(now, err)
	}
	e.auth.failed(key, now)
}
