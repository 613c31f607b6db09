package queue

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/sluicemail/sluice/internal/control"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/spool"
)

// Info is one message as `sluice queue list` shows it.
type Info struct {
	ID          string     `json:"id"`
	Sender      string     `json:"sender"`
	Recipients  []RcptInfo `json:"recipients"`
	Received    time.Time  `json:"received"`
	AgeSeconds  int64      `json:"age_seconds"`
	Size        int64      `json:"size"`
	Attempts    int        `json:"attempts"`
	NextAttempt *time.Time `json:"next_attempt"` // null: due now (never attempted)
	LastError   string     `json:"last_error"`
	Held        bool       `json:"held"`
	User        string     `json:"user,omitempty"`
	Route       []string   `json:"route,omitempty"`
}

// RcptInfo is one recipient and its state: pending|delivered|bounced|expired.
type RcptInfo struct {
	Address    string `json:"address"`
	State      string `json:"state"`
	Status     string `json:"status,omitempty"`
	Diagnostic string `json:"diagnostic,omitempty"`
}

// Detail is what `sluice queue show ID` prints.
type Detail struct {
	Info
	Client  string   `json:"client,omitempty"`
	EnvID   string   `json:"envid,omitempty"`
	Ret     string   `json:"ret,omitempty"`
	Signed  bool     `json:"dkim_signed"`
	Headers string   `json:"headers"` // the message's header block
	History []Record `json:"history"` // the state log and the flush and boot events since reception, oldest first
}

// List reads every message in the spool directory dir (Options.Dir),
// oldest first. It only reads files, so it is safe while serve runs.
func List(dir string) ([]Info, error) {
	var out []Info
	err := Walk(dir, func(in Info) error { out = append(out, in); return nil })
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, err
}

// Walk calls fn with each message in dir as it is read, in directory order
// (not sorted): `queue list --json` streams, its memory the same for ten
// messages or a million. It only reads files, so it is safe while serve runs.
func Walk(dir string, fn func(Info) error) error {
	sp := spool.View(dir, spool.Options{})
	now := time.Now()
	err := sp.Walk(func(id string) error {
		m, err := sp.ReadEnvelope(id) // a listing needs no DKIM prefix
		if errors.Is(err, os.ErrNotExist) {
			return nil // delivered while we looked
		}
		if err != nil {
			return fmt.Errorf("queue: read %s: %w", id, err)
		}
		return fn(detail(m, now).Info)
	})
	if err != nil {
		return fmt.Errorf("queue: read spool %s: %w", dir, err)
	}
	return nil
}

// Show reads one message with its headers and history.
func Show(dir, id string) (*Detail, error) {
	if !spool.ValidID(id) {
		return nil, fmt.Errorf("queue: %q is not a queue ID", id)
	}
	d, err := show(spool.View(dir, spool.Options{}), id, time.Now())
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("queue: no message %s in %s", id, dir)
	}
	return d, err
}

func show(sp *spool.Spool, id string, now time.Time) (*Detail, error) {
	m, err := sp.Read(id)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("queue: read %s: %w", id, err)
	}
	d := detail(m, now)
	d.History = m.History()
	rc, size, err := sp.Body(id)
	if err != nil {
		return nil, err
	}
	h, _, err := readOriginal(rc, size, false)
	rc.Close()
	if err != nil {
		return nil, err
	}
	d.Headers = string(h)
	return d, nil
}

// detail is what the envelope and state of a message read tell (a listing
// needs no more); show adds the history and the headers.
func detail(m *spool.Message, now time.Time) *Detail {
	st := m.Recorded() // attempts as recorded: 0 before a recorded one
	env := m.Env
	d := &Detail{
		Info: Info{
			ID: m.ID, Sender: env.From, Received: env.Received, AgeSeconds: int64(now.Sub(env.Received).Seconds()),
			Size: m.Size(), Attempts: st.Attempts, LastError: st.LastErr, Held: st.Held,
			User: env.User, Route: env.Route,
		},
		Client: env.Client, EnvID: env.EnvID, Ret: env.Ret, Signed: len(m.Prefix) > 0,
	}
	if !st.Next.IsZero() {
		t := st.Next
		d.NextAttempt = &t
	}
	for _, to := range env.To {
		r := st.Rcpt[to]
		ri := RcptInfo{Address: to, State: st.RcptState(to)}
		if ri.State != StatePending && ri.State != StateDelivered {
			ri.Status, ri.Diagnostic = r.Status, r.Diag
		}
		d.Recipients = append(d.Recipients, ri)
	}
	return d
}

// ErrNoDaemon means no serve process listens on the control socket.
var ErrNoDaemon = control.ErrNoDaemon

// Action is one thing `sluice queue` asks of the queue.
type Action string

const (
	ActionRetry   Action = "retry"   // due now (ID, or All)
	ActionHold    Action = "hold"    // no attempt until released
	ActionRelease Action = "release" // due now again
	ActionDelete  Action = "delete"  // gone; pending recipients bounce unless Silent
	ActionFlush   Action = "flush"   // every message due now (retry with All)
)

// Request is one action, as the command line builds it, the control socket
// carries it (JSON) and the queue runs it: typed fields, never flag
// strings parsed again on the daemon's side.
type Request struct {
	Action Action `json:"action"`
	ID     string `json:"id,omitempty"`     // the message; empty with All and flush
	All    bool   `json:"all,omitempty"`    // retry: every message
	Silent bool   `json:"silent,omitempty"` // delete: no bounce
}

// Check says what is wrong with r, on either side of the socket.
func (r Request) Check() error {
	switch r.Action {
	case ActionFlush:
		if r.ID != "" || r.Silent {
			return errors.New("queue: flush takes no ID and no --silent")
		}
		return nil
	case ActionRetry, ActionHold, ActionRelease, ActionDelete:
	default:
		return fmt.Errorf("queue: unknown action %q", r.Action)
	}
	if r.Silent && r.Action != ActionDelete {
		return fmt.Errorf("queue: --silent is for delete, not %s", r.Action)
	}
	if r.All {
		if r.Action != ActionRetry || r.ID != "" {
			return fmt.Errorf("queue: --all is for retry without an ID")
		}
		return nil
	}
	if r.ID == "" {
		return fmt.Errorf("queue: %s needs one queue ID", r.Action)
	}
	if !spool.ValidID(r.ID) {
		return fmt.Errorf("queue: %q is not a queue ID", r.ID)
	}
	return nil
}

type ctlReply struct {
	Out string `json:"out"`
	Err string `json:"error,omitempty"`
}

// Control sends one request to the running daemon. When none listens it
// returns an error wrapping ErrNoDaemon; Do then applies it to the files.
func Control(socketPath string, req Request) (string, error) {
	if err := req.Check(); err != nil {
		return "", err
	}
	var rep ctlReply
	if err := control.Call(socketPath, req, &rep); err != nil {
		return "", fmt.Errorf("queue: %w", err)
	}
	if rep.Err != "" {
		return rep.Out, errors.New(rep.Err)
	}
	return rep.Out, nil
}

// Do performs a request through the daemon's control socket, or, when no
// daemon listens, directly on the spool files (Apply). opts needs Dir and
// ControlSocket; Config, Hostname and Sign shape bounces made offline.
func Do(opts Options, req Request) (string, error) {
	if opts.ControlSocket != "" {
		out, err := Control(opts.ControlSocket, req)
		if !errors.Is(err, ErrNoDaemon) {
			return out, err
		}
	}
	return Apply(opts, req)
}

// Apply performs a request directly on the spool files. Use it only when no
// daemon runs (Do decides): a running daemon keeps its schedule in memory.
func Apply(opts Options, req Request) (string, error) {
	if err := req.Check(); err != nil {
		return "", err
	}
	q, err := newQueue(opts)
	if err != nil {
		return "", err
	}
	defer q.Close()
	// Messages a crashed serve left in their slots get their names, as its
	// next start would give them: the actions find messages by name.
	if err := q.spool.AdoptSlots(); err != nil {
		return "", err
	}
	return q.action(req, true)
}

// action runs one checked request; offline, it works on the files alone.
func (q *Queue) action(req Request, offline bool) (string, error) {
	if req.Action == ActionFlush || req.All {
		return q.flush(offline)
	}
	id := req.ID
	m, err := q.spool.Read(id)
	if err != nil {
		return "", fmt.Errorf("queue: no message %s", id)
	}
	env := m.Env
	switch req.Action {
	case ActionRetry:
		err = q.retry(id, offline)
	case ActionHold:
		err = q.setHold(id, true, offline)
	case ActionRelease:
		err = q.setHold(id, false, offline)
	case ActionDelete:
		err = q.remove(id, req.Silent, offline)
	}
	if err != nil {
		return "", err
	}
	if ev := map[Action]string{ActionHold: "held", ActionRelease: "released", ActionDelete: "deleted"}[req.Action]; ev != "" && env != nil {
		q.journal(journal.Event{Event: ev, QueueID: id, MessageID: env.MessageID, Sender: env.From, By: "cli"})
	}
	return fmt.Sprintf("%s: %s done\n", id, req.Action), nil
}

// flush makes every queued message due now: one spool-wide event, fsync'd
// first (spool.Flush; no record per message), then, online, every entry
// rescheduled. Messages recovery has not read yet fold the event in when
// it reads them, and are due at once too.
func (q *Queue) flush(offline bool) (string, error) {
	at, err := q.spool.Flush()
	if err != nil {
		return "", err
	}
	n := 0
	if offline {
		err := q.spool.Walk(func(string) error { n++; return nil })
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("%d message(s) scheduled now\n", n), nil
	}
	q.mu.Lock()
	for _, e := range q.entries {
		e.retried = true
		// The flush is the advance record of the next attempt of every
		// message not held (spool.AttemptCovered); one never attempted
		// yet is fresh and needs none.
		if !e.held && e.attempts > 0 {
			e.covered = true
		}
		q.scheduleLocked(e, at)
	}
	n = len(q.entries)
	q.mu.Unlock()
	q.poke()
	if q.recovering.Load() {
		return fmt.Sprintf("%d message(s) scheduled now, and the rest as recovery reads them\n", n), nil
	}
	return fmt.Sprintf("%d message(s) scheduled now\n", n), nil
}

func (q *Queue) retry(id string, offline bool) error {
	now := q.now()
	// Recorded before it is scheduled: a worker that then finds every
	// breaker open records the later time after this one.
	err := q.spool.Record(id, false, Record{T: "retry", At: now})
	if !offline {
		q.mu.Lock()
		if e := q.entries[qidOf(id)]; e != nil {
			e.retried = true
			q.scheduleLocked(e, now)
		}
		q.mu.Unlock()
		q.poke()
	}
	return err
}

func (q *Queue) setHold(id string, hold bool, offline bool) error {
	now := q.now()
	t := "release"
	if hold {
		t = "hold"
	}
	// Recorded first: a hold must survive a restart.
	if err := q.spool.Record(id, true, Record{T: t, At: now}); err != nil {
		return err
	}
	if offline {
		return nil
	}
	q.mu.Lock()
	if e := q.entries[qidOf(id)]; e != nil {
		e.held = hold
		if hold && e.index >= 0 {
			heap.Remove(&q.due, int(e.index))
		}
		if !hold {
			e.retried = true
			q.scheduleLocked(e, now)
		}
	}
	q.mu.Unlock()
	q.poke()
	return nil
}

// remove deletes a message; unless silent its pending recipients bounce.
func (q *Queue) remove(id string, silent, offline bool) error {
	var e *entry
	if !offline {
		q.mu.Lock()
		e = q.entries[qidOf(id)]
		if e != nil && e.inflight {
			e.removed, e.silent = true, silent // the worker finishes the job
			q.mu.Unlock()
			return nil
		}
		if e != nil {
			delete(q.entries, e.id)
			if e.index >= 0 {
				heap.Remove(&q.due, int(e.index))
			}
		}
		q.mu.Unlock()
	}
	if e == nil {
		m, err := q.spool.Read(id)
		if err != nil {
			return fmt.Errorf("queue: read %s: %w", id, err)
		}
		st := m.State()
		e = &entry{id: qidOf(id), env: m.Env}
		for i, to := range m.Env.To {
			if st.RcptState(to) != StatePending {
				e.rcpt.set(i)
			}
		}
	} else if err := q.loadEnv(e); err != nil { // it waited without its envelope
		return fmt.Errorf("queue: read %s: %w", id, err)
	}
	if !silent {
		q.bounceDeleted(e)
	}
	q.log.Info("queue: message deleted", "queue_id", id, "silent", silent)
	q.removeFiles(id, e.fresh) // a fresh message still holds its draft's descriptor
	e.fresh = nil
	return nil
}

// bounceDeleted reports the pending recipients of a deleted message.
func (q *Queue) bounceDeleted(e *entry) {
	var rcpts []dsnRcpt
	for i, to := range e.env.To {
		if e.rcpt.done(i) {
			continue
		}
		r := dsnRcpt{Addr: to, ORCPT: e.env.RcptOpts[to].ORCPT, Action: "failed", Status: "5.0.0", Diag: "message deleted from the queue by the administrator"}
		q.log.Info("bounced", "queue_id", e.id, "rcpt", to, "err", r.Diag)
		mBounced.Inc()
		rcpts = append(rcpts, r)
		q.hooks.add("bounced", e, r)
	}
	q.sendDSN(e, rcpts)
}

// handleControl runs one request from the control socket (control.Serve
// has decoded it strictly, checked it and checked the peer).
func (q *Queue) handleControl(_ context.Context, req Request) any {
	out, err := q.action(req, false)
	rep := ctlReply{Out: out}
	if err != nil {
		rep.Err = err.Error()
	}
	q.log.Info("queue: control action", "action", req.Action, "id", req.ID, "all", req.All, "silent", req.Silent, "err", rep.Err)
	return rep
}
