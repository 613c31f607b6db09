package policy

import (
	"hash/maphash"
	"sync"
	"time"
)

// gcraTable is the in-memory rate limiter: one GCRA state per key. GCRA
// (the generic cell rate algorithm) is a token bucket written as a single
// number, the theoretical arrival time (TAT) of the next event: a request
// passes when TAT+interval lies no further than burst×interval ahead of now.
// One int64 per key instead of a rate.Limiter (80 bytes plus a mutex) keeps
// 100,000 idle users cheap, the arithmetic is the same one the Redis script
// runs, and a refund is simply TAT−interval, which x/time/rate cannot do for
// a reservation made in the past (its CancelAt restores nothing once the
// reservation's time has passed, and rewinds the limiter's clock if forced).
//
// A bucket whose TAT is not after now is full, so forgetting it changes
// nothing: sweeps drop exactly those. Keys beyond the cap share one
// overflow bucket per class, so a flood of new keys is limited rather than
// growing memory or handing out fresh bursts.
type gcraTable struct {
	seed     maphash.Seed
	perShard int
	shards   [gcraShards]gcraShard
}

const (
	gcraShards    = 64
	sweepInterval = time.Minute
)

type gcraShard struct {
	mu        sync.Mutex
	m         map[string]int64 // key → TAT, unix nanoseconds
	nextSweep int64
}

func newGCRATable(maxKeys int) *gcraTable {
	t := &gcraTable{seed: maphash.MakeSeed(), perShard: max(1, maxKeys/gcraShards)}
	for i := range t.shards {
		t.shards[i].m = map[string]int64{}
	}
	return t
}

func (t *gcraTable) shard(key string) *gcraShard {
	return &t.shards[maphash.String(t.seed, key)%gcraShards]
}

// sweepLocked drops every full bucket. A Go map never gives back its table,
// so after a burst of users has gone idle the survivors move to a new map
// and the old table is freed.
func (s *gcraShard) sweepLocked(now int64) {
	before := len(s.m)
	for k, tat := range s.m {
		if tat <= now {
			delete(s.m, k)
		}
	}
	if before >= 256 && len(s.m) < before/4 {
		m := make(map[string]int64, len(s.m))
		for k, v := range s.m {
			m[k] = v
		}
		s.m = m
	}
	s.nextSweep = now + int64(sweepInterval)
}

// take charges one event to class+key. It returns 0 when allowed, else how
// long until one would be.
func (t *gcraTable) take(class, key string, now time.Time, interval time.Duration, burst int) time.Duration {
	k := class + "\x00" + key
	s := t.shard(k)
	n := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n >= s.nextSweep {
		s.sweepLocked(n)
	}
	tat, ok := s.m[k]
	if !ok && len(s.m) >= t.perShard {
		s.sweepLocked(n)
		if len(s.m) >= t.perShard {
			k = class + "\x00overflow"
			tat = s.m[k]
		}
	}
	tat = max(tat, n) + int64(interval)
	if over := tat - n - int64(burst)*int64(interval); over > 0 {
		return time.Duration(over)
	}
	s.m[k] = tat
	return 0
}

// refund gives one event back to class+key.
func (t *gcraTable) refund(class, key string, now time.Time, interval time.Duration) {
	k := class + "\x00" + key
	s := t.shard(k)
	n := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, ok := s.m[k]
	if !ok {
		return // already full (or charged to the overflow bucket: leave that alone)
	}
	if tat -= int64(interval); tat <= n {
		delete(s.m, k)
	} else {
		s.m[k] = tat
	}
}

// len is the number of buckets held.
func (t *gcraTable) len() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// sweep drops every full bucket now (tests and benchmarks; take sweeps
// each shard lazily once a minute).
func (t *gcraTable) sweep(now time.Time) {
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		s.sweepLocked(now.UnixNano())
		s.mu.Unlock()
	}
}
