package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Messages committed in place.
//
// A message written over a free file (a slot) stays under the slot's name
// after Commit: no rename. On this machine kind's ext4 (no journal) every
// rename marks the file new in its directory, and the file's next fsync then
// writes the directory too: the rename to its ID at commit and the one back
// to a free name at Finish cost a directory write in nearly every commit's
// fsync: 4.7 disk writes per Ed25519 message, 4.0 in place, and 16% more
// messages a second (docs/performance.md). The trailer names the slot and
// the message's ID, so a message in place is found by reading it
// (recoverSlots; a View's residents).
//
// Most messages are delivered at their first attempt and never get a name.
// One that needs a state log (deferred, held, …) or will wait (its Fresh
// closed) is renamed to its ID first (settle); from then on it is like any
// other.
//
// Finishing a message in place cannot rename it free: its slot's name must
// not change. Its ID and slot are appended instead to Dir/finished, fsync'd
// with every other Finish waiting at that moment (one flush for many), and
// the slot is then zeroed and pooled under the same name. Recovery takes a
// slot whose trailer's ID is in that log for free. A line is needed only
// until the slot's old content is gone for good: written over by a later
// Commit (its fsync), or emptied and fsync'd; the log is rewritten without
// such lines once it holds finishedRotate of them (rotateFinished).

const finishedName = "finished"

// maxResident bounds the messages in place: beyond it a commit into a slot
// renames the message to its ID as before. Recovery after a crash reads and
// fsyncs every message it finds in a slot; a backlog that takes slot after
// slot from the pool must not turn that into thousands.
var maxResident int64 = 1024 // a variable: a test lowers it

// finishedChunk is how far ahead the finished log is allocated: its lines
// are written over zeros already on disk, so the fdatasync that makes them
// durable writes the data block alone, not the inode as an append's would
// (its length). A line is 34 bytes: one allocation per 1,900 lines.
const finishedChunk = 64 << 10

// finishedRotate is how many lines the finished log holds before it is
// rewritten (a variable: the power-loss test rewrites it at every line).
var finishedRotate = 4096

func (s *Spool) finishedPath() string { return filepath.Join(s.root, finishedName) }

// finishedLog is Dir/finished with its group commit.
type finishedLog struct {
	mu       sync.Mutex
	cond     sync.Cond // on mu: a sync ended
	f        File      // opened at the first append
	off      int64     // where the next line goes
	size     int64     // the file's length: lines, then zeros
	lines    int       // lines in the file
	seq      uint64    // lines appended by this process
	synced   uint64    // seq covered by an fsync
	syncing  bool      // an fsync (or a rotation) runs
	rotating bool
	// live maps each slot named in the file to the ID it finished, while
	// the slot may still hold that message's bytes on disk; emptied marks
	// the slots whose bytes are gone from the page cache (zeroed, emptied
	// or removed), which an fsync of the slot then makes durable.
	live    map[string]string
	emptied map[string]bool
}

// residentPath returns the slot file a message of this process is committed
// in, or "" when it has its own name; for a View, the slot its walk (or a
// scan) found the message in.
func (s *Spool) residentPath(id string) string {
	if s.flush == nil {
		if name := s.view.lookup(id); name != "" {
			return s.path(name)
		}
		return ""
	}
	if v, ok := s.resident.Load(id); ok {
		return s.path(v.(string))
	}
	return ""
}

// openMsg opens message id's file: its slot while it is in place, else its
// own name. One that left its slot since it was looked up (named, or
// finished and the slot written over) is looked for under its name.
func (s *Spool) openMsg(id string, flag int) (File, error) {
	if p := s.residentPath(id); p != "" {
		if f, err := s.fs.OpenFile(p, flag, 0); err == nil {
			if tr, _, err := readTrailer(f); err == nil && tr.Env.ID == id {
				return f, nil
			}
			f.Close()
		}
	}
	f, err := s.fs.OpenFile(s.path(id), flag, 0)
	if errors.Is(err, fs.ErrNotExist) && s.flush == nil && s.view.scan(s) {
		return s.openMsg(id, flag) // a View that had not met it: once more after a scan
	}
	return f, err
}

// settle gives a message in place its own name (before its state log is
// made): durable with the next directory fsync. A crash before that leaves
// it in its slot, where recovery finds it.
func (s *Spool) settle(id string) error {
	v, ok := s.resident.Load(id)
	if !ok {
		return nil
	}
	if err := s.fs.Rename(s.path(v.(string)), s.path(id)); err != nil {
		return fmt.Errorf("spool: name %s: %w", id, err)
	}
	if _, ok := s.resident.LoadAndDelete(id); ok {
		s.nResident.Add(-1)
	}
	return nil
}

// finishResident is Finish for a message in place (name is its slot).
func (s *Spool) finishResident(id, name string, f File, size int64) error {
	slot := strings.TrimPrefix(name, freePrefix)
	seq, err := s.fin.append(s, slot, id)
	if err == nil {
		err = s.fin.syncTo(s, seq)
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return fmt.Errorf("spool: record %s finished: %w", id, err)
	}
	if _, ok := s.resident.LoadAndDelete(id); ok {
		s.nResident.Add(-1)
	}
	if _, none := s.unlogged.LoadAndDelete(id); !none {
		s.fs.Remove(s.path(id + stateSuffix)) // as finish: whatever a crash may have left
	}
	s.recycleKeep(name, f, size, func() { s.fin.markEmptied(slot) })
	if s.fin.due() {
		if err := s.rotateFinished(); err != nil {
			s.log.Warn("spool: cannot rewrite the finished log", "err", err)
		}
	}
	return nil
}

// append writes "slot id" to the log, creating it (and making its name
// durable) at the first line, and returns the line's sequence number.
func (l *finishedLog) append(s *Spool, slot, id string) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		if err := l.open(s); err != nil {
			return 0, err
		}
	}
	line := []byte(slot + " " + id + "\n")
	if l.off+int64(len(line)) > l.size {
		// Allocated with zeros, fsync'd: the only inode write in a chunk.
		if _, err := l.f.WriteAt(zeros[:finishedChunk], l.size); err != nil {
			return 0, err
		}
		if err := l.f.Sync(); err != nil {
			return 0, err
		}
		l.size += finishedChunk
	}
	if _, err := l.f.WriteAt(line, l.off); err != nil {
		return 0, err
	}
	l.off += int64(len(line))
	l.lines++
	l.seq++
	if l.live == nil {
		l.live, l.emptied = map[string]string{}, map[string]bool{}
	}
	l.live[slot] = id
	delete(l.emptied, slot)
	return l.seq, nil
}

// open opens the log, or creates it (its name made durable), and finds its
// end: after its last line, or after a line a crash cut short.
func (l *finishedLog) open(s *Spool) error {
	b, err := readAll(s.fs, s.finishedPath())
	if err != nil {
		return err
	}
	f, err := s.fs.OpenFile(s.finishedPath(), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	if b == nil {
		if err := syncDir(s.fs, s.root); err != nil {
			f.Close()
			return err
		}
	}
	end := bytes.LastIndexFunc(b, func(r rune) bool { return r != 0 }) + 1
	if end > 0 && b[end-1] != '\n' {
		if _, err := f.WriteAt([]byte("\n"), int64(end)); err != nil {
			f.Close()
			return err
		}
		end++
	}
	l.f, l.off, l.size = f, int64(end), int64(len(b))
	return nil
}

// close syncs and closes the log (the spool closes): a Finish waiting for
// the sync returns, and one after it opens the log again.
func (l *finishedLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.syncing {
		l.cond.Wait()
	}
	if l.f == nil {
		return
	}
	if datasync(l.f) == nil {
		l.synced = l.seq
	}
	l.f.Close()
	l.f = nil
	l.cond.Broadcast()
}

// syncTo returns once an fsync that began after line seq was written has
// ended: the first caller to find none running makes one for all waiting.
func (l *finishedLog) syncTo(s *Spool, seq uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.synced < seq {
		if l.syncing {
			l.cond.Wait()
			continue
		}
		if l.f == nil { // closed since (close synced what it could): open again
			if err := l.open(s); err != nil {
				return err
			}
		}
		l.syncing = true
		target, f := l.seq, l.f
		l.mu.Unlock()
		err := datasync(f)
		l.mu.Lock()
		l.syncing = false
		l.cond.Broadcast()
		if err != nil {
			return err
		}
		l.synced = max(l.synced, target)
	}
	return nil
}

// markEmptied notes that slot's old bytes are gone from the page cache.
func (l *finishedLog) markEmptied(slot string) {
	l.mu.Lock()
	if _, ok := l.live[slot]; ok {
		l.emptied[slot] = true
	}
	l.mu.Unlock()
}

// replaced notes that a Commit's fsync wrote over slot: its line is moot.
func (l *finishedLog) replaced(slot string) {
	l.mu.Lock()
	delete(l.live, slot)
	delete(l.emptied, slot)
	l.mu.Unlock()
}

// due says whether the log holds enough lines to be rewritten.
func (l *finishedLog) due() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lines >= finishedRotate && !l.rotating
}

// rotateFinished rewrites the log with only the lines still needed: the
// emptied slots are fsync'd first (outside the lock: Finish goes on), then
// the lines of the slots a Commit replaced or that were fsync'd empty are
// left out of a new file that replaces the old one atomically (temporary
// file, fsync, rename, directory fsync).
func (s *Spool) rotateFinished() error {
	l := &s.fin
	l.mu.Lock()
	if l.rotating {
		l.mu.Unlock()
		return nil
	}
	l.rotating = true
	empty := map[string]string{}
	for slot := range l.emptied {
		empty[slot] = l.live[slot]
	}
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.rotating = false
		l.cond.Broadcast()
		l.mu.Unlock()
	}()
	gone := false
	for slot := range empty {
		f, err := s.fs.OpenFile(s.path(freePrefix+slot), os.O_RDONLY, 0)
		if errors.Is(err, fs.ErrNotExist) {
			gone = true // removed from the pool: the directory fsync below
			continue
		}
		if err == nil {
			err = f.Sync()
			f.Close()
		}
		if err != nil {
			return err
		}
	}
	if gone {
		if err := s.syncDir(); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.syncing {
		l.cond.Wait()
	}
	for slot, id := range empty {
		if l.live[slot] == id && l.emptied[slot] {
			delete(l.live, slot)
			delete(l.emptied, slot)
		}
	}
	var b bytes.Buffer
	for slot, id := range l.live {
		b.WriteString(slot + " " + id + "\n")
	}
	off := int64(b.Len())
	b.Write(zeros[:finishedChunk-b.Len()%finishedChunk])
	if err := replaceFile(s.fs, s.root, s.finishedPath(), b.Bytes()); err != nil {
		return err
	}
	nf, err := s.fs.OpenFile(s.finishedPath(), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if l.f != nil {
		l.f.Close()
	}
	l.f, l.off, l.size, l.lines, l.synced = nf, off, int64(b.Len()), len(l.live), l.seq
	return nil
}

// readFinished reads Dir/finished: each slot's finished IDs.
func readFinished(s *Spool) (map[string][]string, error) {
	b, err := readAll(s.fs, s.finishedPath())
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for line := range bytes.Lines(b) { // zeros after the lines: not lines
		slot, id, ok := strings.Cut(strings.TrimSpace(string(bytes.Trim(line, "\x00"))), " ")
		if ok && ValidID(slot) && ValidID(id) {
			out[slot] = append(out[slot], id)
		}
	}
	return out, nil
}

// adopt takes the log's lines over after recovery, which emptied
// every slot they name (not yet durably): the first rotation fsyncs them.
func (l *finishedLog) adopt(done map[string][]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.live == nil {
		l.live, l.emptied = map[string]string{}, map[string]bool{}
	}
	for slot, ids := range done {
		l.live[slot] = ids[len(ids)-1]
		l.emptied[slot] = true
		l.lines += len(ids)
	}
}

// residents returns the IDs of this process's messages in place.
func (s *Spool) residents() []string {
	var ids []string
	s.resident.Range(func(k, _ any) bool {
		ids = append(ids, k.(string))
		return true
	})
	return ids
}

// viewResidents is what a View knows of the messages a serving process
// committed in place: found as its walk meets their slots (a listing reads
// every free file's trailer anyway), or by one scan of the directory when a
// read by ID misses (`queue show`). Only free names are kept, never the
// directory: a listing of a million needs no more memory than of ten. The
// bytes' CRC is not checked: a listing while serve runs sees a commit whose
// fsync has not ended as queued, as it would see its file.
type viewResidents struct {
	mu      sync.Mutex
	byID    map[string]string   // message ID → its slot's file name
	done    map[string][]string // Dir/finished, read once
	loaded  bool
	scanned bool
}

func (v *viewResidents) lookup(id string) string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.byID[id]
}

// found reads free file name's trailer and returns the ID of the message in
// place in it, or "".
func (v *viewResidents) found(s *Spool, name string) string {
	slot, ok := strings.CutPrefix(name, freePrefix)
	if !ok || !ValidID(slot) {
		return ""
	}
	v.mu.Lock()
	if !v.loaded {
		v.done, _ = readFinished(s)
		v.loaded = true
	}
	done := v.done
	v.mu.Unlock()
	id := residentID(s, name, slot, done)
	if id != "" {
		v.mu.Lock()
		if v.byID == nil {
			v.byID = map[string]string{}
		}
		v.byID[id] = name
		v.mu.Unlock()
	}
	return id
}

// scan walks the directory once for messages in place; false when it was
// scanned already (nothing new to find).
func (v *viewResidents) scan(s *Spool) bool {
	v.mu.Lock()
	if v.scanned {
		v.mu.Unlock()
		return false
	}
	v.scanned = true
	v.mu.Unlock()
	s.listDir(s.dir, func(names []string) {
		for _, n := range names {
			if strings.HasPrefix(n, freePrefix) {
				v.found(s, n)
			}
		}
	})
	return true
}

// residentID reads the trailer of free file name and returns the ID of the
// message committed in it, or "": it must name this slot, and not be one
// the finished log lists for it.
func residentID(s *Spool, name, slot string, done map[string][]string) string {
	f, err := s.fs.OpenFile(s.path(name), os.O_RDONLY, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() == 0 {
		return ""
	}
	tr, _, err := readTrailer(f)
	if err != nil || tr.Slot != slot || !ValidID(tr.Env.ID) || tr.Env.ID == slot {
		return ""
	}
	for _, id := range done[slot] {
		if id == tr.Env.ID {
			return ""
		}
	}
	return tr.Env.ID
}
