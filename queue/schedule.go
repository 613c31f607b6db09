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

// entry is a message in the scheduler.
type entry struct {
	id string
	// env is held while the message is fresh or in flight; a message that
	// waits in the queue drops it (finish) and each attempt reads it again
	// (loadEnv), so a million queued messages cost ~200 bytes each, not ~500.
	env      *Envelope
	received int64 // env.Received in Unix nanoseconds, for Oldest
	attempts int
	next     time.Time
	held     bool
	warned   bool
	inflight bool
	removed  bool   // deleted while in flight: the worker drops it afterwards
	silent   bool   // with removed: no bounce
	retryNow bool   // retry/release during an attempt: due again right after it
	rcpt     []bool // per env.To: true once final
	index    int    // in the heap; -1 when not in it

	// A message committed by this process keeps its descriptor, DKIM
	// prefix and length until its first attempt (spool.Fresh), which is
	// not recorded in advance (spool.Attempt).
	fresh *spool.Fresh
}

type entryHeap []*entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
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
	e.rcpt, e.index = make([]bool, len(e.env.To)), -1
	e.received = e.env.Received.UnixNano()
	id, next, held := e.id, e.next, e.held
	if next.IsZero() {
		e.next = q.now()
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
	m, err := q.spool.Read(e.id)
	if err != nil {
		return err
	}
	m.Env.ID = e.id // one copy of the ID
	q.mu.Lock()
	if e.env == nil {
		e.env = m.Env
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
	e.next = t
	if e.inflight {
		e.retryNow = !t.After(q.now())
		return
	}
	if e.held || e.removed {
		return
	}
	if e.index >= 0 {
		heap.Fix(&q.due, e.index)
	} else {
		heap.Push(&q.due, e)
	}
}

// recover reads the snapshot (spool.Snapshot.Recover: drafts deleted,
// corrupt files moved aside, finished messages removed) and schedules each
// message as it is read. Messages already due are spread over a window that
// grows with their number (5 ms each, at most a minute), so a restart after
// an outage is not a burst; workers still bound concurrency.
func (q *Queue) recover(sn *spool.Snapshot) error {
	now := q.now()
	due, n := 0, 0
	err := sn.Recover(func(m *spool.Message) bool {
		if q.stopping.Load() {
			return false
		}
		st := m.State()
		// No envelope in memory while it waits: the attempt reads it.
		e := &entry{id: m.ID, received: m.Env.Received.UnixNano(), attempts: st.Attempts, next: st.Next, held: st.Held, warned: st.Warned, rcpt: make([]bool, len(m.Env.To)), index: -1}
		for i, to := range m.Env.To {
			e.rcpt[i] = st.RcptState(to) != StatePending
		}
		if e.next.IsZero() || !e.next.After(now) {
			due++
			window := min(time.Duration(due)*5*time.Millisecond, time.Minute)
			e.next = now.Add(time.Duration(q.rnd() * float64(window)))
		}
		q.mu.Lock()
		if q.entries[m.ID] == nil { // else a control action got there first
			q.entries[m.ID] = e
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
