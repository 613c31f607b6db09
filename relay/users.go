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
// unknown name hashes against the slowest configured user's hash, so a
// wrong name costs what the slowest real user's wrong password costs and
// gets the same reply.
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
// more checks than cores only queue for CPU anyway. It is sized when the
// package loads, before serve sets two Ps per core (cmd/sluice/procs.go):
// one slot per core the runtime found, or per GOMAXPROCS an operator set.
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

// slowestHash is the hash an unknown name is checked against: a configured
// user's hash of the kind and cost that is slowest to verify, so an unknown
// name costs what the slowest real user costs and timing tells no names
// apart (a wrong password never matches: the user is unknown). With no
// users it is a dummy argon2id hash.
func slowestHash(list []config.User) string {
	best, bestCost := "", 0.0
	for _, x := range list {
		if c := passwd.Cost(x.PasswordHash); c > bestCost {
			best, bestCost = x.PasswordHash, c
		}
	}
	if best == "" {
		return dummyArgon2()
	}
	return best
}

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
	if strings.HasPrefix(hash, "$argon2id$") {
		// The check left its memory (19 MiB by default) as garbage. Collect
		// it now, so what the sessions allocate next reuses those pages:
		// otherwise the heap grows on top of them to twice the size the check
		// left it (the GC's goal), and the process's peak RSS with it.
		runtime.GC()
	}
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
