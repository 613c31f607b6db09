package main

import (
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/journal"
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
		Logger:    log,
	})
}

// journalSink forwards to the daemon's journal once it is open (the queue
// is opened first, and appends nothing before Run).
type journalSink struct {
	j atomic.Pointer[journal.Journal]
}

func (s *journalSink) set(j *journal.Journal) { s.j.Store(j) }

func (s *journalSink) Append(e journal.Event) {
	if j := s.j.Load(); j != nil {
		j.Append(e)
	}
}

// offlineJournal is the sink of `sluice queue` acting on the spool files
// with no daemon running: the journal is opened at the first event.
type offlineJournal struct {
	cfg  *config.Config
	once sync.Once
	j    *journal.Journal
}

func (o *offlineJournal) Append(e journal.Event) {
	o.once.Do(func() {
		j, err := openJournal(o.cfg, slog.Default())
		if err != nil {
			slog.Default().Warn("journal: cannot open; event not recorded", "err", err)
			return
		}
		o.j = j
	})
	if o.j != nil {
		o.j.Append(e)
	}
}

func (o *offlineJournal) Close() {
	if o.j != nil {
		o.j.Close()
	}
}
