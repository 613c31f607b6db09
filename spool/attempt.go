package spool

import (
	"fmt"
	"io"
	"os"
)

// Attempt is one delivery attempt of a committed message, from the moment
// it may be made until its outcome is recorded (Record), the message is
// removed (Finish) or left queued (Close).
//
// The rule (STYLE 6): an attempt is recorded, fsync'd, before it is made, so
// a message that crashes the process, or an upstream that takes it and then
// a power cut, is never attempted more often than its log says. Recovery
// reads the count back, and the schedule and expiry follow it.
//
// Its two exceptions are attempts recorded by something written before:
//   - the first attempt of a message committed by this process (Commit's
//     Fresh): the committed file is its record, since a message file without
//     a state log, or with a log holding no attempt, counts as attempted
//     once (Message.State). Most messages are delivered at that attempt and
//     so cost no state log at all;
//   - the next attempt of a message a flush made due, in the process that
//     made the flush (AttemptCovered): the flush, fsync'd in Dir/events, is
//     its record, counted as an attempt once a later start follows it
//     (events.go). A drain after an outage then writes nothing per message
//     before delivering.
//
// If such a message stays queued, the attempt's record is written with the
// outcome (first).
type Attempt struct {
	s      *Spool
	id     string
	f      File
	prefix []byte
	msgLen int64
	first  *Record // the attempt not recorded in advance, written with the outcome
	size   int64   // the file's length when known (a fresh message), else -1
}

// Attempt records rec (an "attempt" record: number, time, next due) and
// opens the message for the attempt; with fresh (the message's Commit
// result, never attempted) it records nothing and uses fresh's descriptor.
// h may also be Reopen's handle, whose descriptor and trailer it uses. On
// error the attempt must not be made.
func (s *Spool) Attempt(id string, h *Fresh, rec Record) (*Attempt, error) {
	return s.attempt(id, h, rec, false)
}

// AttemptCovered is Attempt for the attempt a flush made due, in the
// process that made the flush (State.Flushed set, no start since): the
// flush is its advance record (events.go), so nothing is written before it
// either; its record goes with the outcome. After a restart the flush
// counts as that attempt, and the next one is recorded first.
func (s *Spool) AttemptCovered(id string, h *Fresh, rec Record) (*Attempt, error) {
	return s.attempt(id, h, rec, true)
}

func (s *Spool) attempt(id string, h *Fresh, rec Record, covered bool) (*Attempt, error) {
	if h == nil || h.f == nil {
		// Opened first: a message deleted meanwhile gets no log (the
		// error wraps os.ErrNotExist). Opening is not attempting.
		var err error
		if h, _, err = s.Reopen(id); err != nil {
			return nil, err
		}
	}
	a := &Attempt{s: s, id: id, f: h.f, prefix: h.prefix, msgLen: h.msgLen, size: h.size}
	h.f, h.prefix = nil, nil
	rec.T = "attempt"
	if !h.reopened || covered { // recorded by the committed file, or by the flush
		a.first = &rec
		return a, nil
	}
	if err := s.Record(id, true, rec); err != nil {
		a.f.Close()
		return nil, err
	}
	return a, nil
}

// Reopen opens a queued message for its next attempt: its envelope now
// (the route decides whether it can go), its descriptor and DKIM prefix
// kept in the handle for Attempt, which then opens and reads nothing
// again. Close the handle if the attempt is not made. The error wraps
// os.ErrNotExist when the message is gone.
func (s *Spool) Reopen(id string) (*Fresh, *Envelope, error) {
	// Read and write: once delivered, the file goes to the free pool and
	// the next draft writes over it (recycleKeep).
	f, err := s.openMsg(id, os.O_RDWR)
	if err != nil {
		return nil, nil, fmt.Errorf("spool: open %s: %w", id, err)
	}
	tr, msgLen, err := readTrailer(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("spool: read %s: %w", id, err)
	}
	// The file's length (readTrailer checked it adds up) lets a message
	// delivered at this attempt be pooled with its blocks like a fresh one
	// (recycleKeep), not emptied: an ftruncate and the allocation of new
	// blocks by the next draft cost three times the CPU of writing over them.
	return &Fresh{f: f, prefix: tr.Prefix, msgLen: msgLen, size: tr.size, s: s, id: id, reopened: true}, tr.Env, nil
}

// Size is the number of bytes delivered: prefix and message.
func (a *Attempt) Size() int64 { return int64(len(a.prefix)) + a.msgLen }

// Open returns the prefix and message bytes; it may be called again (a
// failover resends). The reader shares the attempt's descriptor.
func (a *Attempt) Open() (io.ReadCloser, error) {
	if a.f == nil {
		return nil, fmt.Errorf("spool: %s: attempt already ended", a.id)
	}
	return io.NopCloser(body(a.prefix, a.f, a.msgLen)), nil
}

// Record appends the attempt's outcome (per-recipient results) for a
// message that stays queued, fsync'd; the first attempt's own record goes
// first when it was not written in advance.
func (a *Attempt) Record(recs ...Record) error {
	if a.first != nil {
		first := *a.first
		first.T = "attempt"
		recs = append([]Record{first}, recs...)
	}
	if err := a.s.Record(a.id, true, recs...); err != nil {
		return err
	}
	a.first = nil
	return nil
}

// Finish removes the message durably (Spool.Finish) and ends the attempt.
func (a *Attempt) Finish() error {
	f := a.f
	a.f = nil
	return a.s.finish(a.id, f, a.size)
}

// Close ends the attempt of a message that stays queued: its descriptor is
// closed (a queued message holds none).
func (a *Attempt) Close() {
	if a.f != nil {
		a.f.Close()
		a.f = nil
		if a.first != nil { // a fresh message's first attempt, no log written
			a.s.unlogged.Delete(a.id)
		}
	}
}
