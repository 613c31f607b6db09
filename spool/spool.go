// Package spool is the durable file protocol under the queue: a message is
// streamed into a Draft, and Commit makes it durable (file fsync, rename,
// directory fsync grouped with other commits) before the relay answers 250.
// Each delivery attempt is recorded in the message's state log before it is
// made (Attempt; one exception, documented there), Finish removes a message
// for good, and Recover reads the spool back after a crash or power loss.
// Every file operation goes through FS, so the protocol is tested against a
// simulated disk cut at every step (powerloss_test.go). The queue schedules;
// this package alone knows the file format (docs/queue.md).
package spool

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicemail/sluice/internal/metrics"
)

var (
	mCommits    = metrics.Default.NewCounter("sluice_spool_commits_total", "Messages made durable in the spool.")
	mCommitSecs = metrics.Default.NewCounter("sluice_spool_commit_seconds_total", "Time spent in spool commits (write tail, fsync, rename, dir fsync).")
	mDirSyncs   = metrics.Default.NewCounter("sluice_spool_dir_syncs_total", "Directory fsyncs; commits/dir_syncs is the group-commit batch size.")
)

// Options configure a Spool.
type Options struct {
	FS     FS // nil: OS
	Logger *slog.Logger
	Now    func() time.Time
	// MaxFree bounds the finished files kept (empty) for reuse; 0: 512.
	MaxFree int
}

// Spool is an open spool directory: Dir/msg holds messages, their state logs
// and drafts; Dir/corrupt holds files recovery could not read; Dir/import
// stages messages adopted from another spool (Import).
type Spool struct {
	fs      FS
	root    string
	dir     string // root/msg
	corrupt string // root/corrupt
	log     *slog.Logger
	now     func() time.Time
	flush   *dirSyncer // nil for a View
	free    freePool
	// newLogs holds the state logs created while a recovery reads (a
	// control action on a message not yet recovered writes one its
	// snapshot lacks), for the messages it has not reached yet.
	newLogs newLogs
	// unlogged holds the IDs of messages committed by this process that
	// have no state log: no Record for them yet, and their Fresh still
	// open. Finish skips the remove of a log that is not there (0.6% of the
	// CPU per message, issue 14); any Record drops the ID first.
	unlogged sync.Map
	ev       events // Dir/events (events.go)
	// nameUnsynced holds the IDs whose state log was created by a record
	// written without sync, so its name may not be durable yet.
	nameUnsynced sync.Map
	// resident maps the messages committed in place by this process to
	// their slot's file name (resident.go); fin is Dir/finished.
	resident  sync.Map
	nResident atomic.Int64
	fin       finishedLog
	// A View's messages in place, found as its walk meets their slots or
	// by one scan of the directory when a read misses (resident.go).
	view viewResidents
}

// Open prepares the spool directories under dir and starts the group
// committer; call Recover before writing. Close stops it.
func Open(dir string, o Options) (*Spool, error) {
	s := View(dir, o)
	for _, d := range []string{s.root, s.dir, s.corrupt} {
		if err := s.fs.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("spool: create %s: %w", d, err)
		}
	}
	s.flush = newDirSyncer(s.fs, s.dir)
	return s, nil
}

// View returns a spool for reading (Scan, Read, Body) and for the occasional
// write of a process that does not serve it (each directory fsync on its
// own); it creates nothing and starts nothing.
func View(dir string, o Options) *Spool {
	if o.FS == nil {
		o.FS = OS
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxFree <= 0 {
		o.MaxFree = 512
	}
	s := &Spool{
		fs: o.FS, root: dir, dir: filepath.Join(dir, "msg"), corrupt: filepath.Join(dir, "corrupt"),
		log: o.Logger, now: o.Now, free: freePool{max: o.MaxFree},
	}
	s.fin.cond.L = &s.fin.mu
	return s
}

// Close stops the group committer and closes the free files' descriptors.
func (s *Spool) Close() {
	if s.flush != nil {
		s.flush.stop()
	}
	s.free.closeAll()
	s.fin.close()
}

// Dir is the directory the messages are in (for statfs).
func (s *Spool) Dir() string { return s.dir }

func (s *Spool) path(name string) string { return s.dir + string(os.PathSeparator) + name }

// syncDir makes every rename, creation and removal in the message directory
// so far durable: through the group committer, or on its own for a View.
func (s *Spool) syncDir() error {
	if s.flush != nil {
		return s.flush.sync()
	}
	return syncDir(s.fs, s.dir)
}

// Probe writes, fsyncs and removes a small file: whether a message could be
// spooled now (for /readyz). Recover removes a probe left by a crash.
func (s *Spool) Probe() error {
	name := s.path(probePrefix + NewID(s.now()))
	f, err := s.fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("spool: not writable: %w", err)
	}
	_, err = f.Write([]byte("ok"))
	if err == nil {
		err = f.Sync()
	}
	f.Close()
	s.fs.Remove(name)
	if err != nil {
		return fmt.Errorf("spool: not writable: %w", err)
	}
	return nil
}

// Message is a committed message read back from its file and state log.
type Message struct {
	ID      string
	Env     *Envelope
	Prefix  []byte // DKIM-Signature fields, sent before the message bytes
	MsgLen  int64  // the message bytes after the prefix
	Records []Record
	HasLog  bool     // a state log exists
	events  []Record // the spool-wide events (events.go)
	// prefixLen is the prefix's length when it was not read (recovery,
	// ReadEnvelope).
	prefixLen int
}

// Size is what delivery sends: prefix and message.
func (m *Message) Size() int64 { return int64(max(len(m.Prefix), m.prefixLen)) + m.MsgLen }

// State folds the message's log. A message without an attempt record counts
// as attempted once: its first attempt is not recorded in advance (Attempt).
func (m *Message) State() State {
	st := m.Recorded()
	st.Attempts = max(st.Attempts, 1)
	return st
}

// Recorded folds the message's log and the spool-wide events after its
// reception, attempts as recorded: 0 before a recorded one (for listings).
func (m *Message) Recorded() State { return foldEvents(m.Records, m.events, m.Env.Received) }

// IDs returns the committed messages' IDs, sorted (oldest first).
func (s *Spool) IDs() ([]string, error) {
	names, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", s.dir, err)
	}
	var ids []string
	s.walkNames(names, func(id string) error { ids = append(ids, id); return nil })
	if s.flush != nil {
		ids = append(ids, s.residents()...)
	}
	slices.Sort(ids)
	return ids, nil
}

// Walk calls fn with each committed message's ID in directory order, reading
// the directory a block of names at a time, so a million queued messages
// cost no more memory than ten (for `queue list` while serve runs). An
// error from fn stops the walk and is returned.
func (s *Spool) Walk(fn func(id string) error) error {
	w, ok := s.fs.(interface {
		walkDir(dir string, fn func(names []string) error) error
	})
	if s.flush == nil {
		// The walk meets every slot itself: a read that misses during it
		// is a message gone, not one to scan the directory for again.
		s.view.mu.Lock()
		s.view.scanned = true
		s.view.mu.Unlock()
	}
	var err error
	if !ok { // another FS: one listing
		names, rerr := s.fs.ReadDir(s.dir)
		if rerr != nil {
			return fmt.Errorf("spool: read %s: %w", s.dir, rerr)
		}
		err = s.walkNames(names, fn)
	} else {
		err = w.walkDir(s.dir, func(names []string) error { return s.walkNames(names, fn) })
	}
	if err != nil || s.flush == nil {
		return err
	}
	for _, id := range s.residents() { // this process's, in memory
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

// walkNames calls fn with the message IDs among names; a View also reads
// the free files among them for messages in place (resident.go).
func (s *Spool) walkNames(names []string, fn func(string) error) error {
	for _, n := range names {
		id := n
		if !ValidID(n) {
			if s.flush != nil || !strings.HasPrefix(n, freePrefix) {
				continue
			}
			if id = s.view.found(s, n); id == "" {
				continue
			}
		}
		if err := fn(id); err != nil {
			return err
		}
	}
	return nil
}

// Read reads a committed message's envelope, prefix and state log; the
// error wraps os.ErrNotExist when it is not (or no longer) in the spool.
func (s *Spool) Read(id string) (*Message, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("spool: %q is not a queue ID: %w", id, os.ErrNotExist)
	}
	f, err := s.openMsg(id, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return s.readOpen(id, f)
}

func (s *Spool) readOpen(id string, f File) (*Message, error) {
	tr, msgLen, err := readTrailer(f)
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", id, err)
	}
	log, err := readAll(s.fs, s.path(id+stateSuffix))
	if err != nil {
		return nil, fmt.Errorf("spool: read state of %s: %w", id, err)
	}
	evs, err := s.Events()
	if err != nil {
		return nil, err
	}
	return &Message{ID: id, Env: tr.Env, Prefix: tr.Prefix, MsgLen: msgLen, Records: parseRecords(log), HasLog: log != nil, events: evs}, nil
}

// ReadEnvelope is Read without the DKIM prefix (Size still counts it), for
// listings: the prefix is neither decoded nor kept, and on the real file
// system the file is read through a bare descriptor (as recovery reads).
func (s *Spool) ReadEnvelope(id string) (*Message, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("spool: %q is not a queue ID: %w", id, os.ErrNotExist)
	}
	m, err := s.readMeta(id, true)
	if err != nil {
		return nil, err
	}
	if m.events, err = s.Events(); err != nil {
		return nil, err
	}
	return m, nil
}

// Body opens a committed message's prefix and bytes for reading.
func (s *Spool) Body(id string) (io.ReadCloser, int64, error) {
	f, err := s.openMsg(id, os.O_RDONLY)
	if err != nil {
		return nil, 0, err
	}
	tr, msgLen, err := readTrailer(f)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("spool: read %s: %w", id, err)
	}
	return struct {
		io.Reader
		io.Closer
	}{body(tr.Prefix, f, msgLen), f}, int64(len(tr.Prefix)) + msgLen, nil
}

// Record appends recs to the message's state log; with sync the log (and,
// when it was just created, the directory) is fsync'd before Record returns.
// Records for attempts go through Attempt, which always syncs.
func (s *Spool) Record(id string, sync bool, recs ...Record) error {
	if err := s.settle(id); err != nil { // a log's message has its own name
		return err
	}
	s.unlogged.Delete(id) // before the log can exist
	b, err := encodeRecords(recs)
	if err != nil {
		return fmt.Errorf("spool: encode state of %s: %w", id, err)
	}
	// An empty log was (most likely) just created: its name needs the
	// directory fsync too. Rarely, it is one whose first append failed;
	// syncing the directory again costs nothing else.
	created, err := appendFile(s.fs, s.path(id+stateSuffix), b, sync)
	if created {
		s.newLogs.add(id) // recovery may meet a log its snapshot lacks
	}
	// A log created by a record not synced (a retry) has a name no
	// directory fsync covered yet: the first synced record pays for it.
	if created && !sync {
		s.nameUnsynced.Store(id, true)
	} else if sync {
		if _, ok := s.nameUnsynced.LoadAndDelete(id); ok {
			created = true
		}
	}
	if err != nil {
		return fmt.Errorf("spool: state of %s: %w", id, err)
	}
	if sync && created {
		if err := s.syncDir(); err != nil {
			return fmt.Errorf("spool: fsync spool directory for %s: %w", id, err)
		}
	}
	return nil
}

// Finish removes a message whose recipients all have a final outcome (or
// that the administrator deleted): when Finish returns nil its removal is
// durable, so the message never comes back. fresh is its Commit's result
// while the message was never attempted, else nil. The file becomes a free
// file or, above the pool's bound, is unlinked.
func (s *Spool) Finish(id string, fresh *Fresh) error {
	var f File
	size := int64(-1)
	if fresh != nil {
		f, fresh.f, size = fresh.f, nil, fresh.size
	}
	return s.finish(id, f, size)
}

// finish removes id; size is its file's length when known, else -1.
func (s *Spool) finish(id string, f File, size int64) error {
	if v, ok := s.resident.Load(id); ok {
		return s.finishResident(id, v.(string), f, size)
	}
	name, err := s.unlink(id)
	if err != nil {
		if f != nil {
			f.Close()
		}
		return err
	}
	// The rename (or unlink) is made durable before the file is emptied or
	// reused: otherwise a power cut could bring the message's name back
	// over missing or new bytes.
	if err := s.syncDir(); err != nil {
		if f != nil {
			f.Close()
		}
		return fmt.Errorf("spool: fsync spool directory for %s: %w", id, err)
	}
	s.nameUnsynced.Delete(id)
	if _, none := s.unlogged.LoadAndDelete(id); !none {
		s.fs.Remove(s.path(id + stateSuffix)) // an orphan log left by a crash is removed at recovery
	}
	s.recycleKeep(name, f, size, nil)
	return nil
}

// unlink takes a message's name away: renamed to a free name while the pool
// has room, else removed ("" name). Not yet durable.
func (s *Spool) unlink(id string) (string, error) {
	if s.free.room() {
		name := freePrefix + id
		if err := s.fs.Rename(s.path(id), s.path(name)); err != nil {
			return "", fmt.Errorf("spool: free %s: %w", id, err)
		}
		return name, nil
	}
	if err := s.fs.Remove(s.path(id)); err != nil {
		return "", fmt.Errorf("spool: remove %s: %w", id, err)
	}
	return "", nil
}

// keepBlocks is the largest free file pooled with its blocks: the next draft
// writes over them instead of allocating new ones. A file emptied
// (ftruncate) and written again cost about three times the CPU of one
// written over in place, fsync included (149 against 51 µs for 2.6 KB on
// this machine kind's ext4), and three times the fsync latency. Larger files,
// and any beyond maxKept bytes in the pool, are emptied.
const (
	keepBlocks = 64 << 10
	maxKept    = 8 << 20
)

// zeros is what a kept free file's content is overwritten with.
var zeros [keepBlocks]byte

// recycleKeep pools the free file name (its rename durable) with its blocks
// when its size is known, at most keepBlocks, and the pool keeps less than
// maxKept; else it empties it (recycle). A kept file's content is overwritten
// with zeros first, so a delivered message does not outlive its delivery in
// the file (10 µs of CPU against the truncation's 90). The zeros are not
// fsync'd: the next draft writes over them, and a free file is emptied at
// recovery anyway. emptied, when set, is called once the old content is
// gone (zeroed, emptied or removed), before the file can be reused.
func (s *Spool) recycleKeep(name string, f File, size int64, emptied func()) {
	if name != "" && f != nil && size >= 0 && size <= keepBlocks && s.free.reserve(size) {
		_, err := f.WriteAt(zeros[:size], 0)
		if err == nil {
			if emptied != nil {
				emptied()
				emptied = nil // recycle below must not say it twice
			}
			if s.free.put(freeFile{name: name, f: f, size: size}) {
				return
			}
		}
		s.free.release(size)
	}
	s.recycle(name, f, emptied)
}

// recycle empties the free file name (its rename durable) and pools it with
// its descriptor f, if any; a file that cannot be emptied or pooled goes.
func (s *Spool) recycle(name string, f File, emptied func()) {
	if name == "" {
		if f != nil {
			f.Close()
		}
		return
	}
	var err error
	if f == nil {
		f, err = s.fs.OpenFile(s.path(name), os.O_RDWR, 0)
	}
	if err == nil {
		err = f.Truncate(0)
	}
	if err == nil {
		if emptied != nil {
			emptied()
			emptied = nil
		}
		if s.free.put(freeFile{name: name, f: f}) {
			return
		}
	}
	if f != nil {
		f.Close()
	}
	s.fs.Remove(s.path(name))
	if emptied != nil {
		emptied()
	}
}

// freePool holds the finished message files kept for reuse.
//
// Creating and deleting a file per message was the largest cost of the
// spool after fsync: on this machine kind's ext4 each new inode is checked
// against every inode deleted in the last seconds, so at hundreds of
// messages per second file creation alone took 15% of the CPU. A finished
// message is therefore renamed to a free name instead of unlinked, and the
// next draft writes into it (over its old content when it is small, see
// keepBlocks; else emptied first). A free file is never a message: after a
// crash, recovery empties and reuses it, or removes it above the bound.
type freePool struct {
	mu    sync.Mutex
	max   int
	files []freeFile
	kept  int64 // bytes held by pooled files (their sizes), at most maxKept
}

// freeFile is a free file's name, its length (what a draft writes over) and,
// when the spool has it open, its descriptor.
type freeFile struct {
	name string
	f    File
	size int64
}

// take returns the oldest free file, or a zero freeFile.
func (p *freePool) take() freeFile {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.files) == 0 {
		return freeFile{}
	}
	ff := p.files[0]
	p.files[0] = freeFile{}
	p.files = p.files[1:]
	p.kept -= ff.size
	return ff
}

// reserve counts n more bytes kept in the pool, unless that would pass
// maxKept; put then pools a file of that size (release undoes a reservation
// put refused).
func (p *freePool) reserve(n int64) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.kept+n > maxKept {
		return false
	}
	p.kept += n
	return true
}

func (p *freePool) release(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.kept -= n
}

// room says whether the pool has room for one more file.
func (p *freePool) room() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.files) < p.max
}

func (p *freePool) put(ff freeFile) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.files) >= p.max {
		return false
	}
	p.files = append(p.files, ff)
	return true
}

// Len returns how many free files are pooled.
func (p *freePool) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.files)
}

// closeAll closes the descriptors of free files (the spool is closing).
func (p *freePool) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, ff := range p.files {
		if ff.f != nil {
			ff.f.Close()
			p.files[i].f = nil
		}
	}
}

// FreeFiles returns how many free files are kept for reuse.
func (s *Spool) FreeFiles() int { return s.free.len() }

// dirSyncer is the group commit: callers that renamed a file into dir ask for
// a directory fsync and wait; one goroutine serves every request that arrived
// while the previous fsync ran with a single fsync. A request is only served
// by an fsync that starts after it was made, so each rename is covered.
type dirSyncer struct {
	fs   FS
	dir  string
	f    File // the directory, opened by the loop
	reqs chan chan error
	quit chan struct{}
	once sync.Once
	wg   sync.WaitGroup
	n    atomic.Uint64 // fsyncs made
}

func newDirSyncer(fsys FS, dir string) *dirSyncer {
	s := &dirSyncer{fs: fsys, dir: dir, reqs: make(chan chan error, 1024), quit: make(chan struct{})}
	s.wg.Add(1)
	go s.loop()
	return s
}

func (s *dirSyncer) loop() {
	defer s.wg.Done()
	batch := make([]chan error, 0, 64)
	for {
		select {
		case <-s.quit:
			return
		case r := <-s.reqs:
			batch = append(batch[:0], r)
		}
	drain:
		for {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		err := s.syncOnce()
		s.n.Add(1)
		mDirSyncs.Inc()
		for _, r := range batch {
			r <- err
		}
	}
}

// sync returns after an fsync of the directory that began after the call.
func (s *dirSyncer) sync() error {
	r := make(chan error, 1)
	select {
	case s.reqs <- r:
	case <-s.quit:
		return syncDir(s.fs, s.dir)
	}
	select {
	case err := <-r:
		return err
	case <-s.quit:
		return syncDir(s.fs, s.dir)
	}
}

func (s *dirSyncer) stop() {
	s.once.Do(func() { close(s.quit) })
	s.wg.Wait()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// syncOnce fsyncs the directory through a descriptor kept open, which saves
// an open and a close per batch (only the loop goroutine calls it).
func (s *dirSyncer) syncOnce() error {
	if s.f == nil {
		f, err := s.fs.OpenFile(s.dir, os.O_RDONLY, 0)
		if err != nil {
			return err
		}
		s.f = f
	}
	return s.f.Sync()
}

// moveCorrupt moves a bad file to Dir/corrupt/ (never deletes it silently).
func (s *Spool) moveCorrupt(name string, why error) {
	src := s.path(name)
	dst := filepath.Join(s.corrupt, name)
	if err := s.fs.Rename(src, dst); err != nil {
		s.log.Error("spool: cannot move corrupt spool file aside", "file", src, "err", err)
		return
	}
	s.log.Error("spool: corrupt spool file moved aside", "file", dst, "err", why)
}

// isTemp says whether name is a draft or probe: never acknowledged.
func isTemp(name string) bool {
	return strings.HasSuffix(name, tmpSuffix) || strings.HasPrefix(name, probePrefix)
}

var errNotID = errors.New("not a queue file name")
