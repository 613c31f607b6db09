package spool

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// A flush is one record in Dir/events, not one per message: every message
// received before it is due at its time, none gets a state log, a record
// the message gets afterwards still wins, and a message received after it
// keeps its own schedule. A View (the CLI) reads the same.
func TestFlushFoldsIntoEveryMessage(t *testing.T) {
	dir := t.TempDir()
	clock := tick()
	s := openAt(t, dir, Options{Now: clock})
	later := clock().Add(time.Hour)
	var ids []string
	for range 3 {
		id, fresh := commitOne(t, s, "Subject: m\r\n\r\nbody\r\n")
		a, err := s.Attempt(id, fresh, Record{At: clock(), N: 1, Next: later})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Record(Record{T: "rcpt", Rcpt: "b@example.org", State: StateDeferred, Diag: "451 try later"}); err != nil {
			t.Fatal(err)
		}
		a.Close()
		ids = append(ids, id)
	}
	logs := func() int {
		n := 0
		for _, id := range ids {
			if _, err := os.Stat(filepath.Join(dir, "msg", id+stateSuffix)); err == nil {
				n++
			}
		}
		return n
	}
	before := logs()
	at, err := s.Flush()
	if err != nil {
		t.Fatal(err)
	}
	if n := logs(); n != before {
		t.Fatalf("state logs: %d before the flush, %d after: a flush must not write per message", before, n)
	}
	// The second message is attempted again after the flush: its own
	// record (later) wins over the flush.
	a, err := s.Attempt(ids[1], nil, Record{At: clock(), N: 2, Next: later.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	newID, fresh := commitOne(t, s, "Subject: after\r\n\r\nbody\r\n")
	fresh.Close()

	want := map[string]time.Time{ids[0]: at, ids[1]: later.Add(time.Hour), ids[2]: at, newID: {}}
	for _, sp := range []*Spool{s, View(dir, Options{})} {
		for id, next := range want {
			m, err := sp.Read(id)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.State().Next; !got.Equal(next) {
				t.Errorf("%s: next %v, want %v", id, got, next)
			}
		}
	}
	// What `queue show` lists: the log with the flush in its place; the
	// message received after it has none.
	m, _ := s.Read(ids[1])
	var kinds []string
	for _, r := range m.History() {
		kinds = append(kinds, r.T)
	}
	if want := []string{"attempt", "rcpt", "flush", "attempt"}; !slices.Equal(kinds, want) {
		t.Errorf("history of %s: %v, want %v", ids[1], kinds, want)
	}
	if m, _ := s.Read(newID); len(m.History()) != 0 {
		t.Errorf("history of %s (after the flush): %v", newID, m.History())
	}
}

// A flush made while recovery reads the spool reaches the messages it has
// not read yet: they come out of recovery due at the flush's time.
func TestFlushDuringRecovery(t *testing.T) {
	dir := t.TempDir()
	clock := tick()
	s := openAt(t, dir, Options{Now: clock})
	later := clock().Add(time.Hour)
	for range 5 {
		id, fresh := commitOne(t, s, "Subject: m\r\n\r\nbody\r\n")
		a, err := s.Attempt(id, fresh, Record{At: clock(), N: 1, Next: later})
		if err != nil {
			t.Fatal(err)
		}
		a.Record(Record{T: "rcpt", Rcpt: "b@example.org", State: StateDeferred})
		a.Close()
	}
	s.Close()

	s2, err := Open(dir, Options{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var at time.Time
	var nexts []time.Time
	err = s2.Recover(func(m *Message) {
		if at.IsZero() {
			if at, err = s2.Flush(); err != nil {
				t.Fatal(err)
			}
		}
		nexts = append(nexts, m.State().Next)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(nexts) != 5 {
		t.Fatalf("recovered %d messages, want 5", len(nexts))
	}
	if !nexts[0].Equal(later) {
		t.Errorf("message read before the flush: next %v, want %v", nexts[0], later)
	}
	for i, n := range nexts[1:] {
		if !n.Equal(at) {
			t.Errorf("message %d, read after the flush: next %v, want the flush's %v", i+2, n, at)
		}
	}
}

// Events older than every queued message are dropped when recovery ends;
// the file goes once the spool is empty.
func TestRecoveryPrunesEvents(t *testing.T) {
	dir := t.TempDir()
	clock := tick()
	s := openAt(t, dir, Options{Now: clock})
	first, err := s.Flush()
	if err != nil {
		t.Fatal(err)
	}
	id, fresh := commitOne(t, s, "Subject: m\r\n\r\nbody\r\n")
	fresh.Close()
	second, err := s.Flush()
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openAt(t, dir, Options{Now: clock})
	evs, err := s.Events()
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || !evs[0].At.Equal(second) {
		t.Fatalf("events after recovery: %+v; want only the flush at %v (the one at %v predates every message)", evs, second, first)
	}
	if err := s.Finish(id, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s = openAt(t, dir, Options{Now: clock})
	if evs, _ := s.Events(); len(evs) != 0 {
		t.Fatalf("events with the spool empty: %+v", evs)
	}
	if b, err := os.ReadFile(filepath.Join(dir, eventsName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("events file with the spool empty: %q, %v", b, err)
	}
}

// A flush answered survives a power cut, whatever else the disk loses;
// one that failed is not half there.
func TestFlushSurvivesPowerLoss(t *testing.T) {
	for cut := 0; ; cut++ {
		d := newSimDisk()
		s, err := Open(spoolRoot, Options{FS: d, Logger: slog.New(slog.DiscardHandler), Now: tick()})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Recover(func(*Message) {}); err != nil {
			t.Fatal(err)
		}
		d.mu.Lock()
		d.cut = d.steps + cut
		d.mu.Unlock()
		at, ferr := s.Flush()
		dead := d.dead()
		for _, m := range lossModes {
			d2 := d.crash(m)
			s2 := View(spoolRoot, Options{FS: d2})
			evs, err := s2.Events()
			if err != nil {
				t.Fatalf("cut %d %v: %v", cut, m, err)
			}
			if ferr == nil && (len(evs) != 1 || !evs[0].At.Equal(at)) {
				t.Fatalf("cut %d %v: flush answered at %v, events after the cut %+v", cut, m, at, evs)
			}
			if len(evs) > 1 || len(evs) == 1 && evs[0].T != "flush" {
				t.Fatalf("cut %d %v: events %+v", cut, m, evs)
			}
		}
		if !dead {
			if ferr != nil {
				t.Fatal(ferr)
			}
			return // the flush ran to its end before the cut
		}
	}
}
