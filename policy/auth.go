package policy

import (
	"context"
	"crypto/rand"
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
	times        [authBlockAfter]int64 // unix ns; 0 = unused
	blockedUntil int64
	// inflight counts the slots of times held by attempts whose password
	// is still being checked; the others are failures.
	inflight int
}

// oldest is the index of the slot to reuse: unused, or the earliest time.
func (e *authEntry) oldest() int {
	i := 0
	for j, t := range e.times {
		if t < e.times[i] {
			i = j
		}
	}
	return i
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
	// freed is closed (and replaced) whenever an attempt settles: attempts
	// waiting for a slot held by a check in flight try again.
	freed chan struct{}
}

func newAuthTable(maxKeys int) *authTable {
	return &authTable{m: map[string]authEntry{}, cap: maxKeys, freed: make(chan struct{})}
}

func (t *authTable) sweepLocked(now int64) {
	before := len(t.m)
	for k, e := range t.m {
		if e.inWindow(now) == 0 && e.blockedUntil <= now && e.inflight == 0 {
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
	return authDelayFor(e.inWindow(n) - e.inflight), false
}

// reserve takes a failure slot for one attempt before its password is
// checked, so parallel connections cannot all pass the check before any
// failure is counted: at most authBlockAfter passwords (failed or still
// being checked) per window. Once authBlockAfter have failed the IP is
// blocked. When the slots are full of checks still in flight, the attempt
// is neither checked nor blocked: busy is set and it waits for one to
// settle (an application opening twenty sessions at once is not guessing).
// It returns the delay for this attempt (by failures), whether the IP is
// blocked, and the slot (a unique time) that settle gives back on success.
func (t *authTable) reserve(key string, now time.Time) (d time.Duration, blocked bool, slot int64, busy <-chan struct{}) {
	n := now.UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.makeRoomLocked(key, n) {
		return 0, false, 0, nil // table full of blocked IPs: this one is not counted
	}
	e := t.m[key]
	if e.blockedUntil > n {
		return 0, true, 0, nil
	}
	before := e.inWindow(n)
	failures := before - e.inflight
	if failures >= authBlockAfter {
		t.m[key] = authEntry{blockedUntil: n + int64(authBlockFor)}
		return 0, true, 0, nil
	}
	if before >= authBlockAfter {
		return 0, false, 0, t.freed
	}
	// The oldest slot goes (outside the window, as before < the ring size);
	// the slot's time is unique so settle finds exactly it.
	for _, x := range e.times {
		if x >= n {
			n = x + 1
		}
	}
	e.times[e.oldest()] = n
	e.inflight++
	t.m[key] = e
	return authDelayFor(failures), false, n, nil
}

// settle ends a reserved attempt: a success gives its slot back, a failure
// keeps it and blocks the IP when the window is full.
func (t *authTable) settle(key string, slot int64, ok bool, now time.Time) {
	n := now.UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	close(t.freed)
	t.freed = make(chan struct{})
	e, found := t.m[key]
	if !found || e.blockedUntil > n {
		return
	}
	e.inflight--
	if ok {
		for i, x := range e.times {
			if x == slot {
				e.times[i] = 0
			}
		}
	} else if e.inWindow(n)-e.inflight >= authBlockAfter {
		e = authEntry{blockedUntil: n + int64(authBlockFor)}
	}
	t.m[key] = e
}

// makeRoomLocked sweeps, and at the cap drops an entry that is not blocked
// to make room for key; false when every entry is a blocked IP.
func (t *authTable) makeRoomLocked(key string, n int64) bool {
	if n >= t.nextSweep {
		t.sweepLocked(n)
	}
	if _, ok := t.m[key]; ok || len(t.m) < t.cap {
		return true
	}
	t.sweepLocked(n)
	for k, old := range t.m {
		if len(t.m) < t.cap {
			break
		}
		if old.blockedUntil <= n {
			delete(t.m, k)
		}
	}
	return len(t.m) < t.cap
}

func (t *authTable) failed(key string, now time.Time) {
	n := now.UnixNano()
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.makeRoomLocked(key, n) {
		return // every entry is a blocked IP: keep those
	}
	e := t.m[key]
	if e.blockedUntil > n {
		return
	}
	e.times[e.oldest()] = n
	if e.inWindow(n)-e.inflight >= authBlockAfter {
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

// AuthAttempt is one AUTH whose password is about to be checked. It holds a
// failure slot from BeginAuth on, so however many connections guess at
// once, at most authBlockAfter passwords per IP are checked per cool-down;
// Done gives the slot back when the password was right.
type AuthAttempt struct {
	e      *Engine
	key    string
	slot   int64  // local table slot, when counted locally
	member string // Redis sorted-set member, when counted in Redis
}

// BeginAuth reserves a failure slot for an AUTH from ip before its
// password is checked. It returns how long to wait before answering and
// whether ip is blocked (then answer 421 4.7.0 and check nothing; the
// attempt is nil). While every slot is held by a password check still in
// flight (parallel logins of one application), it waits for one to settle.
func (e *Engine) BeginAuth(ctx context.Context, ip string) (*AuthAttempt, time.Duration, bool) {
	a := &AuthAttempt{e: e, key: authKey(ip)}
	for {
		d, blocked, busy := e.reserveAuth(ctx, a)
		switch {
		case blocked:
			return nil, 0, true
		case busy == nil:
			return a, d, false
		}
		// Every slot is held by a check in flight: wait for one to settle.
		// An attempt that cannot get one before ctx ends is refused as if
		// blocked (421, try again later); it checked no password.
		select {
		case <-busy:
		case <-ctx.Done():
			return nil, 0, true
		}
	}
}

// authBusyPoll is how often an attempt waiting for a Redis slot asks again
// (the instance that holds the slot cannot wake it).
const authBusyPoll = 20 * time.Millisecond

// reserveAuth makes one try at a slot for a; busy is non-nil when every
// slot is held by a check in flight, and is ready when trying again is worth it.
func (e *Engine) reserveAuth(ctx context.Context, a *AuthAttempt) (d time.Duration, blocked bool, busy <-chan struct{}) {
	now := e.now()
	if e.redis != nil && e.redis.usable(now) {
		a.member = rand.Text()
		n, err := e.redis.authReserve(ctx, a.key, a.member, now)
		if err == nil {
			switch {
			case n == authReserveBusy:
				c := make(chan struct{})
				time.AfterFunc(authBusyPoll, func() { close(c) })
				return 0, false, c
			case n < 0:
				return 0, true, nil
			}
			return authDelayFor(n), false, nil
		}
		e.redis.failed(now, err)
		a.member = ""
	}
	d, blocked, a.slot, busy = e.auth.reserve(a.key, now)
	return d, blocked, busy
}

// Done settles the attempt: ok gives the slot back; a failure keeps it
// counted and blocks the IP once the window holds authBlockAfter failures.
func (a *AuthAttempt) Done(ctx context.Context, ok bool) {
	now := a.e.now()
	if a.member != "" {
		err := a.e.redis.authSettle(ctx, a.key, a.member, ok, now)
		if err == nil {
			return
		}
		a.e.redis.failed(now, err)
		if !ok { // count it here at least
			a.e.auth.failed(a.key, now)
		}
		return
	}
	if a.slot != 0 {
		a.e.auth.settle(a.key, a.slot, ok, now)
	}
}
