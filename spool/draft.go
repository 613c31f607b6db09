package spool

import (
	"bufio"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// Draft is a message being received into the spool.
type Draft struct {
	ID   string
	s    *Spool
	f    File
	w    *bufio.Writer
	n    int64
	err  error
	done bool
	path string // the draft's file: ID.tmp, or the free file it reuses
	old  int64  // the length of a reused free file's old content, written over
	slot string // the ID in a reused free file's name; "" for a new file
	crc  uint32 // CRC-32C of the message bytes so far (for a slot)
}

// Begin allocates a queue ID and a file for the draft: a free file when the
// pool has one (its inode, directory entry and data blocks are reused, and
// one with its descriptor costs no open either), else a new ID.tmp. The
// draft writes over a free file's old content from the start; Commit cuts
// what is left of it.
func (s *Spool) Begin() (*Draft, error) {
	if ff := s.free.take(); ff.name != "" {
		f := ff.f
		var err error
		if f == nil {
			f, err = s.fs.OpenFile(s.path(ff.name), os.O_RDWR, 0o600)
		}
		if err == nil {
			return &Draft{ID: NewID(s.now()), s: s, f: f, path: s.path(ff.name), w: getWriter(f), old: ff.size, slot: strings.TrimPrefix(ff.name, freePrefix)}, nil
		}
		if f != nil {
			f.Close()
		}
		s.fs.Remove(s.path(ff.name))
	}
	for range 5 {
		id := NewID(s.now())
		path := s.path(id + tmpSuffix)
		f, err := s.fs.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("spool: create draft: %w", err)
		}
		return &Draft{ID: id, s: s, f: f, path: path, w: getWriter(f)}, nil
	}
	return nil, errors.New("spool: create draft: no unique id")
}

// Write streams message bytes (headers and body, CRLF) to the draft.
func (d *Draft) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.done {
		return 0, fmt.Errorf("spool: write %s: draft already committed", d.ID)
	}
	n, err := d.w.Write(p)
	d.n += int64(n)
	if d.slot != "" {
		d.crc = crc32.Update(d.crc, castagnoli, p[:n])
	}
	if err != nil {
		d.err = fmt.Errorf("spool: write %s: %w", d.ID, err)
		return n, d.err
	}
	return n, nil
}

// Fresh is a message committed by this process and not yet attempted: its
// descriptor, DKIM prefix and length stay in memory until its first attempt,
// which then reads no trailer and opens no file, and is not recorded in
// advance (see Attempt). Reopen hands out the same for a queued message's
// next attempt (reopened), between the envelope's read and the attempt.
type Fresh struct {
	f      File
	prefix []byte
	msgLen int64
	size   int64 // the file's length: message, trailer and footer
	s      *Spool
	id     string
	// reopened: not fresh but a queued message opened again for its next
	// attempt (Reopen); its attempt is recorded in advance unless covered.
	reopened bool
}

// Close drops the descriptor of a message that will not be attempted by
// this process now (it is closing, or the message waits). A message in
// place gets its own name: one that waits may wait long (resident.go).
func (fr *Fresh) Close() {
	if fr != nil && fr.f != nil {
		fr.f.Close()
		fr.f = nil
		if !fr.reopened {
			fr.s.unlogged.Delete(fr.id)
			if err := fr.s.settle(fr.id); err != nil {
				fr.s.log.Warn("spool: message left in its slot", "queue_id", fr.id, "err", err) // recovery finds it there
			}
		}
	}
}

// Commit stores env and prefix after the message and makes it durable: write
// the trailer, cut a reused file's longer old content, fsync the file, rename
// it to its ID, fsync the directory (grouped with other commits). When Commit
// returns nil the message survives kill -9 and power loss. On error nothing
// was accepted.
//
// A message written over a free file (a slot) is durable at its file's
// fsync: one flush, not two. Its trailer names the slot and holds the CRC of
// the message bytes, so recovery can tell it from the free file's old
// content when the rename did not reach the disk (recoverSlots); the rename
// becomes durable with the next directory fsync (a finish, a new log), and
// the 250 does not wait for it.
func (d *Draft) Commit(env *Envelope, prefix []byte) (*Fresh, error) {
	if d.err != nil {
		d.Abort()
		return nil, d.err
	}
	if d.done {
		return nil, fmt.Errorf("spool: commit %s: already committed", d.ID)
	}
	start := time.Now()
	s := d.s
	env.ID = d.ID
	if env.Received.IsZero() {
		env.Received = s.now()
	}
	// A message written over a free file a little longer than it pads its
	// trailer to end where the old content did: the file keeps its length,
	// so the fdatasync below writes the data block and not the inode, and
	// the files of a pool converge to the longest usual message.
	minTail := 0
	if t := d.old - d.n - footerSize; t > 0 && t <= maxPaddedTrailer {
		minTail = int(t)
	}
	tail, err := encodeTail(env, prefix, d.n, d.slot, d.crc, minTail) // crc: 0 unless a slot
	if err != nil {
		d.Abort()
		return nil, fmt.Errorf("spool: encode %s: %w", d.ID, err)
	}
	d.w.Write(tail)
	if err := d.w.Flush(); err != nil {
		d.Abort()
		return nil, fmt.Errorf("spool: write %s: %w", d.ID, err)
	}
	size := d.n + int64(len(tail))
	// A reused file's old content beyond the new would hide the footer: the
	// file must end where the message does. A file written over exactly (the
	// common case: messages of about one size) keeps its blocks, and its
	// fsync writes data, not allocation.
	if d.old > size {
		if err := d.f.Truncate(size); err != nil {
			d.Abort()
			return nil, fmt.Errorf("spool: truncate %s: %w", d.ID, err)
		}
	}
	// fdatasync: the bytes and what reading them back needs (a new length,
	// new blocks), not the modification time that fsync would write the
	// inode for. A new file's name is made durable below.
	if err := datasync(d.f); err != nil {
		d.Abort()
		return nil, fmt.Errorf("spool: fsync %s: %w", d.ID, err)
	}
	putWriter(d.w)
	d.w = nil
	// No state log yet: most messages are delivered at the first attempt
	// and never need one. A message in a slot stays there (resident.go):
	// the fsync above made the trailer that names the slot and the message
	// durable with the bytes it checks.
	if d.slot != "" {
		s.fin.replaced(d.slot) // a finished message's bytes it held are gone
	}
	if d.slot != "" && s.nResident.Load() < maxResident {
		s.resident.Store(d.ID, freePrefix+d.slot)
		s.nResident.Add(1)
		d.done = true
	} else {
		final := s.path(d.ID)
		if err := s.fs.Rename(d.path, final); err != nil {
			d.Abort()
			return nil, fmt.Errorf("spool: rename %s: %w", d.ID, err)
		}
		d.done = true
		// A new file's name must be durable before the 250. A slot named
		// at once (maxResident reached) is durable already, by its
		// trailer: recovery finds it in its slot if the rename is lost.
		if d.slot == "" {
			if err := s.syncDir(); err != nil {
				// The rename may or may not survive a crash; the client is
				// told 451 and retries, so a duplicate is possible but
				// nothing is lost. Remove the file so this process does
				// not deliver it too.
				s.fs.Remove(final)
				d.f.Close()
				return nil, fmt.Errorf("spool: fsync spool directory for %s: %w", d.ID, err)
			}
		}
	}
	mCommits.Inc()
	mCommitSecs.Add(time.Since(start).Seconds())
	s.unlogged.Store(d.ID, struct{}{})
	return &Fresh{f: d.f, prefix: prefix, msgLen: d.n, size: size, s: s, id: d.ID}, nil
}

// maxPaddedTrailer bounds Commit's padding: a free file much longer than the
// new message (left by a large one) is cut instead.
const maxPaddedTrailer = 8 << 10

// Abort removes the draft's file; after Commit it does nothing.
func (d *Draft) Abort() {
	if d.done {
		return
	}
	d.done = true
	d.f.Close()
	d.s.fs.Remove(d.path)
	if d.w != nil {
		putWriter(d.w)
		d.w = nil
	}
}

// Draft writers are pooled: a 32 KiB buffer per message is garbage the
// collector would otherwise clear and collect at every accept.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

// getWriter returns a pooled writer to f from its start, through pwrite: a
// reused file needs no seek.
func getWriter(f File) *bufio.Writer {
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(io.NewOffsetWriter(f, 0))
	return w
}

func putWriter(w *bufio.Writer) {
	w.Reset(nil)
	writerPool.Put(w)
}
