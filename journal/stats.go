package journal

import "time"

// Kinds counted per minute for the status page's chart.
var statKinds = []string{Accepted, Delivered, Deferred, Bounced, Expired}

const (
	statMinutes = 60
	latestN     = 50
)

// minute is one minute's event counts, by statKinds.
type minute struct {
	at     int64 // unix minute
	counts [5]int
}

// stats keeps the last hour per minute and the latest events, in memory,
// updated by Append (guarded by Journal.mu).
type stats struct {
	mins   [statMinutes]minute
	latest [latestN]Event
	n      int // events ever appended (latest is a ring)
}

func (s *stats) add(e *Event) {
	m := e.Time.Unix() / 60
	b := &s.mins[m%statMinutes]
	if b.at != m {
		*b = minute{at: m}
	}
	for i, k := range statKinds {
		if k == e.Event {
			b.counts[i]++
		}
	}
	s.latest[s.n%latestN] = *e
	s.n++
}

// Minute is one minute of the recent history.
type Minute struct {
	Start  time.Time
	Counts map[string]int // by event name: accepted, delivered, deferred, bounced, expired
}

// Recent is what the daemon's journal saw lately.
type Recent struct {
	Minutes []Minute // the last hour, oldest first, one per minute
	Latest  []Event  // newest first
}

// Recent returns the last hour's counts per minute and the latest events
// appended by this process.
func (j *Journal) Recent() Recent {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := j.now().Unix() / 60
	var r Recent
	for m := now - statMinutes + 1; m <= now; m++ {
		b := j.stats.mins[((m%statMinutes)+statMinutes)%statMinutes]
		mi := Minute{Start: time.Unix(m*60, 0), Counts: map[string]int{}}
		if b.at == m {
			for i, k := range statKinds {
				mi.Counts[k] = b.counts[i]
			}
		}
		r.Minutes = append(r.Minutes, mi)
	}
	for i := 0; i < min(j.stats.n, latestN); i++ {
		r.Latest = append(r.Latest, j.stats.latest[(j.stats.n-1-i)%latestN])
	}
	return r
}
