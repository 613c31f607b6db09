package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Spool-wide events. `sluice queue flush` makes every queued message due
// now. Written as one "retry" record in each message's state log, a flush
// of a million messages created a million logs (a file, a write, later an
// unlink each) before the first of them could go; and a flush made while
// the daemon was still recovering reached only the messages already read.
//
// So a flush is one record in Dir/events, fsync'd before the flush is
// answered, that applies to every message received before it: folding a
// message's state (Message.State) merges the events later than its
// reception with its own log, in time order, so a record the message got
// after the flush (its next attempt, a hold) still wins. Recovery folds the
// same way, so a message it reads after an online flush is due at once.
//
// The flush is also the advance record of the attempt it makes due (STYLE
// 6), for the process that made it: that process makes the attempt without
// writing first (AttemptCovered) and writes its record with the outcome;
// a drain after an outage then writes nothing per message before
// delivering. A flush does not count an attempt by itself (one made while
// every breaker is open spends no retry step): each start of a delivering
// process writes a "boot" event (Boot), and a message flushed before a
// boot, with no attempt recorded in between, counts one attempt more —
// made or not, nobody knows after a crash. A message that crashes the
// process at each attempt so still climbs its count.
//
// Events older than every queued message apply to none and are dropped
// when recovery ends.

const eventsName = "events"

// events holds the spool-wide events, oldest first.
type events struct {
	mu     sync.Mutex
	loaded bool
	list   []Record
}

func (s *Spool) eventsPath() string { return filepath.Join(s.root, eventsName) }

// Events returns the spool-wide events, oldest first (read from the file
// the first time). The slice is never written to again: safe to keep.
func (s *Spool) Events() ([]Record, error) {
	s.ev.mu.Lock()
	defer s.ev.mu.Unlock()
	if err := s.loadEventsLocked(); err != nil {
		return nil, err
	}
	return s.ev.list, nil
}

func (s *Spool) loadEventsLocked() error {
	if s.ev.loaded {
		return nil
	}
	b, err := readAll(s.fs, s.eventsPath())
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", s.eventsPath(), err)
	}
	list := parseRecords(b)
	slices.SortStableFunc(list, func(a, b Record) int { return a.At.Compare(b.At) })
	s.ev.list, s.ev.loaded = list[:len(list):len(list)], true
	return nil
}

// Flush records that every message received before now is due now, durably
// (a flush answered survives a crash), and returns its time.
func (s *Spool) Flush() (time.Time, error) { return s.appendEvent("flush") }

// Boot records that a process that delivers (serve) starts: every flush
// before it may have had its attempt made, unrecorded, by a process now
// gone, so a message flushed and not attempted since counts that attempt
// (Fold). Call it before recovery and before any attempt.
func (s *Spool) Boot() error {
	_, err := s.appendEvent("boot")
	return err
}

func (s *Spool) appendEvent(t string) (time.Time, error) {
	s.ev.mu.Lock()
	defer s.ev.mu.Unlock()
	if err := s.loadEventsLocked(); err != nil {
		return time.Time{}, err
	}
	rec := Record{T: t, At: s.now()}
	if n := len(s.ev.list); n > 0 && !rec.At.After(s.ev.list[n-1].At) {
		rec.At = s.ev.list[n-1].At.Add(time.Nanosecond) // a clock stepped back: keep the order
	}
	b, err := encodeRecords([]Record{rec})
	if err != nil {
		return time.Time{}, err
	}
	created, err := appendFile(s.fs, s.eventsPath(), b, true)
	if err == nil && created {
		err = syncDir(s.fs, s.root)
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("spool: record %s in %s: %w", t, s.eventsPath(), err)
	}
	// A new slice: readers holding the old one never see it change.
	s.ev.list = append(slices.Clip(s.ev.list), rec)
	return rec.At, nil
}

// pruneEvents drops the events older than oldest (the reception of the
// oldest queued message, or the start of recovery when that is earlier),
// which apply to no message queued now or later. The file is rewritten
// (temporary file, fsync, rename, directory fsync) only when something is
// dropped, and removed when nothing is left.
func (s *Spool) pruneEvents(oldest time.Time) error {
	s.ev.mu.Lock()
	defer s.ev.mu.Unlock()
	if err := s.loadEventsLocked(); err != nil {
		return err
	}
	i, _ := slices.BinarySearchFunc(s.ev.list, oldest, func(r Record, t time.Time) int { return r.At.Compare(t) })
	keep := s.ev.list[i:]
	if len(keep) == len(s.ev.list) {
		return nil
	}
	if len(keep) == 0 { // nothing queued from before: no file
		if err := s.fs.Remove(s.eventsPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: remove %s: %w", s.eventsPath(), err)
		}
		if err := syncDir(s.fs, s.root); err != nil {
			return fmt.Errorf("spool: fsync %s: %w", s.root, err)
		}
		s.ev.list = nil
		return nil
	}
	b, err := encodeRecords(keep)
	if err != nil {
		return err
	}
	if err := replaceFile(s.fs, s.root, s.eventsPath(), b); err != nil {
		return fmt.Errorf("spool: rewrite %s: %w", s.eventsPath(), err)
	}
	s.ev.list = slices.Clip(keep)
	return nil
}

// foldEvents folds a message's own log together with the spool-wide events
// later than its reception, in time order: an event counts before every
// record of the message written after it (its At is later), and after
// every one written before it.
func foldEvents(recs, evs []Record, received time.Time) State {
	evs = eventsSince(evs, received)
	// Only a flush changes a state (a boot acts on a flush before it): the
	// common case, a restart with no flush, folds the log alone.
	if !slices.ContainsFunc(evs, func(r Record) bool { return r.T == "flush" }) {
		return Fold(recs)
	}
	return Fold(mergeRecords(recs, evs))
}

// eventsSince returns the events (sorted by time) at or after received.
func eventsSince(evs []Record, received time.Time) []Record {
	i, _ := slices.BinarySearchFunc(evs, received, func(r Record, t time.Time) int { return r.At.Compare(t) })
	return evs[i:]
}

// mergeRecords merges a message's log with events in time order, a record
// before an event of the same time.
func mergeRecords(recs, evs []Record) []Record {
	merged := make([]Record, 0, len(recs)+len(evs))
	for _, r := range recs {
		for len(evs) > 0 && evs[0].At.Before(r.At) {
			merged = append(merged, evs[0])
			evs = evs[1:]
		}
		merged = append(merged, r)
	}
	return append(merged, evs...)
}

// History is what the message's state folds: its log and the spool-wide
// events (flush, boot) since its reception, in time order (`queue show`).
func (m *Message) History() []Record {
	return mergeRecords(m.Records, eventsSince(m.events, m.Env.Received))
}
