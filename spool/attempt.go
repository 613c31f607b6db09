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
// Its one exception: the first attempt of a message committed by this
// process (Commit's Fresh) is not recorded in advance, because the committed
// file is its record: a message file without a state log, or with a log
// holding no attempt, counts as attempted once (Message.State). Most
// messages are delivered at that attempt and so cost no state log at all;
// if one stays queued, its first attempt is written with the outcome.
type Attempt struct {
	s      *Spool
	id     string
	f      File
	prefix []byte
	msgLen int64
	first  *Record // the unrecorded first attempt, written with the outcome
	size   int64   // the file's length when known (a fresh message), else -1
}

// Attempt records rec (an "attempt" record: number, time, next due) and
// opens the message for the attempt; with fresh (the message's Commit
// result, never attempted) it records nothing and uses fresh's descriptor.
// On error the attempt must not be made.
func (s *Spool) Attempt(id string, fresh *Fresh, rec Record) (*Attempt, error) {
	if fresh != nil && fresh.f != nil {
		a := &Attempt{s: s, id: id, f: fresh.f, prefix: fresh.prefix, msgLen: fresh.msgLen, first: &rec, size: fresh.size}
		fresh.f, fresh.prefix = nil, nil
		return a, nil
	}
	// Opened first: a message deleted meanwhile gets no log (the error
	// wraps os.ErrNotExist). Opening is not attempting.
	f, err := s.fs.OpenFile(s.path(id), os.O_RDONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("spool: open %s: %w", id, err)
	}
	rec.T = "attempt"
	if err := s.Record(id, true, rec); err != nil {
		f.Close()
		return nil, err
	}
	tr, msgLen, err := readTrailer(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("spool: read %s: %w", id, err)
	}
	return &Attempt{s: s, id: id, f: f, prefix: tr.Prefix, msgLen: msgLen, size: -1}, nil
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
