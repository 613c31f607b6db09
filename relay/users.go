package relay

import (
	"crypto/rand"
	"crypto/sha256"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/passwd"
)

// users is the AUTH user store of one configuration. A check against an
// unknown name hashes against a dummy hash of the same kind, so a wrong
// name and a wrong password cost the same time and get the same reply.
type users struct {
	byName map[string]config.User
	dummy  string // hash compared against for unknown users

	// Successful checks are cached (keyed by a hash of name, password and
	// stored hash, so a changed password misses) because every hash check
	// costs 20–90 ms of CPU and cron jobs log in for every message.
	mu       sync.Mutex
	cache    map[[32]byte]time.Time
	inflight map[[32]byte]*check // identical logins wait for one hash check
	ttl      time.Duration
	now      func() time.Time
}

// check is one hash verification that identical logins share.
type check struct {
	done chan struct{}
	ok   bool
}

// hashSlots bounds concurrent hash checks: argon2id holds 19 MiB while it
// runs, so twenty clients logging in at once must not cost 380 MiB, and
// more checks than cores only queue for CPU anyway.
var hashSlots = make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))

const maxCachedLogins = 10000

func newUsers(list []config.User, now func() time.Time) *users {
	u := &users{byName: make(map[string]config.User, len(list)), cache: map[[32]byte]time.Time{}, inflight: map[[32]byte]*check{}, ttl: 15 * time.Minute, now: now}
	for _, x := range list {
		u.byName[x.Name] = x
	}
	u.dummy = slowestHash(list)
	return u
}

// slowestHash is the hash an unknown name is checked against: one of a
// configured user's, of the kind and cost that takes longest to verify, so
// an unknown name costs what the slowest real user costs and timing tells
// no names apart (a wrong password never matches: the user is unknown).
// With no users it is a dummy argon2id hash.
func slowestHash(list []config.User) string {
	byKind := map[string]string{} // kind and cost → one hash of it
	for _, x := range list {
		if k := hashKind(x.PasswordHash); k != "" {
			if _, ok := byKind[k]; !ok {
				byKind[k] = x.PasswordHash
			}
		}
	}
	best, bestCost := dummyArgon2(), time.Duration(-1)
	for k, h := range byKind {
		if c := verifyCost(k, h, len(byKind) > 1); c > bestCost {
			best, bestCost = h, c
		}
	}
	return best
}

// hashKind is the part of a hash that decides its cost: "$2a$10$" for
// bcrypt, "$argon2id$v=19$m=19456,t=1,p=1$" for argon2id.
func hashKind(h string) string {
	n := 3 // bcrypt: $2a$10$
	if strings.HasPrefix(h, "$argon2id$") {
		n = 4
	}
	i := 0
	for j := 0; j < n; j++ {
		k := strings.IndexByte(h[i+1:], '$')
		if k < 0 {
			return ""
		}
		i += k + 1
	}
	return h[:i+1]
}

// verifyCost measures one verification of h (once per kind per process);
// with a single kind configured there is nothing to compare.
func verifyCost(kind, h string, measure bool) time.Duration {
	if !measure {
		return 0
	}
	costMu.Lock()
	defer costMu.Unlock()
	if c, ok := costs[kind]; ok {
		return c
	}
	start := time.Now()
	passwd.Verify(h, "sluice cost probe")
	c := time.Since(start)
	costs[kind] = c
	return c
}

var (
	costMu sync.Mutex
	costs  = map[string]time.Duration{}
)

// A dummy hash of a random password nobody knows, made once per process,
// for a configuration without users.
var dummyArgon2 = sync.OnceValue(func() string { h, _ := passwd.Hash(rand.Text()); return h })

// check returns the user when name and password match.
func (u *users) check(name, password string) (config.User, bool) {
	usr, known := u.byName[name]
	hash := u.dummy
	if known {
		hash = usr.PasswordHash
	}
	key := sha256.Sum256([]byte(name + "\x00" + password + "\x00" + hash))
	now := u.now()
	u.mu.Lock()
	exp, hit := u.cache[key]
	if known && hit && now.Before(exp) {
		u.mu.Unlock()
		return usr, true
	}
	if c := u.inflight[key]; c != nil {
		u.mu.Unlock()
		<-c.done
		return usr, known && c.ok
	}
	c := &check{done: make(chan struct{})}
	u.inflight[key] = c
	u.mu.Unlock()

	hashSlots <- struct{}{}
	err := passwd.Verify(hash, password)
	<-hashSlots
	c.ok = known && err == nil
	u.mu.Lock()
	delete(u.inflight, key)
	u.mu.Unlock()
	close(c.done)
	if !c.ok {
		return config.User{}, false
	}
	u.mu.Lock()
	if len(u.cache) >= maxCachedLogins {
		for k, e := range u.cache {
			if now.After(e) || len(u.cache) >= maxCachedLogins {
				delete(u.cache, k)
			}
		}
	}
	u.cache[key] = now.Add(u.ttl)
	u.mu.Unlock()
	return usr, true
}
