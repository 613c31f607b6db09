package spool

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Recover reads the spool back after a start, a crash or a power cut, and
// calls fn for every message still to deliver (its State counts the
// unrecorded first attempt). On the way it removes drafts and probes (never
// acknowledged), orphan state logs, and messages whose recipients all have
// a final outcome; moves unreadable files to Dir/corrupt/; and takes free
// files back into the pool, emptied. Everything it changed is made durable
// before it returns and before a free file is written over.
//
// Recovery reads no message bytes and no DKIM prefix: a recovered Message
// has its envelope and state log, and a nil Prefix (Read or Body have it).
func (s *Spool) Recover(fn func(*Message)) error {
	sn, err := s.Scan()
	if err != nil {
		return err
	}
	return sn.Recover(func(m *Message) bool { fn(m); return true })
}

// newLogs tracks the state logs created while a recovery runs, for the
// messages it has not handed out yet (a control action on a message not
// yet read): the snapshot lists no such log, so Recover reads it when it
// hands the message out. Logs written for messages already handed out (their
// attempts) are not tracked. Before, one log made anywhere sent every later
// read to look for a log beside its message: a failed open per message,
// which on a cold cache reads directory blocks (a million messages
// recovered while the upstream was down took twice as long).
type newLogs struct {
	mu     sync.Mutex
	cursor string          // handed out up to here (IDs sort by age)
	ids    map[string]bool // nil: no recovery runs
}

// start begins tracking (before the snapshot's listing).
func (l *newLogs) start() {
	l.mu.Lock()
	l.cursor, l.ids = "", map[string]bool{}
	l.mu.Unlock()
}

// stop ends tracking (the recovery is over).
func (l *newLogs) stop() {
	l.mu.Lock()
	l.cursor, l.ids = "", nil
	l.mu.Unlock()
}

func (l *newLogs) add(id string) {
	l.mu.Lock()
	if l.ids != nil && id > l.cursor {
		l.ids[id] = true
	}
	l.mu.Unlock()
}

// reached moves the cursor to id, about to be handed out, and says whether
// a log was made for it since the snapshot.
func (l *newLogs) reached(id string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if id > l.cursor {
		l.cursor = id
	}
	made := l.ids[id]
	delete(l.ids, id)
	return made
}

// id16 is a queue ID held as an array: a million of them in a snapshot
// cost 16 MB, not the ~50 MB of strings, slice headers and a set.
type id16 [16]byte

func cmpID(a, b id16) int { return bytes.Compare(a[:], b[:]) }

// Snapshot is the spool's directory listing taken before this process
// wrote anything: what recovery works through. Taking it first lets a
// daemon accept mail while it recovers in the background — every name
// written after the snapshot is this process's own, and not in it.
type Snapshot struct {
	s      *Spool
	ids    []id16              // committed messages, sorted (oldest first)
	logs   []id16              // messages with a state log in the listing, sorted
	other  []string            // drafts, free files, logs, probes, strays
	staged map[string]bool     // names in the import's staging directory
	done   map[string][]string // Dir/finished: each slot's finished IDs
}

// Scan lists the spool for Snapshot.Recover (no file read). The listing is
// read a block of names at a time and kept compact: message IDs as arrays.
func (s *Spool) Scan() (*Snapshot, error) {
	done, err := readFinished(s)
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", s.finishedPath(), err)
	}
	sn := &Snapshot{s: s, staged: map[string]bool{}, done: done}
	s.newLogs.start() // until Snapshot.Recover ends
	err = s.listDir(s.dir, func(names []string) {
		for _, n := range names {
			switch {
			case ValidID(n):
				sn.ids = append(sn.ids, id16([]byte(n)))
			case strings.HasSuffix(n, stateSuffix) && ValidID(strings.TrimSuffix(n, stateSuffix)):
				sn.logs = append(sn.logs, id16([]byte(n)))
				sn.other = append(sn.other, n)
			default:
				sn.other = append(sn.other, n)
			}
		}
	})
	if err != nil {
		s.newLogs.stop()
		return nil, fmt.Errorf("spool: read %s: %w", s.dir, err)
	}
	slices.SortFunc(sn.ids, cmpID)
	slices.SortFunc(sn.logs, cmpID)
	// A log whose message is still staged by an interrupted import is not
	// an orphan: the import moves the log first.
	staged, _ := s.fs.ReadDir(s.stageDir())
	for _, n := range staged {
		sn.staged[n] = true
	}
	return sn, nil
}

// listDir calls fn with the names in dir, a block at a time when the FS
// can (the OS's), else all at once.
func (s *Spool) listDir(dir string, fn func(names []string)) error {
	if w, ok := s.fs.(interface {
		walkDir(dir string, fn func(names []string) error) error
	}); ok {
		return w.walkDir(dir, func(names []string) error { fn(names); return nil })
	}
	names, err := s.fs.ReadDir(dir)
	if err != nil {
		return err
	}
	fn(names)
	return nil
}

// Len is the number of names in the snapshot (messages, logs, free files).
func (sn *Snapshot) Len() int { return len(sn.ids) + len(sn.other) }

func (sn *Snapshot) hasMessage(id string) bool {
	if sn.staged[id] {
		return true
	}
	if len(id) != 16 {
		return false
	}
	_, ok := slices.BinarySearchFunc(sn.ids, id16([]byte(id)), cmpID)
	return ok
}

func (sn *Snapshot) hasLog(id id16) bool {
	_, ok := slices.BinarySearchFunc(sn.logs, id, cmpID)
	return ok
}

// recoverReaders is how many messages recovery reads at once: with the
// page cache cold the disk serves several reads in parallel, warm it is
// CPU (decoding the trailer) that two cores share.
const recoverReaders = 4

// recoverChunk is how many messages the readers read together, and
// recoverAhead how many chunks may be read ahead of the (sequential)
// scheduling of their results: 1,024 messages.
const (
	recoverChunk = 64
	recoverAhead = 16
)

// readChunk is a run of messages the readers read together, each taking
// the next one (next); done is closed when res holds each one's result.
type readChunk struct {
	ids  []id16
	res  []readResult
	next atomic.Int64
	left atomic.Int64 // readers yet to leave the chunk
	done chan struct{}
}

type readResult struct {
	m   *Message
	err error
}

// readAhead reads ids' envelopes and logs with recoverReaders readers and
// returns their chunks in order, each to be waited for (done). The readers
// read a chunk together, message after message, so the reads in flight are
// of neighbouring files (on a cold page cache the disk serves those about
// twice as fast as reads spread over the spool), and go on to the next
// chunk without waiting for the results to be scheduled, up to
// recoverAhead chunks ahead. Closing stop ends it early; the readers are
// done when the returned group's Wait returns.
func readAhead(s *Spool, sn *Snapshot, ids []id16, stop <-chan struct{}) (<-chan *readChunk, *sync.WaitGroup) {
	out := make(chan *readChunk, recoverAhead)
	work := make(chan *readChunk)
	go func() {
		defer close(out)
		defer close(work)
		for start := 0; start < len(ids); start += recoverChunk {
			c := &readChunk{ids: ids[start:min(start+recoverChunk, len(ids))], done: make(chan struct{})}
			c.res = make([]readResult, len(c.ids))
			c.left.Store(recoverReaders)
			select {
			case out <- c:
			case <-stop:
				return
			}
			for range recoverReaders { // each reader joins it
				select {
				case work <- c:
				case <-stop:
					return
				}
			}
		}
	}()
	var readers sync.WaitGroup
	for range recoverReaders {
		readers.Go(func() {
			for c := range work {
				for i := int(c.next.Add(1) - 1); i < len(c.ids); i = int(c.next.Add(1) - 1) {
					m, err := s.readMeta(string(c.ids[i][:]), sn.hasLog(c.ids[i]))
					c.res[i] = readResult{m, err}
				}
				if c.left.Add(-1) == 0 {
					close(c.done)
				}
			}
		})
	}
	return out, &readers
}

// Recover is Spool.Recover over the snapshot; fn returning false stops it
// (the spool is closing): what was done so far is safe, the rest is done at
// the next start. A message that went away meanwhile (deleted by a control
// action) is skipped. fn is called from one goroutine, oldest message first.
func (sn *Snapshot) Recover(fn func(*Message) bool) error {
	s := sn.s
	// Events older than every message recovered and than this recovery
	// apply to nothing any more (pruneEvents).
	oldest := s.now()
	// A million names need not outlive recovery.
	defer func() { sn.ids, sn.logs, sn.other = nil, nil, nil }()
	defer s.newLogs.stop()
	other := sn.recoverSlots(sn.other) // before the orphan logs are told apart
	ids := sn.ids
	var free []string
	for _, name := range other {
		switch {
		case strings.HasPrefix(name, freePrefix):
			free = append(free, name)
		case isTemp(name):
			s.fs.Remove(s.path(name))
			s.log.Info("spool: removed unacknowledged draft", "file", name)
		case strings.HasSuffix(name, stateSuffix):
			if !sn.hasMessage(strings.TrimSuffix(name, stateSuffix)) {
				s.fs.Remove(s.path(name))
			}
		default:
			s.moveCorrupt(name, errNotID)
		}
	}
	stop := make(chan struct{})
	chunks, readers := readAhead(s, sn, ids, stop)
	defer readers.Wait() // after close(stop): a reader ends with its chunk
	defer close(stop)
	for c := range chunks {
		<-c.done
		for i, id := range c.ids {
			name := string(id[:])
			m, err := c.res[i].m, c.res[i].err
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if errors.Is(err, ErrCorrupt) {
				s.moveCorrupt(name, err)
				if sn.hasLog(id) {
					s.moveCorrupt(name+stateSuffix, errors.New("state of a corrupt message"))
				}
				continue
			}
			if err != nil {
				return err
			}
			// The events as they are now (Recover's caller may flush
			// while the readers work ahead).
			if m.events, err = s.Events(); err != nil {
				return err
			}
			if s.newLogs.reached(name) {
				log, err := readAll(s.fs, s.path(name+stateSuffix))
				if err != nil {
					return fmt.Errorf("spool: read state of %s: %w", name, err)
				}
				m.Records, m.HasLog = parseRecords(log), log != nil
			}
			st := m.State()
			pending := 0
			for _, to := range m.Env.To {
				if st.RcptState(to) == StatePending {
					pending++
				}
			}
			if pending == 0 { // finished before the crash; its removal was not yet durable
				fname, err := s.unlink(name)
				if err != nil {
					return err
				}
				s.fs.Remove(s.path(name + stateSuffix))
				if fname != "" {
					free = append(free, fname)
				}
				continue
			}
			if m.Env.Received.Before(oldest) {
				oldest = m.Env.Received
			}
			if !fn(m) {
				return nil
			}
		}
	}
	// One directory fsync covers every removal and rename above, and the
	// free names found: after a kill -9 a free name may still be only in
	// the page cache, and writing over the file before it is durable could
	// bring the finished message's name back over new bytes.
	if err := s.syncDir(); err != nil {
		return fmt.Errorf("spool: fsync spool directory: %w", err)
	}
	for _, name := range free {
		s.recycle(name, nil, nil)
	}
	// Every slot the finished log names was emptied above or holds a
	// message committed since: the first rotation makes that durable.
	s.fin.adopt(sn.done)
	if err := s.recoverStaged(); err != nil {
		return fmt.Errorf("spool: fsync %s: %w", s.stageDir(), err)
	}
	if len(sn.staged) == 0 { // an import's messages keep theirs
		if err := s.pruneEvents(oldest); err != nil {
			s.log.Warn("spool: cannot drop old events", "err", err)
		}
	}
	return nil
}

// readMeta reads what recovery needs of a committed message: the envelope
// from its trailer (the DKIM prefix is skipped, the message bytes are not
// touched) and, when the snapshot listed one, its state log.
func (s *Spool) readMeta(id string, hasLog bool) (*Message, error) {
	p := s.residentPath(id)
	if p == "" {
		p = s.path(id)
	}
	env, msgLen, prefixLen, err := s.readEnvelopeOf(p)
	if p != s.path(id) && (err != nil || env.ID != id) {
		// It left its slot since it was looked up (named, or finished and
		// the slot written over): under its name, or gone.
		env, msgLen, prefixLen, err = s.readEnvelopeOf(s.path(id))
	}
	if errors.Is(err, os.ErrNotExist) {
		if s.flush == nil && s.view.scan(s) {
			return s.readMeta(id, hasLog) // a View that had not met it: once more after a scan
		}
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", id, err)
	}
	// The name must be the message's: a file written over (a slot) holds
	// another ID's trailer until its new content is there.
	if env.ID != id { // (a message in place: its trailer's ID is id)
		return nil, fmt.Errorf("spool: read %s: %w: its trailer is message %s's", id, ErrCorrupt, env.ID)
	}
	var log []byte
	if hasLog {
		if log, err = readAll(s.fs, s.path(id+stateSuffix)); err != nil {
			return nil, fmt.Errorf("spool: read state of %s: %w", id, err)
		}
	}
	return &Message{ID: id, Env: env, MsgLen: msgLen, prefixLen: prefixLen, Records: parseRecords(log), HasLog: log != nil}, nil
}

// readEnvelopeOf reads the envelope of the message file at path: through a
// bare descriptor on the real file system (readEnvelopeFD).
func (s *Spool) readEnvelopeOf(path string) (*Envelope, int64, int, error) {
	if _, ok := s.fs.(osFS); ok {
		return readEnvelopeFD(path)
	}
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return nil, 0, 0, err
	}
	defer f.Close()
	return readEnvelope(f)
}

// recoverSlots finds the messages committed into a free file and left there
// (in place, resident.go; or a crash lost their rename): a free file is
// such a message when its trailer is valid, names this very free file as
// its slot, the CRC it holds matches the message bytes (a crash during the
// commit's fsync can leave the trailer on disk over old or missing bytes:
// never acknowledged, and so not a message), and the finished log does not
// list it. Each is renamed to its ID and joins the snapshot; the other
// names are returned. A free file's other old content cannot pass: its
// trailer names another slot or is zeros, and a slot ID is unknown to
// whoever sent the bytes. At most the pool's 512 files and 1,024 messages
// in place are read, each whole.
func (sn *Snapshot) recoverSlots(other []string) []string {
	s := sn.s
	rest := other[:0]
	added := false
	for _, name := range other {
		id := sn.slotMessage(name)
		if id == "" {
			rest = append(rest, name)
			continue
		}
		if err := s.fs.Rename(s.path(name), s.path(id)); err != nil {
			s.log.Error("spool: cannot rename a message found in a free file", "file", name, "queue_id", id, "err", err)
			continue // left as it is: the next start tries again
		}
		s.log.Info("spool: message committed into a free file recovered under its ID", "file", name, "queue_id", id)
		sn.ids = append(sn.ids, id16([]byte(id)))
		added = true
	}
	if added {
		slices.SortFunc(sn.ids, cmpID)
	}
	return rest
}

// slotMessage returns the ID of the message committed into the free file
// name (see recoverSlots), or "".
func (sn *Snapshot) slotMessage(name string) string {
	s := sn.s
	slot, ok := strings.CutPrefix(name, freePrefix)
	if !ok || !ValidID(slot) {
		return ""
	}
	f, err := s.fs.OpenFile(s.path(name), os.O_RDONLY, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	tr, msgLen, err := readTrailer(f)
	if err != nil || tr.Slot != slot || !ValidID(tr.Env.ID) || tr.Env.ID == slot || sn.hasMessage(tr.Env.ID) || slices.Contains(sn.done[slot], tr.Env.ID) {
		return "" // not a message; or one whose Finish recorded it (resident.go)
	}
	h := crc32.New(castagnoli)
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, msgLen)); err != nil || h.Sum32() != tr.CRC {
		return ""
	}
	// After a kill -9 the bytes may be only in the page cache (the kill
	// came before the commit's fsync): durable before the name says so.
	if err := f.Sync(); err != nil {
		return ""
	}
	return tr.Env.ID
}

// AdoptSlots renames, durably, the messages a serving process left in their
// slots (a crash, resident.go) to their IDs, in a spool no process serves
// or recovers: `sluice queue` acting on the files, or Import's source.
func (s *Spool) AdoptSlots() error { return s.adoptSlots() }

func (s *Spool) adoptSlots() error {
	names, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", s.dir, err)
	}
	done, err := readFinished(s)
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", s.finishedPath(), err)
	}
	sn := &Snapshot{s: s, staged: map[string]bool{}, done: done}
	var free []string
	for _, n := range names {
		switch {
		case ValidID(n):
			sn.ids = append(sn.ids, id16([]byte(n)))
		case strings.HasPrefix(n, freePrefix):
			free = append(free, n)
		}
	}
	slices.SortFunc(sn.ids, cmpID)
	if rest := sn.recoverSlots(free); len(rest) == len(free) {
		return nil
	}
	if err := syncDir(s.fs, s.dir); err != nil {
		return fmt.Errorf("spool: fsync %s: %w", s.dir, err)
	}
	return nil
}
