package queue

import (
	"container/heap"
	"time"

	"github.com/sluicemail/sluice/spool"
)

// jitter is the spread applied to every retry interval: ±10 %, so messages
// deferred together by one upstream outage do not come back together.
const jitter = 0.10

// NextAttempt returns the delay before attempt number attempt+1, given that
// attempt (1-based) attempts have been made: retry[attempt-1], the last
// interval repeating, scaled by a factor in [0.9, 1.1) from rnd (a value in
// [0,1)). It is pure so the schedule is table-tested.
func NextAttempt(retry []time.Duration, attempt int, rnd float64) time.Duration {
	if len(retry) == 0 {
		return 0
	}
	i := min(max(attempt-1, 0), len(retry)-1)
	d := retry[i]
	return time.Duration(float64(d) * (1 - jitter + 2*jitter*rnd))
}

// entry is a message in the scheduler. It is kept small — a million
// queued messages must fit in a few hundred MB (docs/queue.md): the ID is
// an array, not a string; times are Unix nanoseconds, not time.Time; the
// recipients' outcomes are bits; the envelope is dropped while it waits.
// Together with its map slot and heap pointer it costs ~130 bytes.
type entry struct {
	id qid
	// env is held while the message is fresh or in flight; a message that
	// waits in the queue drops it (finish) and each attempt reads it again
	// (loadEnv).
	env      *Envelope
	received int64 // env.Received in Unix nanoseconds, for Oldest
	next     int64 // when it is due, Unix nanoseconds
	attempts int32
	index    int32 // in the heap; -1 when not in it
	rcpt     rcptSet
	held     bool
	warned   bool
	inflight bool
	removed  bool // deleted while in flight: the worker drops it afterwards
	silent   bool // with removed: no bounce
	retryNow bool // retry/release during an attempt: due again right after it
	retried  bool // made due by retry/release (recorded); else by its schedule
	covered  bool // a flush by this process counted its next attempt (spool.AttemptCovered)

	// A message committed by this process keeps its descriptor, DKIM
	// prefix and length until its first attempt (spool.Fresh), which is
	// not recorded in advance (spool.Attempt); a queued one holds them
	// from loadEnv (spool.Reopen) to its attempt.
	fresh *spool.Fresh
}

// qid is a queue ID (spool.NewID: 16 characters) held as an array: no
// string header and no separate allocation per queued message.
type qid [16]byte

// toQID converts a valid queue ID; ok is false for anything else.
func toQID(id string) (x qid, ok bool) {
	if len(id) != len(x) {
		return x, false
	}
	copy(x[:], id)
	return x, true
}

func (x qid) String() string { return string(x[:]) }

// qidOf is toQID for an ID already checked (spool.ValidID) or looked up
// only: an invalid one maps to no entry.
func qidOf(id string) qid {
	x, _ := toQID(id)
	return x
}

// rcptSet marks which recipients (by index in env.To) have a final
// outcome: a bit each for the first 64, a slice for the rare message
// with more.
type rcptSet struct {
	lo uint64
	hi *[]bool
}

func (s *rcptSet) done(i int) bool {
	if i < 64 {
		return s.lo&(1<<uint(i)) != 0
	}
	return s.hi != nil && i-64 < len(*s.hi) && (*s.hi)[i-64]
}

func (s *rcptSet) set(i int) {
	if i < 64 {
		s.lo |= 1 << uint(i)
		return
	}
	if s.hi == nil {
		s.hi = new([]bool)
	}
	for len(*s.hi) <= i-64 {
		*s.hi = append(*s.hi, false)
	}
	(*s.hi)[i-64] = true
}

type entryHeap []*entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].next < h[j].next }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = int32(i)
	h[j].index = int32(j)
}
func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.index = int32(len(*h))
	*h = append(*h, e)
}
func (h *entryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}

// addEntry registers a committed message e (its id, env, attempts, next —
// zero means now —, held and fast-path fields set by the caller).
func (q *Queue) addEntry(e *entry) *entry {
	e.index = -1
	e.received = e.env.Received.UnixNano()
	id, next, held := e.id, e.next, e.held
	if next == 0 {
		e.next = q.now().UnixNano()
	}
	q.mu.Lock()
	q.entries[id] = e
	if !held {
		heap.Push(&q.due, e)
	}
	q.mu.Unlock()
	q.poke()
	return e
}

// loadEnv makes sure e.env is there, reading it from the spool when the
// message waited in the queue without it; the error wraps os.ErrNotExist
// when the message was deleted meanwhile.
func (q *Queue) loadEnv(e *entry) error {
	q.mu.Lock()
	have := e.env != nil
	q.mu.Unlock()
	if have {
		return nil
	}
	// Opened once for the envelope and the attempt both: the handle
	// travels to spool.Attempt (or is closed if the message waits).
	h, env, err := q.spool.Reopen(e.id.String())
	if err != nil {
		return err
	}
	e.fresh = h
	q.mu.Lock()
	if e.env == nil {
		e.env = env
	}
	q.mu.Unlock()
	return nil
}

// poke wakes one idle worker to look at the heap.
func (q *Queue) poke() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// schedule puts e back in the heap at t (under q.mu).
func (q *Queue) scheduleLocked(e *entry, t time.Time) {
	e.next = t.UnixNano()
	if e.inflight {
		e.retryNow = !t.After(q.now())
		return
	}
	if e.held || e.removed {
		return
	}
	if e.index >= 0 {
		heap.Fix(&q.due, int(e.index))
	} else {
		heap.Push(&q.due, e)
	}
}

// recover reads the snapshot (spool.Snapshot.Recover: drafts deleted,
// corrupt files moved aside, finished messages removed) and schedules each
// message as it is read. Messages already due when the process started are
// spread over a window that grows with their number (5 ms each, at most a
// minute), so a restart after an outage is not a burst; workers still bound
// concurrency. A flush or retry made since is not spread.
func (q *Queue) recover(sn *spool.Snapshot) error {
	now := q.now()
	due, n := 0, 0
	err := sn.Recover(func(m *spool.Message) bool {
		if q.stopping.Load() {
			return false
		}
		st := m.State()
		// No envelope in memory while it waits: the attempt reads it.
		id, ok := toQID(m.ID)
		if !ok {
			return true // the spool hands over valid IDs only
		}
		e := &entry{id: id, received: m.Env.Received.UnixNano(), attempts: int32(st.Attempts), held: st.Held, warned: st.Warned, index: -1}
		// A flush this process made while recovery read is the advance
		// record of the next attempt, as for the entries it found in
		// memory. An older one was followed by this process's start
		// (spool.Boot), which counted it as an attempt.
		e.covered = !st.Flushed.IsZero()
		for i, to := range m.Env.To {
			if st.RcptState(to) != StatePending {
				e.rcpt.set(i)
			}
		}
		next := st.Next
		// Due since before this process opened the spool (an outage, a
		// restart): spread. Made due by it (a flush or retry while
		// recovery reads): now, as asked.
		if next.IsZero() || next.Before(q.opened) {
			due++
			window := min(time.Duration(due)*5*time.Millisecond, time.Minute)
			next = now.Add(time.Duration(q.rnd() * float64(window)))
		}
		e.next = next.UnixNano()
		q.mu.Lock()
		if q.entries[id] == nil { // else a control action got there first
			q.entries[id] = e
			if !e.held {
				heap.Push(&q.due, e)
			}
			n++
		}
		q.mu.Unlock()
		q.poke()
		return true
	})
	if err != nil {
		return err
	}
	if n > 0 {
		q.log.Info("queue: recovered spool", "messages", n, "due", due)
	}
	return nil
}

// removeFiles removes a finished message from the spool for good
// (spool.Finish); fresh is its Commit result if it was never attempted.
func (q *Queue) removeFiles(id string, fresh *spool.Fresh) {
	if err := q.spool.Finish(id, fresh); err != nil {
		q.log.Error("queue: remove finished message", "queue_id", id, "err", err)
	}
}
