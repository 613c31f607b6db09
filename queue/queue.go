// Package queue is the durable spool between acceptance and delivery: the
// relay streams a message into a Draft and answers 250 only after Commit has
// made it durable (file and directory fsync'd). Run's workers then hand it to
// the upstream Deliverer, retry temporary failures on a jittered schedule,
// expire it at max_age, and bounce failed recipients with an RFC 3464 DSN.
// The files are the truth: `sluice queue …` reads them while serve runs.
package queue

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/control"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/spool"
	"github.com/sluicemail/sluice/suppress"
	"github.com/sluicemail/sluice/upstream"
)

// ErrDiskFull is returned by Begin when the spool's file system has less free
// space than the configured minimum; the relay answers 451 4.3.0.
var ErrDiskFull = errors.New("queue: spool disk below min_free_space")

// Options configure a Queue.
type Options struct {
	Dir       string // the spool directory (state_dir/spool)
	Config    config.Queue
	Hostname  string
	Deliverer upstream.Deliverer
	// Sign returns DKIM-Signature fields for a bounce whose From: is in
	// domain (nil prefix: unsigned). nil: bounces are sent unsigned.
	Sign   func(domain string, msg []byte) (prefix []byte, err error)
	Logger *slog.Logger
	Now    func() time.Time
	// ControlSocket is the unix socket Run serves `sluice queue` actions on
	// (e.g. state_dir/control.sock, mode 0600). "": no socket.
	ControlSocket string
	// RecoverInBackground: Open lists the spool and returns; the messages
	// are read and scheduled in the background (Recovering), while new mail
	// is accepted and delivered. The daemon sets it so its listeners answer
	// at once whatever the queue holds.
	RecoverInBackground bool
	// MinFreeSpace overrides Config.MinFreeSpace when > 0 (bytes).
	MinFreeSpace uint64
	// DrainTimeout bounds how long in-flight deliveries may run after Run's
	// context is done (default 10s); then they are cancelled and stay queued.
	DrainTimeout time.Duration
	// HTTPClient posts webhook events (nil: a client with a 10s timeout).
	HTTPClient HTTPDoer
	// Rand returns a float in [0,1) for jitter (nil: math/rand/v2).
	Rand func() float64
	// Journal receives every attempt, outcome, queue action and DSN of
	// every message (nil: none kept).
	Journal journal.Sink
	// Suppress, when set, is told of every permanent failure an upstream
	// reported, and lists the addresses whose status names them (§8.2).
	Suppress *suppress.List
}

// Envelope is what the relay knows about a message besides its bytes (the
// spool stores it with the message).
type Envelope = spool.Envelope

// RcptDSN holds one recipient's DSN parameters, keyed by the address in To.
type RcptDSN = spool.RcptDSN

// Record is one line of a message's state log (`sluice queue show`).
type Record = spool.Record

// Recipient states.
const (
	StatePending   = spool.StatePending
	StateDelivered = spool.StateDelivered
	StateBounced   = spool.StateBounced
	StateExpired   = spool.StateExpired
	stateDeferred  = spool.StateDeferred
)

// Queue is an open spool.
type Queue struct {
	opts   Options
	spool  *spool.Spool // Dir/msg and Dir/corrupt: the messages, behind the file protocol
	log    *slog.Logger
	now    func() time.Time
	rnd    func() float64
	minFre uint64

	// spaceOK is when Begin last found free space at least
	// spaceMargin above the floor (monotonic nanoseconds since spaceEpoch;
	// 0 = never or not since): within spaceTTL of it Begin skips the statfs.
	spaceOK atomic.Int64

	mu      sync.Mutex
	entries map[qid]*entry
	due     entryHeap
	wake    chan struct{} // cap 1: a worker should look at the heap
	running bool

	ctl net.Listener // the control socket, bound by Open, served by Run

	hooks   *webhooks
	closeMu sync.Mutex
	closed  bool

	opened     time.Time // before recovery: a later due time was set by this process
	recovering atomic.Bool
	recovered  chan struct{} // background recovery: closed when it ended
	scanned    chan struct{} // background recovery: closed once the spool is listed
	stopping   atomic.Bool   // Close was called: background recovery stops
}

var (
	mDelivered   = metrics.Default.NewCounterVec("sluice_messages_delivered_total", "Recipients delivered, by upstream.", "upstream")
	mDeferred    = metrics.Default.NewCounterVec("sluice_messages_deferred_total", "Recipients deferred for a retry, by upstream.", "upstream")
	mBounced     = metrics.Default.NewCounter("sluice_messages_bounced_total", "Recipients bounced (permanent failure).")
	mExpired     = metrics.Default.NewCounter("sluice_messages_expired_total", "Recipients expired at max_age and bounced.")
	mWebhookSent = metrics.Default.NewCounter("sluice_webhook_events_sent_total", "Webhook events accepted by the receiver.")
)

// Open creates the spool directories and recovers every committed message:
// drafts never acknowledged are deleted, unreadable files are moved to
// Dir/corrupt/, and each message is scheduled (due ones spread out).
func Open(opts Options) (*Queue, error) {
	q, err := newQueue(opts)
	if err != nil {
		return nil, err
	}
	// The control socket is bound here, before the caller starts serving:
	// a `sluice queue hold` right after start must reach this daemon, not
	// fall back to editing files under it. A second daemon on the same
	// spool fails here.
	if opts.ControlSocket != "" {
		if q.ctl, err = control.Listen(opts.ControlSocket); err != nil {
			q.spool.Close()
			return nil, fmt.Errorf("queue: control socket %s: %w", opts.ControlSocket, err)
		}
	}
	// Before recovery and any attempt, and after the socket (a second
	// daemon stopped there writes nothing): a flush before this start
	// may have had its attempt made unrecorded by the process before.
	if err := q.spool.Boot(); err != nil {
		q.spool.Close()
		if q.ctl != nil {
			q.ctl.Close()
		}
		return nil, err
	}
	if opts.RecoverInBackground {
		q.recoverInBackground()
	} else {
		sn, err := q.spool.Scan()
		if err == nil {
			err = q.recover(sn)
		}
		if err != nil {
			q.spool.Close()
			if q.ctl != nil {
				q.ctl.Close()
			}
			return nil, err
		}
	}
	q.registerGauges()
	return q, nil
}

// recoverInBackground lists and recovers the spool in a goroutine. Even the
// listing is not waited for (a million names take a second to read):
// Begin waits for it instead, since the snapshot must hold no name this
// process wrote.
func (q *Queue) recoverInBackground() {
	q.recovering.Store(true)
	q.recovered = make(chan struct{})
	q.scanned = make(chan struct{})
	go func() {
		defer close(q.recovered)
		defer q.recovering.Store(false)
		start := time.Now()
		// The heap grows to hold the whole queue while recovery makes
		// garbage at each message: at the default GOGC the collector
		// lets it reach twice what is live at its last cycle, and a
		// million queued messages peaked at 410-430 MB for 180 MB
		// live. Half that headroom while recovering (unless GOGC asks
		// for less, or for no collection).
		gc := debug.SetGCPercent(50)
		if gc < 50 {
			debug.SetGCPercent(gc)
		}
		sn, err := q.spool.Scan()
		close(q.scanned)
		if err == nil {
			err = q.recover(sn)
		}
		debug.SetGCPercent(gc)
		if err != nil {
			q.log.Error("queue: recovering the spool", "err", err)
			return
		}
		// What recovery read and listed (a file name, a trailer and a
		// state log per message) is garbage now, several times the
		// scheduler's ~130 bytes per message; the runtime would hand
		// those pages back to the OS over minutes. Once, now: a
		// million queued messages then cost ~150 MB of RSS, not ~400.
		debug.FreeOSMemory()
		q.log.Info("queue: spool recovered", "messages", q.Len(), "seconds", time.Since(start).Seconds())
	}()
}

// Recovering reports whether a background recovery is still reading the
// spool (/readyz says so); mail accepted meanwhile is safe and delivered.
func (q *Queue) Recovering() bool { return q.recovering.Load() }

// newQueue prepares directories and the group committer without recovering;
// the offline operations use it to write into a spool no daemon serves.
func newQueue(opts Options) (*Queue, error) {
	if opts.Dir == "" {
		return nil, errors.New("queue: no spool directory")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.Hostname == "" {
		opts.Hostname, _ = os.Hostname()
	}
	// A queue built in code (tests, offline commands) gets config's defaults.
	if opts.Config.Workers <= 0 {
		opts.Config.Workers = config.DefaultQueueWorkers
	}
	if len(opts.Config.Retry) == 0 {
		opts.Config.Retry = config.DefaultRetry()
	}
	if opts.Config.MaxAge <= 0 {
		opts.Config.MaxAge = config.DefaultQueueMaxAge
	}
	if opts.Config.BounceFrom == "" {
		opts.Config.BounceFrom = config.DefaultBounceFrom(opts.Hostname)
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 10 * time.Second
	}
	for _, d := range []string{opts.Dir, filepath.Join(opts.Dir, "corrupt"), filepath.Join(opts.Dir, "webhook")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("queue: create %s: %w", d, err)
		}
	}
	q := &Queue{
		opts:    opts,
		log:     opts.Logger,
		now:     opts.Now,
		rnd:     opts.Rand,
		entries: map[qid]*entry{},
		wake:    make(chan struct{}, 1),
		opened:  opts.Now(),
	}
	q.minFre = opts.MinFreeSpace
	if q.minFre == 0 && opts.Config.MinFreeSpace > 0 {
		q.minFre = uint64(opts.Config.MinFreeSpace)
	}
	sp, err := spool.Open(opts.Dir, spool.Options{Logger: opts.Logger, Now: opts.Now})
	if err != nil {
		return nil, err
	}
	q.spool = sp
	q.hooks = newWebhooks(q)
	return q, nil
}

func (q *Queue) registerGauges() {
	metrics.Default.NewGaugeFunc("sluice_queue_messages", "Messages in the spool.", func() float64 { return float64(q.Len()) })
	metrics.Default.NewGaugeFunc("sluice_queue_oldest_seconds", "Age of the oldest message in the spool.", func() float64 { return q.Oldest().Seconds() })
}

// Close stops the group committer. Call it after Run has returned.
func (q *Queue) Close() error {
	q.closeMu.Lock()
	defer q.closeMu.Unlock()
	if !q.closed {
		q.closed = true
		q.stopping.Store(true)
		if q.recovered != nil {
			<-q.recovered
		}
		q.spool.Close()
		q.mu.Lock()
		for _, e := range q.entries { // fresh messages never attempted
			if !e.inflight {
				e.fresh.Close()
				e.fresh = nil
			}
		}
		q.mu.Unlock()
		q.mu.Lock()
		running := q.running
		q.mu.Unlock()
		if q.ctl != nil && !running { // Run closes it when it ends
			q.ctl.Close()
			os.Remove(q.opts.ControlSocket)
		}
	}
	return nil
}

// Len returns the number of messages in the spool.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.entries)
}

// Oldest returns the age of the oldest message (0 when empty).
func (q *Queue) Oldest() time.Duration {
	q.mu.Lock()
	defer q.mu.Unlock()
	var oldest int64
	for _, e := range q.entries {
		if oldest == 0 || e.received < oldest {
			oldest = e.received
		}
	}
	if oldest == 0 {
		return 0
	}
	return q.now().Sub(time.Unix(0, oldest))
}

// FreeSpace returns the bytes available to this process on the spool's file system.
func (q *Queue) FreeSpace() (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(q.spool.Dir(), &st); err != nil {
		return 0, fmt.Errorf("queue: statfs %s: %w", q.spool.Dir(), err)
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Writable reports whether a message could be spooled now (for /readyz): the
// directory accepts a synced file and free space is above the minimum.
func (q *Queue) Writable() error {
	if err := q.checkSpace(); err != nil {
		return err
	}
	return q.spool.Probe()
}

// A statfs per draft was 1% of the CPU per message (issue 14). Begin
// reuses an answer for up to spaceTTL, and only one that left at least
// spaceMargin above min_free_space: within a second no load writes that
// much, so a disk filling up is still refused in time, and near the floor
// (or below it) every draft asks again, so the answer flips as soon as the
// disk does.
const (
	spaceTTL    = time.Second
	spaceMargin = 256 << 20
)

var spaceEpoch = time.Now()

// checkSpaceCached is checkSpace for Begin.
func (q *Queue) checkSpaceCached() error {
	if q.minFre == 0 {
		return nil
	}
	now := int64(time.Since(spaceEpoch)) + 1 // never 0
	if at := q.spaceOK.Load(); at != 0 && now-at < int64(spaceTTL) {
		return nil
	}
	free, err := q.FreeSpace()
	if err != nil {
		q.spaceOK.Store(0)
		return err
	}
	if free >= q.minFre+spaceMargin {
		q.spaceOK.Store(now)
	} else {
		q.spaceOK.Store(0)
	}
	return q.spaceAnswer(free)
}

// checkSpace asks the file system every time (Writable: /readyz).
func (q *Queue) checkSpace() error {
	if q.minFre == 0 {
		return nil
	}
	free, err := q.FreeSpace()
	if err != nil {
		return err
	}
	return q.spaceAnswer(free)
}

func (q *Queue) spaceAnswer(free uint64) error {
	if free < q.minFre {
		return fmt.Errorf("%w (%d bytes free, %d required)", ErrDiskFull, free, q.minFre)
	}
	return nil
}

// Draft is a message being received into the spool (spool.Draft); its
// Commit also schedules the message.
type Draft struct {
	*spool.Draft
	q *Queue
}

// Begin allocates a queue ID and a draft in the spool, or returns
// ErrDiskFull when free space is below the minimum.
func (q *Queue) Begin() (*Draft, error) {
	if err := q.checkSpaceCached(); err != nil {
		return nil, err
	}
	return q.beginUnchecked()
}

func (q *Queue) beginUnchecked() (*Draft, error) {
	if q.scanned != nil {
		<-q.scanned // no draft before recovery's snapshot is taken
	}
	d, err := q.spool.Begin()
	if err != nil {
		return nil, err
	}
	return &Draft{Draft: d, q: q}, nil
}

// Commit stores env and prefix with the message and makes it durable (see
// spool.Draft.Commit); when it returns nil the message survives kill -9 and
// power loss, and Run delivers it at once. On error nothing was accepted.
func (d *Draft) Commit(env *Envelope, prefix []byte) error {
	fresh, err := d.Draft.Commit(env, prefix)
	if err != nil {
		return err
	}
	id, _ := toQID(d.ID)
	d.q.addEntry(&entry{id: id, env: env, fresh: fresh})
	return nil
}
