package main

import (
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/statuspage"
)

// journalDir is where state_dir keeps the delivery journal.
func journalDir(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "journal") }

func openJournal(cfg *config.Config, log *slog.Logger) (*journal.Journal, error) {
	jc := cfg.Journal
	if jc.Retention == 0 { // --state-dir: no config was read
		jc.Retention = config.DefaultJournalRetention
	}
	if jc.MaxSize == 0 {
		jc.MaxSize = config.DefaultJournalMaxSize
	}
	return journal.Open(journal.Options{
		Dir:       journalDir(cfg),
		Retention: jc.Retention,
		MaxSize:   int64(jc.MaxSize),
		// The journal leaves the spool's floor alone: below it, events
		// are dropped before the spool's own records are refused.
		MinFreeSpace: uint64(max(cfg.Queue.MinFreeSpace, 0)),
		Logger:       log,
	})
}

// journalSink forwards to the daemon's journal once it is open (the queue
// is opened first, and appends nothing before Run).
type journalSink struct {
	j atomic.Pointer[journal.Journal]
}

func (s *journalSink) set(j *journal.Journal) { s.j.Store(j) }

func (s *journalSink) Append(evs ...journal.Event) {
	if j := s.j.Load(); j != nil {
		j.Append(evs...)
	}
}

// offlineJournal is the sink of `sluice queue` acting on the spool files
// with no daemon running: the journal is opened at the first event.
type offlineJournal struct {
	cfg  *config.Config
	once sync.Once
	j    *journal.Journal
}

func (o *offlineJournal) Append(evs ...journal.Event) {
	o.once.Do(func() {
		j, err := openJournal(o.cfg, slog.Default())
		if err != nil {
			slog.Default().Warn("journal: cannot open; event not recorded", "err", err)
			return
		}
		o.j = j
	})
	if o.j != nil {
		o.j.Append(evs...)
	}
}

func (o *offlineJournal) Close() {
	if o.j != nil {
		o.j.Close()
	}
}

// statusPage is the page of http.status (DESIGN §8.3), fed by the running
// daemon; users follow SIGHUP reloads.
func (d *daemon) statusPage() *statuspage.Handler {
	return statuspage.New(statuspage.Options{
		Hostname: d.cfg.Hostname,
		Version:  version,
		Users: func() map[string]string {
			d.keysMu.RLock()
			defer d.keysMu.RUnlock()
			return d.cfg.HTTP.StatusUsers
		},
		Upstreams: func() []statuspage.Upstream {
			var out []statuspage.Upstream
			for _, s := range d.disp.p.Load().Status() {
				out = append(out, statuspage.Upstream{Name: s.Name, Breaker: s.Breaker, Port: s.Port, InFlight: s.InFlight, LastError: s.LastError, LastAt: s.LastErrorAt})
			}
			return out
		},
		Queue: func() statuspage.Queue {
			return statuspage.Queue{Messages: d.queue.Len(), Oldest: d.queue.Oldest(), Held: d.queue.Held()}
		},
		Journal: func() statuspage.Journal {
			if j := d.jsink.j.Load(); j != nil {
				return j
			}
			return nil
		},
		Now:    time.Now,
		Logger: d.log,
	})
}
