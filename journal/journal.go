package journal

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sluicemail/sluice/internal/metrics"
)

// On-disk layout (docs/operations.md "The journal"): the directory holds
// segments named by a sequence number. NNNNNNNNNN.log is one JSON event per
// line, appended; the newest segment is the one being written. When it is
// sealed (full, an hour old, or at close) NNNNNNNNNN.idx is written beside
// it: a header and the segment's index entries sorted by key hash, so a
// lookup is a binary search per segment instead of a scan. A segment
// without .idx (the active one, or one a crash left unsealed) is scanned.
const (
	logSuffix = ".log"
	idxSuffix = ".idx"
	idxMagic  = "SLJIDX01"
	idxHeader = 8 + 8 + 8 + 4 + 4 // magic, min time, max time (unix ns), entry count, reserved
	entrySize = 12                // key hash (8), offset of the line (4)

	maxSegmentSize = 16 << 20
	minSegmentSize = 64 << 10
	// DefaultSegmentAge is how long a segment is written before it is
	// sealed, so retention drops old events hour by hour.
	DefaultSegmentAge = time.Hour
	// DefaultSyncInterval bounds what a power loss can take from the
	// journal (never from the spool): events written in the last interval.
	DefaultSyncInterval = time.Second
)

var (
	mEvents = metrics.Default.NewCounter("sluice_journal_events_total", "Events appended to the delivery journal.")
	mErrors = metrics.Default.NewCounter("sluice_journal_errors_total", "Journal writes, syncs or seals that failed (the events may be lost; delivery is unaffected).")
)

// Options configure a Journal. Retention and MaxSize come from config
// (journal.retention, journal.max_size), which holds their defaults.
type Options struct {
	Dir       string // state_dir/journal
	Retention time.Duration
	MaxSize   int64
	// SegmentSize is the size at which a segment is sealed (default
	// MaxSize/8, within 64 KiB..16 MiB). SegmentAge: DefaultSegmentAge.
	SegmentSize  int64
	SegmentAge   time.Duration
	SyncInterval time.Duration // default DefaultSyncInterval
	// MinFreeSpace: below this many free bytes on the journal's file
	// system, events are dropped rather than written, so the journal never
	// takes the last space the spool needs (queue.min_free_space).
	MinFreeSpace uint64
	Now          func() time.Time
	Logger       *slog.Logger
}

// entry is one index entry: the hash of a key and the offset of the line.
type entry struct {
	h   uint64
	off uint32
}

// segment is a sealed segment or one being written.
type segment struct {
	seq        uint64
	size       int64 // bytes of .log
	idxSize    int64 // bytes of .idx (0 while unsealed)
	minT, maxT int64 // unix ns of its events (0 when empty)
	f          *os.File
	idx        []entry // in memory until sealed
	created    time.Time
	dropped    bool // removed by dropLocked while it waited for the sealer
}

func (s *segment) logPath(dir string) string {
	return filepath.Join(dir, fmt.Sprintf("%010d%s", s.seq, logSuffix))
}

func (s *segment) idxPath(dir string) string {
	return filepath.Join(dir, fmt.Sprintf("%010d%s", s.seq, idxSuffix))
}

// Journal is the daemon's writer. Append writes each event with one
// write(2) before it returns, so an event survives kill -9 of the process
// as soon as Append returns (the page cache keeps it); a background
// goroutine fsyncs every SyncInterval and at Close, so a power loss takes
// at most the events of the last interval. The spool's own durability does
// not depend on the journal.
type Journal struct {
	opts Options
	dir  string
	log  *slog.Logger
	now  func() time.Time

	mu      sync.Mutex
	act     *segment
	sealing []*segment // rotated, .idx not yet written
	sealed  []*segment // oldest first
	dirty   bool
	closed  bool
	lastErr time.Time
	stats   stats
	// paused: free space is below MinFreeSpace; checked every second and
	// after every checkEvery bytes written.
	paused    bool
	sinceFree int64

	seal chan *segment
	quit chan struct{}
	done chan struct{}
}

var _ Sink = (*Journal)(nil)

// Open opens (creating) the journal directory, seals any segment a crash
// left unsealed, drops what is past the bounds, and starts a new segment.
func Open(opts Options) (*Journal, error) {
	if opts.Dir == "" {
		return nil, errors.New("journal: no directory")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxSize <= 0 {
		opts.MaxSize = 1e9
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = min(max(opts.MaxSize/8, minSegmentSize), maxSegmentSize)
	}
	if opts.SegmentAge <= 0 {
		opts.SegmentAge = DefaultSegmentAge
	}
	if opts.SyncInterval <= 0 {
		opts.SyncInterval = DefaultSyncInterval
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal: create %s: %w", opts.Dir, err)
	}
	j := &Journal{
		opts: opts, dir: opts.Dir, log: opts.Logger, now: opts.Now,
		seal: make(chan *segment, 16), quit: make(chan struct{}), done: make(chan struct{}),
	}
	segs, err := listSegments(j.dir)
	if err != nil {
		return nil, err
	}
	var next uint64 = 1
	for _, s := range segs {
		next = s.seq + 1
		if s.idxSize == 0 {
			// Unsealed by a crash (or by a daemon that is still running,
			// which the control socket and the spool's lock rule out).
			if err := j.sealOffline(s); err != nil {
				return nil, err
			}
		}
		j.sealed = append(j.sealed, s)
	}
	j.mu.Lock()
	j.dropLocked()
	err = j.newActiveLocked(next)
	j.mu.Unlock()
	if err != nil {
		return nil, err
	}
	go j.loop()
	return j, nil
}

// listSegments returns the directory's segments in order, reading the
// header of each .idx for its time range.
func listSegments(dir string) ([]*segment, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("journal: read %s: %w", dir, err)
	}
	var segs []*segment
	for _, de := range ents {
		name, ok := strings.CutSuffix(de.Name(), logSuffix)
		if !ok {
			continue
		}
		seq, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		info, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		s := &segment{seq: seq, size: info.Size()}
		if h, err := readIdxHeader(s.idxPath(dir)); err == nil {
			s.idxSize, s.minT, s.maxT = h.size, h.minT, h.maxT
		}
		segs = append(segs, s)
	}
	slices.SortFunc(segs, func(a, b *segment) int { return cmpUint(a.seq, b.seq) })
	return segs, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (j *Journal) newActiveLocked(seq uint64) error {
	s := &segment{seq: seq, created: j.now()}
	f, err := os.OpenFile(s.logPath(j.dir), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("journal: create segment: %w", err)
	}
	if st, err := f.Stat(); err == nil {
		s.size = st.Size()
	}
	s.f = f
	j.act = s
	return nil
}

// Append writes evs to the journal (Time defaults to now), in one write:
// the events one delivery attempt makes (its attempt and its outcome) cost
// one system call, not one each. It never waits for a disk flush; a failed
// write is logged and counted, and the events are lost: the journal must
// never stop mail.
func (j *Journal) Append(evs ...Event) {
	if len(evs) == 0 {
		return
	}
	bp := bufPool.Get().(*[]byte)
	buf := (*bp)[:0]
	// On the stack for an attempt's few events: no allocation.
	var small [4]lineMeta
	var kbuf [16]uint64
	metas, keys := small[:0], kbuf[:0]
	for i := range evs {
		e := &evs[i]
		if e.Time.IsZero() {
			e.Time = j.now()
		}
		k0 := len(keys)
		keys = eventKeys(keys, e)
		metas = append(metas, lineMeta{start: len(buf), k0: k0, k1: len(keys), t: e.Time.UnixNano()})
		buf = appendJSON(buf, e)
	}
	defer func() { *bp = buf; bufPool.Put(bp) }()

	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return
	}
	if j.opts.MinFreeSpace > 0 && j.sinceFree >= checkEvery {
		j.checkSpaceLocked()
	}
	if j.paused {
		mErrors.Add(float64(len(evs)))
		j.mu.Unlock()
		return
	}
	a := j.act
	if a.size > 0 && (a.size+int64(len(buf)) > j.opts.SegmentSize || j.now().Sub(a.created) >= j.opts.SegmentAge) {
		if err := j.rotateLocked(); err != nil {
			j.errorLocked("rotate", err)
		}
		a = j.act
	}
	base := a.size
	n, err := a.f.Write(buf)
	a.size += int64(n)
	j.sinceFree += int64(n)
	if err != nil {
		j.errorLocked("write", err)
	} else {
		for i, m := range metas {
			for _, h := range keys[m.k0:m.k1] {
				a.idx = append(a.idx, entry{h: h, off: uint32(base + int64(m.start))})
			}
			if a.minT == 0 || m.t < a.minT {
				a.minT = m.t
			}
			if m.t > a.maxT {
				a.maxT = m.t
			}
			j.stats.add(&evs[i])
		}
		j.dirty = true
	}
	j.mu.Unlock()
	if err == nil {
		mEvents.Add(float64(len(evs)))
	}
}

// lineMeta is what Append indexes of one event's line: its offset in the
// write, its keys (keys[k0:k1]) and its time.
type lineMeta struct {
	start, k0, k1 int
	t             int64
}

// checkEvery is how many bytes may be written between free-space checks.
const checkEvery = 32 << 10

// checkSpaceLocked pauses or resumes writing by the free space left.
func (j *Journal) checkSpaceLocked() {
	j.sinceFree = 0
	var st syscall.Statfs_t
	if err := syscall.Statfs(j.dir, &st); err != nil {
		return
	}
	low := st.Bavail*uint64(st.Bsize) < j.opts.MinFreeSpace
	if low && !j.paused {
		j.log.Warn("journal: paused, the disk is nearly full; events are not recorded until space is free", "dir", j.dir, "min_free_space", j.opts.MinFreeSpace)
	} else if !low && j.paused {
		j.log.Info("journal: resumed")
	}
	j.paused = low
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// errorLocked logs a failure at most once a minute.
func (j *Journal) errorLocked(what string, err error) {
	mErrors.Inc()
	if now := j.now(); now.Sub(j.lastErr) >= time.Minute {
		j.lastErr = now
		j.log.Error("journal: "+what+" failed; events may be lost", "err", err)
	}
}

// rotateLocked hands the active segment to the sealer and starts the next
// one, dropping old segments first so the directory stays within MaxSize.
func (j *Journal) rotateLocked() error {
	old := j.act
	j.sealing = append(j.sealing, old)
	if err := j.newActiveLocked(old.seq + 1); err != nil {
		// Keep writing to the old segment rather than lose events.
		j.sealing = j.sealing[:len(j.sealing)-1]
		return err
	}
	j.dropLocked()
	select {
	case j.seal <- old:
	default:
		// The sealer is far behind (disk trouble): seal here.
		j.mu.Unlock()
		j.sealSegment(old)
		j.mu.Lock()
	}
	return nil
}

// dropLocked removes the oldest sealed segments while the journal is past
// retention or would exceed MaxSize with a full active segment.
func (j *Journal) dropLocked() {
	var total int64
	for _, s := range j.sealed {
		total += s.size + s.idxSize
	}
	for _, s := range j.sealing {
		total += s.size + int64(idxHeader+entrySize*len(s.idx))
	}
	cut := j.now().Add(-j.opts.Retention).UnixNano()
	for len(j.sealed) > 0 {
		s := j.sealed[0]
		over := total+j.opts.SegmentSize > j.opts.MaxSize
		old := j.opts.Retention > 0 && s.maxT < cut
		if !over && !old {
			return
		}
		// The index first: a reader that finds a .log without .idx scans it.
		os.Remove(s.idxPath(j.dir))
		os.Remove(s.logPath(j.dir))
		total -= s.size + s.idxSize
		j.sealed = j.sealed[1:]
	}
	// A sealer slowed by the disk must not let the journal outgrow its
	// bound: segments waiting to be sealed go too, oldest first.
	for len(j.sealing) > 0 && total+j.opts.SegmentSize > j.opts.MaxSize {
		s := j.sealing[0]
		s.dropped = true
		os.Remove(s.logPath(j.dir))
		total -= s.size + int64(idxHeader+entrySize*len(s.idx))
		j.sealing = j.sealing[1:]
	}
}

// loop fsyncs the active segment every SyncInterval and seals rotated
// segments; it is the only goroutine that closes segment files.
func (j *Journal) loop() {
	defer close(j.done)
	t := time.NewTicker(j.opts.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-j.quit:
			for {
				select {
				case s := <-j.seal:
					j.sealSegment(s)
				default:
					return
				}
			}
		case s := <-j.seal:
			j.sealSegment(s)
		case <-t.C:
			j.mu.Lock()
			f, dirty := j.act.f, j.dirty
			j.dirty = false
			j.mu.Unlock()
			var err error
			if dirty {
				err = f.Sync()
			}
			j.mu.Lock()
			if err != nil {
				j.errorLocked("fsync", err)
			}
			if j.opts.MinFreeSpace > 0 {
				j.checkSpaceLocked()
			}
			if j.act.size > 0 && j.now().Sub(j.act.created) >= j.opts.SegmentAge {
				if err := j.rotateLocked(); err != nil {
					j.errorLocked("rotate", err)
				}
			}
			j.dropLocked()
			j.mu.Unlock()
		}
	}
}

// sealSegment makes s durable, writes its index and moves it to sealed.
func (j *Journal) sealSegment(s *segment) {
	j.mu.Lock()
	dropped := s.dropped
	j.mu.Unlock()
	var err error
	if !dropped {
		err = s.f.Sync()
		if err == nil {
			err = writeIdx(s.idxPath(j.dir), s)
		}
	}
	s.f.Close()
	j.mu.Lock()
	defer j.mu.Unlock()
	if s.dropped {
		os.Remove(s.idxPath(j.dir))
		s.f, s.idx = nil, nil
		return
	}
	if err != nil {
		j.errorLocked("seal", err)
	} else if st, serr := os.Stat(s.idxPath(j.dir)); serr == nil {
		s.idxSize = st.Size()
	}
	s.f = nil
	s.idx = nil // readers now use the .idx file (or scan when it is missing)
	if i := slices.Index(j.sealing, s); i >= 0 {
		j.sealing = slices.Delete(j.sealing, i, i+1)
	}
	j.sealed = append(j.sealed, s)
	slices.SortFunc(j.sealed, func(a, b *segment) int { return cmpUint(a.seq, b.seq) })
	j.dropLocked()
}

// sealOffline indexes a segment left unsealed (at Open).
func (j *Journal) sealOffline(s *segment) error {
	idx, minT, maxT, err := scanSegment(s.logPath(j.dir))
	if err != nil {
		return err
	}
	s.idx, s.minT, s.maxT = idx, minT, maxT
	if err := writeIdx(s.idxPath(j.dir), s); err != nil {
		return err
	}
	if st, err := os.Stat(s.idxPath(j.dir)); err == nil {
		s.idxSize = st.Size()
	}
	s.idx = nil
	return nil
}

// Close seals the active segment and stops the background goroutine.
// Appends after Close are dropped.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	a := j.act
	j.sealing = append(j.sealing, a)
	j.mu.Unlock()
	close(j.quit)
	<-j.done
	if a.size > 0 {
		j.sealSegment(a)
	} else {
		a.f.Close()
		os.Remove(a.logPath(j.dir))
		j.mu.Lock()
		j.sealing = slices.DeleteFunc(j.sealing, func(s *segment) bool { return s == a })
		j.mu.Unlock()
	}
	return nil
}

// Size returns the bytes the journal holds on disk (for tests and status).
func (j *Journal) Size() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := j.act.size
	for _, s := range j.sealed {
		n += s.size + s.idxSize
	}
	for _, s := range j.sealing {
		n += s.size
	}
	return n
}

// scanSegment reads a .log and returns its index entries and time range;
// a line that does not parse (a write cut short by a crash) is skipped.
func scanSegment(path string) ([]entry, int64, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, 0, err
	}
	defer f.Close()
	var idx []entry
	var minT, maxT int64
	r := bufio.NewReaderSize(f, 256<<10)
	var off int64
	var kb [8]uint64
	for {
		line, err := r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the buffer: read it whole.
			rest, err2 := r.ReadBytes('\n')
			line = append(append([]byte(nil), line...), rest...)
			err = err2
		}
		if len(line) > 0 && line[len(line)-1] == '\n' {
			var e Event
			if decodeLine(line, &e) == nil {
				for _, h := range eventKeys(kb[:0], &e) {
					idx = append(idx, entry{h: h, off: uint32(off)})
				}
				t := e.Time.UnixNano()
				if minT == 0 || t < minT {
					minT = t
				}
				maxT = max(maxT, t)
			}
		}
		off += int64(len(line))
		if err != nil {
			break
		}
	}
	return idx, minT, maxT, nil
}
