package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/hooks"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/suppress"
)

const suppressionUsage = "usage: sluice suppression list [--json] | add ADDR [--reason TEXT] | remove ADDR | check ADDR   [-c FILE | --state-dir DIR]"

// suppressionFiles are where a single instance keeps the list, the index of
// accepted messages, and the socket the daemon answers commands on.
func suppressionLog(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "suppression.log") }
func suppressionIndex(cfg *config.Config) string {
	return filepath.Join(cfg.StateDir, "hooks-index.log")
}
func suppressionSocket(cfg *config.Config) string {
	return filepath.Join(cfg.StateDir, "suppression.sock")
}

// suppressStores are the list's store and, when the hooks are on, the
// index's: both in Redis when ratelimit.redis is set (shared by every
// instance), else local logs under state_dir.
type suppressStores struct {
	list, index suppress.Store
	redis       *suppress.RedisStore
}

func openSuppressStores(cfg *config.Config, withIndex bool) (*suppressStores, error) {
	s := &suppressStores{}
	if cfg.RateLimit.Redis != "" {
		r, err := suppress.OpenRedis(cfg.RateLimit.Redis, 0)
		if err != nil {
			return nil, err
		}
		s.redis, s.list = r, r
		if withIndex {
			s.index = r
		}
		return s, nil
	}
	var err error
	if s.list, err = suppress.OpenFile(suppressionLog(cfg), true, nil); err != nil {
		return nil, err
	}
	if withIndex {
		// Not fsync'd per message: a lost entry only leaves a provider's
		// report unmatched, and acceptance must not pay a second fsync.
		if s.index, err = suppress.OpenFile(suppressionIndex(cfg), false, nil); err != nil {
			s.list.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *suppressStores) Close() {
	if s.redis != nil {
		s.redis.Close()
		return
	}
	s.list.Close()
	if s.index != nil {
		s.index.Close()
	}
}

// runSuppression shows and edits the suppression list: through the running
// daemon's socket, or on the list itself (Redis, or the file no daemon holds).
func runSuppression(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := newFlags("suppression")
	asJSON := fs.Bool("json", false, "list, check: JSON, one object per line")
	reason := fs.String("reason", "", "add: why (shown by list and check)")
	dev := fs.Bool("dev", false, "the --dev mode's list")
	stateDir := fs.String("state-dir", "", "the daemon's state_dir, instead of reading it from the config")
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) == 0 {
		return usageErr(stderr, suppressionUsage)
	}
	req := suppress.Request{Cmd: pos[0], JSON: *asJSON, Reason: *reason}
	switch pos[0] {
	case "list":
		if len(pos) != 1 {
			return usageErr(stderr, suppressionUsage)
		}
	case "add", "remove", "check":
		if len(pos) != 2 {
			return usageErr(stderr, suppressionUsage)
		}
		req.Addr = pos[1]
	default:
		return usageErr(stderr, suppressionUsage)
	}
	cfg, err := stateConfig(*path, *dev, *stateDir)
	if err != nil {
		return err
	}
	rep, err := suppressionDo(cfg, req)
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, rep.Out)
	if rep.Error != "" {
		return &exitError{code: max(rep.Code, 1), msg: "sluice suppression: " + rep.Error}
	}
	if rep.Code != 0 {
		return &exitError{code: rep.Code}
	}
	return nil
}

// suppressionDo asks the daemon, or works on the list when none runs.
func suppressionDo(cfg *config.Config, req suppress.Request) (suppress.Reply, error) {
	rep, err := suppress.Control(suppressionSocket(cfg), req)
	if !errors.Is(err, suppress.ErrNoDaemon) {
		return rep, err
	}
	st, err := openSuppressStores(cfg, false)
	if err != nil {
		return suppress.Reply{}, err
	}
	defer st.Close()
	ttl := cfg.Suppression.TTL
	if ttl <= 0 {
		ttl = config.DefaultSuppressionTTL
	}
	l := suppress.NewList(st.list, ttl, slog.New(slog.DiscardHandler), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return suppress.Exec(ctx, l, req), nil
}

// suppression is the daemon's part: the list (nil when disabled), the
// index (nil without hooks) and the control socket.
type suppression struct {
	stores *suppressStores
	list   *suppress.List
	index  *suppress.Index
	stop   func()
}

func openSuppression(cfg *config.Config, log *slog.Logger) (*suppression, error) {
	hooks := cfg.Hooks.Token != ""
	if !cfg.Suppression.On() && !hooks {
		return &suppression{}, nil
	}
	st, err := openSuppressStores(cfg, hooks)
	if err != nil {
		if errors.Is(err, suppress.ErrLocked) {
			return nil, fmt.Errorf("%w: is another sluice serve using %s?", err, cfg.StateDir)
		}
		return nil, err
	}
	s := &suppression{stores: st}
	if cfg.Suppression.On() {
		s.list = suppress.NewList(st.list, cfg.Suppression.TTL, log, nil)
		s.list.RegisterGauge()
		if s.stop, err = suppress.Serve(context.Background(), suppressionSocket(cfg), s.list); err != nil {
			st.Close()
			return nil, err
		}
	}
	if hooks {
		s.index = suppress.NewIndex(st.index, cfg.Hooks.IndexTTL, log)
	}
	return s, nil
}

// wrap returns the relay's journal sink, which with the hooks on also
// feeds every accepted message to the index (Redis or local): the journal
// stays local, the index is what another instance can match against.
func (s *suppression) wrap(next journal.Sink) journal.Sink {
	if s.index == nil {
		return next
	}
	return indexingSink{next: next, ix: s.index}
}

type indexingSink struct {
	next journal.Sink
	ix   *suppress.Index
}

func (i indexingSink) Append(evs ...journal.Event) {
	i.next.Append(evs...)
	for _, e := range evs {
		if e.Event == journal.Accepted {
			i.ix.Enqueue(suppress.Message{QueueID: e.QueueID, MessageID: e.MessageID, Sender: e.Sender,
				Recipients: e.Recipients, Route: e.Route, Accepted: e.Time})
		}
	}
}

func (s *suppression) Close() {
	if s.stop != nil {
		s.stop()
	}
	if s.index != nil {
		s.index.Close()
	}
	if s.stores != nil {
		s.stores.Close()
	}
}

// hooks is the providers' webhook handler (nil when hooks.token is unset).
func (d *daemon) hooks() http.Handler {
	if d.cfg.Hooks.Token == "" || d.supp.index == nil {
		return nil
	}
	return hooks.New(hooks.Options{
		Token:             d.cfg.Hooks.Token,
		MailgunSigningKey: d.cfg.Hooks.MailgunSigningKey,
		Index:             d.supp.index,
		List:              d.supp.list,
		DSN:               d.queue.BounceReported,
		Journal:           &d.jsink,
		Webhook:           d.queue.Webhook,
		Logger:            d.log,
	})
}
