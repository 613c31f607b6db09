package queue

import (
	"container/heap"
	"errors"
	"os"
	"strings"
	"time"
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
	id       string
	env      *Envelope
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

	// A message committed by this process keeps its DKIM prefix and length
	// in memory until its first attempt, and has no state log until one is
	// needed (see attempt): the common case — delivered at once — then
	// costs no state file, no extra fsync and no re-read of the trailer.
	fresh  bool
	prefix []byte
	msgLen int64
	file   *os.File // the committed file's descriptor, until the first attempt ends
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

// recover loads the spool: drafts are deleted (never acknowledged), orphan
// state logs removed, corrupt files moved aside, messages whose recipients
// are all final removed, and the rest scheduled. Messages already due are
// spread over a window so a restart after an outage is not a burst.
func (q *Queue) recover() error {
	des, err := os.ReadDir(q.dir)
	if err != nil {
		return err
	}
	names := map[string]bool{}
	for _, de := range des {
		names[de.Name()] = true
	}
	now := q.now()
	var due []*entry
	for _, de := range des {
		name := de.Name()
		switch {
		case strings.HasPrefix(name, freePrefix):
			if !q.free.put(freeFile{name: name}) {
				os.Remove(q.path(name))
			}
		case strings.HasSuffix(name, tmpSuffix) || strings.HasPrefix(name, ".probe-"):
			os.Remove(q.path(name))
			q.log.Info("queue: removed unacknowledged draft", "file", name)
		case strings.HasSuffix(name, stateSuffix):
			if !names[strings.TrimSuffix(name, stateSuffix)] {
				os.Remove(q.path(name))
			}
		case !validID(name):
			q.moveCorrupt(name, errors.New("not a queue file name"))
		default:
			tr, _, err := readTrailer(q.path(name))
			if err != nil {
				q.moveCorrupt(name, err)
				if names[name+stateSuffix] {
					q.moveCorrupt(name+stateSuffix, errors.New("state of a corrupt message"))
				}
				continue
			}
			recs, err := readState(q.path(name + stateSuffix))
			if err != nil {
				return err
			}
			st := foldState(recs)
			// Without a state log the first attempt (which is not recorded
			// in advance, see attempt) may have been in flight at the crash:
			// count it, so the next attempt is recorded before it is made and
			// a message that crashes the process cannot loop unrecorded.
			attempts := st.Attempts
			if !names[name+stateSuffix] {
				attempts = 1
			}
			e := &entry{id: name, env: tr.Env, attempts: attempts, next: st.Next, held: st.Held, warned: st.Warned, rcpt: make([]bool, len(tr.Env.To)), index: -1}
			pending := 0
			for i, to := range tr.Env.To {
				if st.rcptState(to) != StatePending {
					e.rcpt[i] = true
				} else {
					pending++
				}
			}
			if pending == 0 {
				q.removeFiles(name)
				continue
			}
			if e.next.IsZero() || !e.next.After(now) {
				due = append(due, e)
			}
			q.entries[name] = e
			if !e.held {
				heap.Push(&q.due, e)
			}
		}
	}
	// Spread due messages over up to a minute (5 ms each): workers still
	// bound concurrency; the spread keeps a backlog from hitting an upstream
	// in one wave and gives fresh mail a chance in between.
	window := min(time.Duration(len(due))*5*time.Millisecond, time.Minute)
	for _, e := range due {
		e.next = now.Add(time.Duration(q.rnd() * float64(window)))
		if e.index >= 0 {
			heap.Fix(&q.due, e.index)
		}
	}
	if len(q.entries) > 0 {
		q.log.Info("queue: recovered spool", "messages", len(q.entries), "due", len(due))
	}
	return nil
}

func (q *Queue) path(name string) string { return q.dir + string(os.PathSeparator) + name }

// removeFiles deletes a finished message: the message first, so a crash in
// between leaves an orphan state log (removed at recovery), never a message
// without its record of final outcomes.
func (q *Queue) removeFiles(id string) { q.removeFilesFD(id, nil) }

// removeFilesFD is removeFiles for a message whose file is open as f.
func (q *Queue) removeFilesFD(id string, f *os.File) {
	if err := q.recycle(id, f); err != nil && !errors.Is(err, os.ErrNotExist) {
		q.log.Error("queue: remove finished message", "queue_id", id, "err", err)
		return
	}
	os.Remove(q.path(id + stateSuffix)) // most messages never had one: ENOENT, no unlink
}
