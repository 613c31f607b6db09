package queue

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// On-disk layout (docs/queue.md): Dir/msg/<ID>.tmp is a draft; Dir/msg/<ID>
// is a committed message, immutable: the message bytes, then a JSON trailer
// (envelope and DKIM prefix), then a fixed footer. Dir/msg/<ID>.st is the
// message's append-only state log (one JSON record per line).

const (
	footerMagic = "SLUICEQ1"
	footerSize  = 8 + 8 + 4 + 4 // magic, message length, trailer length, trailer CRC-32C
	tmpSuffix   = ".tmp"
	stateSuffix = ".st"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// trailer is the JSON part of a committed message file.
type trailer struct {
	V      int       `json:"v"`
	Env    *Envelope `json:"env"`
	Prefix []byte    `json:"prefix,omitempty"` // DKIM-Signature fields, prepended on delivery
}

// crockford is a sortable, case-free alphabet safe in file names.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// newID returns 16 characters: 10 for the microseconds since the epoch (sorts by
// time until the year 2514) and 6 random (30 bits), so IDs made in the same
// microsecond differ; Begin's O_EXCL catches the rest.
func newID(now time.Time) string {
	var b [16]byte
	us := uint64(now.UnixMicro())
	for i := 9; i >= 0; i-- {
		b[i] = crockford[us&31]
		us >>= 5
	}
	var r [4]byte
	rand.Read(r[:])
	x := binary.BigEndian.Uint32(r[:])
	for i := 15; i >= 10; i-- {
		b[i] = crockford[x&31]
		x >>= 5
	}
	return string(b[:])
}

// validID reports whether s could be a queue ID (and so is safe in a path).
func validID(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !strings.ContainsRune(crockford, rune(s[i])) {
			return false
		}
	}
	return true
}

// Draft is a message being received into the spool.
type Draft struct {
	ID   string
	q    *Queue
	f    *os.File
	w    *bufio.Writer
	n    int64
	err  error
	done bool
	path string // where the draft is now (a free file's descriptor may have been opened under an older name)
	// reused: the file was a free one, written over in place; Commit cuts
	// off what is left of the old message after the new footer.
	reused bool
}

// Begin allocates a queue ID and a temp file in the spool directory.
func (q *Queue) Begin() (*Draft, error) {
	if err := q.checkSpace(); err != nil {
		return nil, err
	}
	return q.beginUnchecked()
}

func (q *Queue) beginUnchecked() (*Draft, error) {
	if ff := q.free.take(q.flush.synced.Load()); ff.name != "" {
		// Written over in place, without O_TRUNC: the inode, its directory
		// entry and its data blocks are reused, so neither inodes nor
		// blocks are allocated or freed per message; a file that comes with
		// its descriptor costs no open either.
		f := ff.f
		var err error
		if f == nil {
			f, err = os.OpenFile(filepath.Join(q.dir, ff.name), os.O_RDWR, 0o600)
		} else {
			_, err = f.Seek(0, io.SeekStart)
		}
		if err == nil {
			return &Draft{ID: newID(q.now()), q: q, f: f, path: filepath.Join(q.dir, ff.name), w: getWriter(f), reused: true}, nil
		}
		if f != nil {
			f.Close()
		}
	}
	for range 5 {
		id := newID(q.now())
		f, err := os.OpenFile(filepath.Join(q.dir, id+tmpSuffix), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("queue: create draft: %w", err)
		}
		return &Draft{ID: id, q: q, f: f, path: f.Name(), w: getWriter(f)}, nil
	}
	return nil, errors.New("queue: create draft: no unique id")
}

// Write streams message bytes (headers and body, CRLF) to the draft.
func (d *Draft) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.done {
		return 0, fmt.Errorf("queue: write %s: draft already committed", d.ID)
	}
	n, err := d.w.Write(p)
	d.n += int64(n)
	if err != nil {
		d.err = fmt.Errorf("queue: write %s: %w", d.ID, err)
		return n, d.err
	}
	return n, nil
}

// Commit stores env and prefix after the message and makes it durable: write,
// fsync the file, rename it into place, fsync the directory (grouped with
// other commits). When Commit returns nil the message survives kill -9 and
// power loss, and Run delivers it at once. On error nothing was accepted.
func (d *Draft) Commit(env *Envelope, prefix []byte) error {
	if d.err != nil {
		d.Abort()
		return d.err
	}
	if d.done {
		return fmt.Errorf("queue: commit %s: already committed", d.ID)
	}
	start := time.Now()
	q := d.q
	env.ID = d.ID
	if env.Received.IsZero() {
		env.Received = q.now()
	}
	tr, err := json.Marshal(trailer{V: 1, Env: env, Prefix: prefix})
	if err != nil {
		d.Abort()
		return fmt.Errorf("queue: encode %s: %w", d.ID, err)
	}
	var foot [footerSize]byte
	copy(foot[:8], footerMagic)
	binary.BigEndian.PutUint64(foot[8:], uint64(d.n))
	binary.BigEndian.PutUint32(foot[16:], uint32(len(tr)))
	binary.BigEndian.PutUint32(foot[20:], crc32.Checksum(tr, castagnoli))
	d.w.Write(tr)
	d.w.Write(foot[:])
	if err := d.w.Flush(); err != nil {
		d.Abort()
		return fmt.Errorf("queue: write %s: %w", d.ID, err)
	}
	if d.reused {
		// The footer must be the file's last bytes.
		if err := d.f.Truncate(d.n + int64(len(tr)) + footerSize); err != nil {
			d.Abort()
			return fmt.Errorf("queue: truncate %s: %w", d.ID, err)
		}
	}
	if err := d.f.Sync(); err != nil {
		d.Abort()
		return fmt.Errorf("queue: fsync %s: %w", d.ID, err)
	}
	// The descriptor stays open for the first delivery attempt and, after
	// it, for the free pool.
	putWriter(d.w)
	d.w = nil
	// No state log yet: most messages are delivered at the first attempt
	// and never need one (attempt creates it when they do).
	final := filepath.Join(q.dir, d.ID)
	if err := syscall.Rename(d.path, final); err != nil {
		d.Abort()
		return fmt.Errorf("queue: rename %s: %w", d.ID, err)
	}
	if err := q.flush.sync(); err != nil {
		// The rename may or may not survive a crash; the client is told 451
		// and retries, so a duplicate is possible but nothing is lost. Remove
		// the file so this process does not deliver it too.
		os.Remove(final)
		d.done = true
		d.f.Close()
		return fmt.Errorf("queue: fsync spool directory for %s: %w", d.ID, err)
	}
	d.done = true
	mCommits.Inc()
	mCommitSecs.Add(time.Since(start).Seconds())
	q.addEntry(&entry{id: d.ID, env: env, fresh: true, prefix: prefix, msgLen: d.n, file: d.f})
	return nil
}

// Abort removes the draft's temp file; after Commit it does nothing.
func (d *Draft) Abort() {
	if d.done {
		return
	}
	d.done = true
	d.f.Close()
	os.Remove(d.path)
	os.Remove(filepath.Join(d.q.dir, d.ID+stateSuffix))
	if d.w != nil {
		putWriter(d.w)
		d.w = nil
	}
}

// Draft writers are pooled: a 32 KiB buffer per message is garbage the
// collector would otherwise clear and collect at every accept.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

func getWriter(f *os.File) *bufio.Writer {
	w := writerPool.Get().(*bufio.Writer)
	w.Reset(f)
	return w
}

func putWriter(w *bufio.Writer) {
	w.Reset(nil)
	writerPool.Put(w)
}

// dirSyncer is the group commit: callers that renamed a file into dir ask for
// a directory fsync and wait; one goroutine serves every request that arrived
// while the previous fsync ran with a single fsync. A request is only served
// by an fsync that starts after it was made, so each rename is covered.
type dirSyncer struct {
	// started counts directory fsyncs begun; synced is the number of the
	// last one that succeeded. A rename made when started was k is durable
	// once synced > k.
	started atomic.Uint64
	synced  atomic.Uint64

	dir  string
	f    *os.File // the directory, opened by the loop
	reqs chan chan error
	quit chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func newDirSyncer(dir string) (*dirSyncer, error) {
	s := &dirSyncer{dir: dir, reqs: make(chan chan error, 1024), quit: make(chan struct{})}
	s.wg.Add(1)
	go s.loop()
	return s, nil
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
		n := s.started.Add(1)
		err := s.syncOnce()
		if err == nil {
			s.synced.Store(n)
		}
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
		return syncDir(s.dir)
	}
	select {
	case err := <-r:
		return err
	case <-s.quit:
		return syncDir(s.dir)
	}
}

func (s *dirSyncer) stop() {
	s.once.Do(func() { close(s.quit) })
	s.wg.Wait()
	if s.f != nil {
		s.f.Close()
	}
}

// syncOnce fsyncs the directory through a descriptor kept open, which saves
// an open and a close per batch (only the loop goroutine calls it).
func (s *dirSyncer) syncOnce() error {
	if s.f == nil {
		f, err := os.Open(s.dir)
		if err != nil {
			return err
		}
		s.f = f
	}
	return s.f.Sync()
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// errCorrupt marks a file that cannot be a committed message.
var errCorrupt = errors.New("corrupt spool file")

// readTrailer reads the envelope and prefix of a committed message file and
// returns the length of the message bytes before them.
func readTrailer(path string) (*trailer, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	size := st.Size()
	if size < footerSize {
		return nil, 0, fmt.Errorf("%w: %d bytes, shorter than the footer", errCorrupt, size)
	}
	var foot [footerSize]byte
	if _, err := f.ReadAt(foot[:], size-footerSize); err != nil {
		return nil, 0, err
	}
	if string(foot[:8]) != footerMagic {
		return nil, 0, fmt.Errorf("%w: bad footer magic", errCorrupt)
	}
	msgLen := int64(binary.BigEndian.Uint64(foot[8:]))
	trLen := int64(binary.BigEndian.Uint32(foot[16:]))
	if msgLen < 0 || msgLen+trLen+footerSize != size {
		return nil, 0, fmt.Errorf("%w: lengths %d+%d+%d do not add up to %d", errCorrupt, msgLen, trLen, footerSize, size)
	}
	buf := make([]byte, trLen)
	if _, err := f.ReadAt(buf, msgLen); err != nil {
		return nil, 0, err
	}
	if crc32.Checksum(buf, castagnoli) != binary.BigEndian.Uint32(foot[20:]) {
		return nil, 0, fmt.Errorf("%w: trailer checksum mismatch", errCorrupt)
	}
	var tr trailer
	if err := json.Unmarshal(buf, &tr); err != nil || tr.Env == nil {
		return nil, 0, fmt.Errorf("%w: trailer: %v", errCorrupt, err)
	}
	return &tr, msgLen, nil
}

// openMessage returns prefix + message bytes of a committed message file.
func openMessage(path string) (io.ReadCloser, int64, error) {
	tr, msgLen, err := readTrailer(path)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	r := io.MultiReader(bytes.NewReader(tr.Prefix), io.NewSectionReader(f, 0, msgLen))
	return struct {
		io.Reader
		io.Closer
	}{r, f}, int64(len(tr.Prefix)) + msgLen, nil
}

// Record is one line of a message's state log.
type Record struct {
	T        string    `json:"t"` // attempt | rcpt | hold | release | retry | warned
	At       time.Time `json:"at"`
	N        int       `json:"n,omitempty"`    // attempt: its number
	Next     time.Time `json:"next,omitzero"`  // attempt: when the next one is due
	Rcpt     string    `json:"rcpt,omitempty"` // rcpt: address
	State    string    `json:"state,omitempty"`
	Upstream string    `json:"upstream,omitempty"`
	Status   string    `json:"status,omitempty"` // enhanced status, e.g. 5.1.1
	Diag     string    `json:"diag,omitempty"`   // diagnostic text (the upstream's reply)
}

// Recipient states.
const (
	StatePending   = "pending"
	StateDelivered = "delivered"
	StateBounced   = "bounced"
	StateExpired   = "expired"
	stateDeferred  = "deferred" // in the log: still pending, with a last error
)

// appendState appends records to the message's state log; with sync it
// fdatasyncs the log (and, when it was just created, the directory).
func (q *Queue) appendState(id string, sync bool, recs ...Record) error {
	return appendStateFile(q.dir, q.flush, id, sync, recs...)
}

func appendStateFile(dir string, fl *dirSyncer, id string, sync bool, recs ...Record) error {
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("queue: encode state of %s: %w", id, err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	path := filepath.Join(dir, id+stateSuffix)
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("queue: open state of %s: %w", id, err)
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		f.Close()
		return fmt.Errorf("queue: write state of %s: %w", id, err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("queue: fsync state of %s: %w", id, err)
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("queue: close state of %s: %w", id, err)
	}
	if sync && created {
		var err error
		if fl != nil {
			err = fl.sync()
		} else {
			err = syncDir(dir)
		}
		if err != nil {
			return fmt.Errorf("queue: fsync spool directory for %s: %w", id, err)
		}
	}
	return nil
}

// readState reads a state log. A torn last line (crash mid-append) is
// ignored: it was never synced, so nothing relied on it.
func readState(path string) ([]Record, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var recs []Record
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		var r Record
		if json.Unmarshal(line, &r) != nil {
			continue
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// msgState is a message's state folded from its log.
type msgState struct {
	Attempts int
	Next     time.Time
	Held     bool
	Warned   bool
	LastErr  string
	Rcpt     map[string]Record // final or deferred outcome per recipient
}

func foldState(recs []Record) msgState {
	s := msgState{Rcpt: map[string]Record{}}
	for _, r := range recs {
		switch r.T {
		case "attempt":
			s.Attempts = max(s.Attempts, r.N)
			s.Next = r.Next
		case "rcpt":
			if r.State == stateDeferred {
				s.LastErr = r.Diag
			}
			if old, ok := s.Rcpt[r.Rcpt]; ok && old.State != stateDeferred {
				continue // a final outcome stays final
			}
			s.Rcpt[r.Rcpt] = r
		case "hold":
			s.Held = true
		case "release":
			s.Held = false
			s.Next = r.At
		case "retry":
			s.Next = r.At
		case "warned":
			s.Warned = true
		}
	}
	return s
}

// rcptState returns the recipient's state name for listings.
func (s msgState) rcptState(addr string) string {
	r, ok := s.Rcpt[addr]
	if !ok || r.State == stateDeferred {
		return StatePending
	}
	return r.State
}

// moveCorrupt moves a bad file to Dir/corrupt/ (never deletes it silently).
func (q *Queue) moveCorrupt(name string, why error) {
	src := filepath.Join(q.dir, name)
	dst := filepath.Join(q.opts.Dir, "corrupt", name)
	if err := os.Rename(src, dst); err != nil {
		q.log.Error("queue: cannot move corrupt spool file aside", "file", src, "err", err)
		return
	}
	q.log.Error("queue: corrupt spool file moved aside", "file", dst, "err", why)
}

// freePool holds the names of finished message files kept for reuse.
//
// Creating and deleting a file per message was the largest cost of the
// spool after fsync: on this machine kind's ext4 each new inode is checked
// against every inode deleted in the last seconds, so at hundreds of
// messages per second file creation alone took 15% of the CPU. A finished
// message is therefore renamed to a free name instead of unlinked, and the
// next draft truncates and rewrites it. A free file is never a message: a
// crash leaves it to the next start, which reuses or removes it.
type freePool struct {
	mu    sync.Mutex
	files []freeFile
}

// freeFile is a free file's name and, when the queue had it open, its descriptor.
type freeFile struct {
	name string
	f    *os.File
	// after: the file may be written over once a directory fsync numbered
	// above this has completed, i.e. once its rename to the free name is
	// durable. Written over earlier, a crash could bring back the finished
	// message's old name over half-new bytes.
	after uint64
}

const (
	freePrefix = ".free-"
	maxFree    = 512
)

// take returns the oldest free file whose rename is durable (synced is the
// number of the last completed directory fsync), or a zero freeFile.
func (p *freePool) take(synced uint64) freeFile {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.files) == 0 || p.files[0].after >= synced {
		return freeFile{}
	}
	ff := p.files[0]
	p.files = p.files[1:]
	return ff
}

// reserve says whether the pool has room for one more file.
func (p *freePool) room() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.files) < maxFree
}

func (p *freePool) put(ff freeFile) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.files) >= maxFree {
		return false
	}
	p.files = append(p.files, ff)
	return true
}

// closeAll closes the descriptors of free files (the queue is closing).
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

// recycle turns the finished message file id into a free file (keeping f,
// its open descriptor, if any), or removes it when the pool is full. Either
// way the message is gone from the spool.
func (q *Queue) recycle(id string, f *os.File) error {
	if !q.free.room() {
		if f != nil {
			f.Close()
		}
		return os.Remove(q.path(id))
	}
	name := freePrefix + id
	after := q.flush.started.Load()
	if err := syscall.Rename(q.path(id), q.path(name)); err != nil {
		if f != nil {
			f.Close()
		}
		return err
	}
	if !q.free.put(freeFile{name: name, f: f, after: after}) {
		if f != nil {
			f.Close()
		}
		os.Remove(q.path(name))
	}
	return nil
}
