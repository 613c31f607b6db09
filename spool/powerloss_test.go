package spool

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The power-loss tests run the protocol on a simDisk cut after every step in
// turn, bring the disk back losing (or, in the partial modes, keeping) what
// no fsync covered, recover — itself cut at every step and brought back
// again — and check what the contract promises (DESIGN §1, §8.6):
//   - every message whose Commit returned nil (answered 250) is there, whole;
//   - no message whose Finish returned nil comes back;
//   - whatever is recovered is byte for byte a message that was written
//     completely (never half a message, nor a free file's old bytes);
//   - the attempt count recovered is at least the number of attempts that
//     may have been made, and a final outcome recorded stays final;
//   - a hold recorded stays.

const spoolRoot = "/spool"

// world is what the script was told: the observable promises.
type world struct {
	written   map[string][]byte // id → prefix+message, for every draft written whole
	acked     map[string]bool   // Commit returned nil
	finishing map[string]bool   // Finish was called: every recipient final, it may go
	finished  map[string]bool   // Finish returned nil: it must stay gone
	attempts  map[string]int    // Attempt returned nil: the attempt may have been made
	final     map[string]map[string]bool
	held      map[string]bool
	to        map[string][]string
}

func newWorld() *world {
	return &world{written: map[string][]byte{}, acked: map[string]bool{}, finishing: map[string]bool{}, finished: map[string]bool{}, attempts: map[string]int{},
		final: map[string]map[string]bool{}, held: map[string]bool{}, to: map[string][]string{}}
}

func (w *world) clone() *world {
	n := newWorld()
	maps.Copy(n.written, w.written)
	maps.Copy(n.acked, w.acked)
	maps.Copy(n.finishing, w.finishing)
	maps.Copy(n.finished, w.finished)
	maps.Copy(n.attempts, w.attempts)
	for k, v := range w.final {
		n.final[k] = maps.Clone(v)
	}
	maps.Copy(n.held, w.held)
	maps.Copy(n.to, w.to)
	return n
}

// tick is a clock that moves 1ms a call, so IDs (and the order recovery
// reads files in) are the same from run to run.
func tick() func() time.Time {
	var n atomic.Int64
	base := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	return func() time.Time { return base.Add(time.Duration(n.Add(1)) * time.Millisecond) }
}

func openSim(d *simDisk) (*Spool, error) {
	return Open(spoolRoot, Options{FS: d, Logger: slog.New(slog.DiscardHandler), Now: tick(), MaxFree: 4})
}

type msgRef struct {
	id    string
	fresh *Fresh
}

// commit writes and commits one message, telling w what happened.
func (w *world) commit(s *Spool, prefix, body string, to ...string) msgRef {
	d, err := s.Begin()
	if err != nil {
		return msgRef{}
	}
	if _, err := io.WriteString(d, body); err != nil {
		d.Abort()
		return msgRef{}
	}
	w.written[d.ID] = []byte(prefix + body)
	w.to[d.ID] = to
	fresh, err := d.Commit(&Envelope{From: "alice@example.com", To: to}, []byte(prefix))
	if err != nil {
		return msgRef{}
	}
	w.acked[d.ID] = true
	return msgRef{d.ID, fresh}
}

// attempt makes one attempt of m (fresh: its first), with outcome per
// recipient ("" deferred, else a final state); finish removes it after.
func (w *world) attempt(s *Spool, m *msgRef, n int, outcome map[string]string, finish bool) {
	w.attemptBy(s.Attempt, m, n, outcome, finish)
}

// attemptBy is attempt through Spool.Attempt or Spool.AttemptCovered.
func (w *world) attemptBy(attempt func(string, *Fresh, Record) (*Attempt, error), m *msgRef, n int, outcome map[string]string, finish bool) {
	if m.id == "" {
		return
	}
	a, err := attempt(m.id, m.fresh, Record{At: time.Now(), N: n})
	m.fresh = nil
	if err != nil {
		return
	}
	w.attempts[m.id]++
	if rc, err := a.Open(); err == nil { // what delivery reads is the message, whole
		b, rerr := io.ReadAll(rc)
		if rerr == nil && !bytes.Equal(b, w.written[m.id]) {
			panic(fmt.Sprintf("attempt of %s read %q, want %q", m.id, b, w.written[m.id]))
		}
	}
	if finish {
		w.finishing[m.id] = true
		if a.Finish() == nil {
			w.finished[m.id] = true
		}
		return
	}
	var recs []Record
	for rcpt, st := range outcome {
		if st == "" {
			st = StateDeferred
		}
		recs = append(recs, Record{T: "rcpt", Rcpt: rcpt, State: st})
	}
	if a.Record(recs...) == nil {
		for rcpt, st := range outcome {
			if st != "" {
				if w.final[m.id] == nil {
					w.final[m.id] = map[string]bool{}
				}
				w.final[m.id][rcpt] = true
			}
		}
	}
	a.Close()
}

// script runs every step of the protocol once: commits into new files and
// into free ones (longer, then shorter messages), a fresh first attempt
// that delivers, one that defers, recorded attempts, a partial delivery, a
// hold, a delete, a commit larger than the file it reuses, and a flush
// with the attempt it counts.
func (w *world) script(s *Spool) {
	m1 := w.commit(s, "DKIM: 1\r\n", "Subject: one\r\n\r\n"+strings.Repeat("long line one\r\n", 40), "a@x")
	m2 := w.commit(s, "", "Subject: two\r\n\r\nbody two\r\n", "b@x", "c@x")
	m3 := w.commit(s, "DKIM: 3\r\n", "Subject: three\r\n\r\nbody three\r\n", "d@x")
	w.attempt(s, &m1, 1, nil, true)                                      // fresh, delivered at once
	w.attempt(s, &m2, 1, map[string]string{"b@x": "", "c@x": ""}, false) // fresh, deferred
	m4 := w.commit(s, "", "Subject: four\r\n\r\nshort\r\n", "e@x")       // reuses m1's file
	w.attempt(s, &m2, 2, map[string]string{"b@x": StateDelivered, "c@x": ""}, false)
	if s.Record(m3.id, true, Record{T: "hold"}) == nil {
		w.held[m3.id] = true
	}
	w.attempt(s, &m2, 3, nil, true) // c@x delivered: finished
	m5 := w.commit(s, "DKIM: 5\r\n", "Subject: five\r\n\r\n"+strings.Repeat("longer than the file it reuses\r\n", 60), "f@x")
	if m3.id != "" { // deleted by the administrator
		w.finishing[m3.id] = true
		if s.Finish(m3.id, m3.fresh) == nil {
			w.finished[m3.id] = true
		}
	}
	w.attempt(s, &m4, 1, map[string]string{"e@x": StateBounced}, true)
	w.attempt(s, &m5, 1, map[string]string{"f@x": ""}, false)
	// A flush is the advance record of m5's next attempt, made unrecorded
	// (reopened first, as the queue does) and deferred again.
	if _, err := s.Flush(); err == nil && m5.id != "" {
		if h, _, err := s.Reopen(m5.id); err == nil {
			m5.fresh = h
			w.attemptBy(s.AttemptCovered, &m5, 2, map[string]string{"f@x": ""}, false)
		}
	}
}

// check recovers the disk and holds the result against w.
func check(t *testing.T, d *simDisk, w *world, ctx string) {
	t.Helper()
	s, err := openSim(d)
	if err != nil {
		t.Fatalf("%s: open: %v", ctx, err)
	}
	defer s.Close()
	got := map[string]*Message{}
	if err := s.Boot(); err != nil { // as serve does (queue.Open)
		t.Fatalf("%s: boot: %v", ctx, err)
	}
	if err := s.Recover(func(m *Message) { got[m.ID] = m }); err != nil {
		t.Fatalf("%s: recover: %v", ctx, err)
	}
	for id := range w.acked {
		if !w.finishing[id] && got[id] == nil {
			t.Errorf("%s: message %s answered 250 is lost\n%s", ctx, id, d.traceString())
		}
	}
	for id, m := range got {
		if w.finished[id] {
			t.Errorf("%s: finished message %s came back", ctx, id)
			continue
		}
		want, ok := w.written[id]
		if !ok {
			t.Errorf("%s: recovered %s, which was never written", ctx, id)
			continue
		}
		rc, _, err := s.Body(id)
		if err != nil {
			t.Errorf("%s: body of %s: %v", ctx, id, err)
			continue
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(b, want) {
			t.Errorf("%s: %s recovered as %q, want %q", ctx, id, b, want)
		}
		st := m.State()
		if st.Attempts < w.attempts[id] {
			t.Errorf("%s: %s recovered with %d attempts, %d may have been made", ctx, id, st.Attempts, w.attempts[id])
		}
		for rcpt := range w.final[id] {
			if st.RcptState(rcpt) == StatePending {
				t.Errorf("%s: %s: recorded final outcome for %s lost", ctx, id, rcpt)
			}
		}
		if w.held[id] && !st.Held {
			t.Errorf("%s: %s: recorded hold lost", ctx, id)
		}
		if strings.Join(m.Env.To, ",") != strings.Join(w.to[id], ",") {
			t.Errorf("%s: %s: recipients %v, want %v", ctx, id, m.Env.To, w.to[id])
		}
	}
	for _, n := range d.names(spoolRoot + "/corrupt") {
		if w.acked[n] {
			t.Errorf("%s: acknowledged message %s moved to corrupt/", ctx, n)
		}
	}
}

// run executes the script on a disk cut after cut steps (<0: never) and
// returns the disk and what the script was told.
func runScript(cut int) (*simDisk, *world) {
	d := newSimDisk()
	w := newWorld()
	s, err := openSim(d)
	if err != nil {
		panic(err)
	}
	if err := s.Recover(func(*Message) {}); err != nil {
		panic(err)
	}
	d.mu.Lock()
	d.steps, d.trace, d.cut = 0, nil, cut
	d.mu.Unlock()
	w.script(s)
	s.Close()
	return d, w
}

// recoverAndCommit is what a restart does: recover, then accept a message
// (into a free file recovery took back) and attempt one recovered message.
func recoverAndCommit(d *simDisk, w *world) {
	s, err := openSim(d)
	if err != nil {
		return
	}
	defer s.Close()
	var first string
	if s.Boot() != nil {
		return
	}
	if s.Recover(func(m *Message) {
		if first == "" {
			first = m.ID
		}
	}) != nil {
		return
	}
	w.commit(s, "DKIM: after\r\n", "Subject: after the restart\r\n\r\n"+strings.Repeat("x", 300)+"\r\n", "g@x")
	m := msgRef{id: first}
	w.attempt(s, &m, 9, map[string]string{}, false)
}

func countSteps(d *simDisk) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.steps
}

// TestPowerLossAtEveryStep cuts the power after each step of the script,
// then cuts it again after each step of the restart (recovery, a commit
// into a reused file, a recorded attempt), in every loss mode.
func TestPowerLossAtEveryStep(t *testing.T) {
	t.Parallel()
	powerLossAtEveryStep(t)
}

// TestPowerLossAtEveryStepRotating is the same with the finished log
// rewritten at every line (resident.go): each rewrite, cut at every step.
func TestPowerLossAtEveryStepRotating(t *testing.T) {
	// Not parallel: finishedRotate is the package's.
	defer func(n int) { finishedRotate = n }(finishedRotate)
	finishedRotate = 1
	powerLossAtEveryStep(t)
}

func powerLossAtEveryStep(t *testing.T) {
	full, _ := runScript(-1)
	n := countSteps(full)
	if n < 40 {
		t.Fatalf("script made only %d steps; premise gone\n%s", n, full.traceString())
	}
	for cut := 0; cut <= n; cut++ {
		// A kill -9 (nil mode) keeps the page cache: nothing is lost, but
		// nothing more is durable than before either.
		for _, m1 := range append([]*lossMode{nil}, ptrs(lossModes)...) {
			d, w := runScript(cut)
			back := d.clone()
			ctx := fmt.Sprintf("killed after step %d (%s)", cut, stepName(d, cut))
			if m1 != nil {
				back = d.crash(*m1)
				ctx = fmt.Sprintf("cut after step %d (%s), %s", cut, stepName(d, cut), m1)
			}
			check(t, back.clone(), w, ctx)
			// The restart, cut at every step too.
			probe := back.clone()
			recoverAndCommit(probe, w.clone())
			rn := countSteps(probe)
			for rcut := 0; rcut <= rn; rcut++ {
				for _, m2 := range lossModes {
					if m1 != nil && m2 != *m1 && rcut%2 == 1 {
						continue // the partial modes at every other step keep the run short
					}
					rd := back.clone()
					rd.cut = rcut
					rw := w.clone()
					recoverAndCommit(rd, rw)
					check(t, rd.crash(m2), rw, fmt.Sprintf("%s; restart cut after step %d (%s), %s", ctx, rcut, stepName(rd, rcut), m2))
				}
			}
			if t.Failed() {
				return
			}
		}
	}
}

func stepName(d *simDisk, n int) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if n == 0 || n > len(d.trace) {
		return "none"
	}
	return d.trace[n-1]
}

func ptrs(ms []lossMode) []*lossMode {
	var out []*lossMode
	for i := range ms {
		out = append(out, &ms[i])
	}
	return out
}
