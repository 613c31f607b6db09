package queue

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sluicemail/sluice/internal/control"
	"github.com/sluicemail/sluice/spool"
	"github.com/sluicemail/sluice/upstream"
)

// Run runs Config.Workers delivery workers, the webhook sender and the
// control socket until ctx is done. Then it takes no new work, lets
// in-flight deliveries finish for up to DrainTimeout (after which their
// context is cancelled), and returns; unfinished messages stay spooled.
func (q *Queue) Run(ctx context.Context) {
	q.mu.Lock()
	if q.running {
		q.mu.Unlock()
		q.log.Error("queue: Run called twice")
		return
	}
	q.running = true
	q.mu.Unlock()

	dctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.NewTimer(q.opts.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-dctx.Done():
		}
	})
	defer stopDrain()

	var wg sync.WaitGroup
	if q.ctl != nil {
		ln := q.ctl
		wg.Go(func() { control.Serve(ctx, ln, q.opts.ControlSocket, "queue", q.log, q.handleControl) })
	}
	if q.opts.Config.Webhook != "" {
		wg.Go(func() { q.hooks.run(ctx) })
	}
	for range q.opts.Config.Workers {
		wg.Go(func() { q.worker(ctx, dctx) })
	}
	wg.Wait()
}

func (q *Queue) worker(ctx, dctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for ctx.Err() == nil {
		e, wait := q.take()
		if e != nil {
			q.attempt(dctx, e)
			continue
		}
		sleep(ctx, timer, q.wake, wait)
	}
}

// sleep waits until ctx is done, wake signals or wait has passed (with no
// limit when wait is not positive), on timer, which it leaves stopped.
func sleep(ctx context.Context, timer *time.Timer, wake <-chan struct{}, wait time.Duration) {
	var tc <-chan time.Time
	if wait > 0 {
		timer.Reset(wait)
		tc = timer.C
	}
	select {
	case <-ctx.Done():
	case <-wake:
	case <-tc:
	}
	timer.Stop()
}

// take pops the earliest message if it is due, or says how long to wait for
// it (-1: the heap is empty).
func (q *Queue) take() (*entry, time.Duration) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.due) == 0 {
		return nil, -1
	}
	now := q.now()
	e := q.due[0]
	if d := time.Duration(e.next - now.UnixNano()); d > 0 {
		return nil, d
	}
	heap.Pop(&q.due)
	e.inflight = true
	if len(q.due) > 0 && q.due[0].next <= now.UnixNano() {
		q.poke() // pass the baton: another worker takes the next due message
	}
	return e, 0
}

// attempt makes one delivery attempt of e, recorded before it is made.
func (q *Queue) attempt(ctx context.Context, e *entry) {
	now := q.now()
	// While no upstream at all can take a delivery, none on this message's
	// route can: it waits for the first breaker without its envelope being
	// read (a million queued through an outage are not read again).
	if av, ok := q.opts.Deliverer.(upstream.Availability); ok {
		expiry := time.Unix(0, e.received).Add(q.opts.Config.MaxAge)
		if free, at := av.Available(nil, false); !free && now.Before(expiry) {
			if at.After(expiry) {
				at = expiry
			}
			if q.waitBreaker(e, at, now) {
				return
			}
		}
	}
	if err := q.loadEnv(e); err != nil {
		q.mu.Lock()
		e.inflight = false
		if errors.Is(err, os.ErrNotExist) { // deleted meanwhile
			delete(q.entries, e.id)
		} else {
			q.log.Error("queue: read spooled message; delivery postponed", "queue_id", e.id.String(), "err", err)
			q.scheduleLocked(e, now.Add(time.Minute))
		}
		q.mu.Unlock()
		return
	}
	expiry := e.env.Received.Add(q.opts.Config.MaxAge)
	// Made due (retry, flush, release) while every breaker of its route is
	// open, a message is not attempted: that would spend a retry step and
	// push it later. It waits for the first breaker to let one through.
	if av, ok := q.opts.Deliverer.(upstream.Availability); ok && now.Before(expiry) {
		if free, at := av.Available(e.env.Route, e.env.RequireTLS); !free {
			if at.After(expiry) {
				at = expiry
			}
			q.recordWait(e, at, now)
			e.fresh.Close() // no descriptor held while it waits; the attempt is recorded then
			e.fresh = nil
			q.finish(e, nil, at, nil)
			return
		}
	}
	q.mu.Lock()
	covered := e.covered // this process's flush is its advance record
	e.covered = false
	e.attempts++
	e.retried = false
	n := int(e.attempts)
	var pending []string
	for i, to := range e.env.To {
		if !e.rcpt.done(i) {
			pending = append(pending, to)
		}
	}
	q.mu.Unlock()

	next := now.Add(NextAttempt(q.opts.Config.Retry, n, q.rnd()))
	if next.After(expiry) && now.Before(expiry) {
		next = expiry // one last attempt exactly at max_age, then expiry
	}
	// Recorded before it is made, except a fresh message's first attempt:
	// spool.Attempt holds the rule and its exception.
	attempt := q.spool.Attempt
	if covered {
		attempt = q.spool.AttemptCovered
	}
	a, err := attempt(e.id.String(), e.fresh, Record{At: now, N: n, Next: next})
	e.fresh = nil
	if errors.Is(err, os.ErrNotExist) {
		// Deleted by a control action while recovery was scheduling it.
		q.mu.Lock()
		delete(q.entries, e.id)
		q.mu.Unlock()
		return
	}
	if err != nil {
		// Not recorded, so not attempted: try again later.
		q.log.Error("queue: cannot record attempt; delivery postponed", "queue_id", e.id.String(), "err", err)
		q.finish(e, nil, next, nil)
		return
	}
	msg := &upstream.Message{
		ID: e.id.String(), From: e.env.From, To: pending, Size: a.Size(), Route: e.env.Route, RequireTLS: e.env.RequireTLS,
		SMTPUTF8: e.env.SMTPUTF8,
		Open:     openPooled(a.Open),
	}
	res := q.opts.Deliverer.Deliver(ctx, msg)

	now = q.now()
	// The attempt's journal events go in one write, after its outcomes.
	jevs := q.journalAttempts(nil, e, pending, res, now)
	reply := lastReply(res)
	expired := !now.Before(expiry)
	var recs []Record
	var failed []dsnRcpt
	final := map[string]bool{}
	deferred := 0
	for i, to := range pending {
		var err error
		if i < len(res.Errs) {
			err = res.Errs[i]
		} else {
			err = errors.New("upstream: no result for this recipient")
		}
		if err == nil {
			q.log.Info("delivered", "queue_id", e.id.String(), "rcpt", to, "upstream", res.Upstream, "attempt", n)
			mDelivered.Inc(res.Upstream)
			recs = append(recs, Record{T: "rcpt", At: now, Rcpt: to, State: StateDelivered, Upstream: res.Upstream})
			final[to] = true
			jevs = q.journalOutcome(jevs, e, "delivered", to, res.Upstream, nil, reply, now)
			q.hooks.add("delivered", e, dsnRcpt{Addr: to, Status: "2.0.0", Diag: strings.TrimSpace("250 " + reply)})
			continue
		}
		f := classify(err)
		up := f.Upstream
		if up == "" {
			up = res.Upstream
		}
		switch {
		case !f.Temporary:
			q.log.Info("bounced", "queue_id", e.id.String(), "rcpt", to, "upstream", up, "err", f.Diag)
			mBounced.Inc()
			st := statusFor(f)
			recs = append(recs, Record{T: "rcpt", At: now, Rcpt: to, State: StateBounced, Upstream: up, Status: st, Diag: f.Diag})
			failed = append(failed, dsnRcpt{Addr: to, ORCPT: e.env.RcptOpts[to].ORCPT, Action: "failed", Status: st, Diag: f.Diag})
			final[to] = true
			jevs = q.journalOutcome(jevs, e, "bounced", to, up, err, "", now)
			if q.opts.Suppress != nil && f.Code >= 500 {
				q.opts.Suppress.Bounced(ctx, to, st, f.Diag, up)
			}
		case expired:
			diag := fmt.Sprintf("delivery time expired after %s; last error: %s", q.opts.Config.MaxAge, f.Diag)
			q.log.Info("expired", "queue_id", e.id.String(), "rcpt", to, "upstream", up, "err", f.Diag, "attempts", n)
			mExpired.Inc()
			recs = append(recs, Record{T: "rcpt", At: now, Rcpt: to, State: StateExpired, Upstream: up, Status: "4.4.7", Diag: diag})
			failed = append(failed, dsnRcpt{Addr: to, ORCPT: e.env.RcptOpts[to].ORCPT, Action: "failed", Status: "4.4.7", Diag: diag})
			final[to] = true
			jevs = q.journalOutcome(jevs, e, "expired", to, up, err, "", now)
		default:
			args := []any{"queue_id", e.id.String(), "rcpt", to, "upstream", up, "err", f.Diag, "attempt", n, "next_attempt", next}
			if f.PossibleDuplicate {
				args = append(args, "possible_duplicate", true)
			}
			q.log.Info("deferred", args...)
			mDeferred.Inc(up)
			recs = append(recs, Record{T: "rcpt", At: now, Rcpt: to, State: stateDeferred, Upstream: up, Status: statusFor(f), Diag: f.Diag})
			deferred++
			jevs = q.journalOutcome(jevs, e, "deferred", to, up, err, "", now)
			q.hooks.add("deferred", e, dsnRcpt{Addr: to, Status: statusFor(f), Diag: f.Diag})
		}
	}
	q.journal(jevs...)

	// Reports and webhook events are spooled before the outcome is recorded:
	// a crash in between repeats a report, never loses one.
	if len(failed) > 0 {
		q.sendDSN(e, failed)
		for _, r := range failed {
			ev := "bounced"
			if r.Status == "4.4.7" {
				ev = "expired"
			}
			q.hooks.add(ev, e, r)
		}
	}
	if deferred > 0 && q.opts.Config.DelayWarning > 0 && !e.warned && now.Sub(e.env.Received) >= q.opts.Config.DelayWarning {
		var delayed []dsnRcpt
		for _, r := range recs {
			if r.State == stateDeferred {
				delayed = append(delayed, dsnRcpt{Addr: r.Rcpt, ORCPT: e.env.RcptOpts[r.Rcpt].ORCPT, Action: "delayed", Status: r.Status, Diag: r.Diag})
			}
		}
		q.sendDSN(e, delayed)
		for _, r := range delayed {
			q.hooks.add("delayed", e, r)
		}
		e.warned = true
		recs = append(recs, Record{T: "warned", At: now})
	}
	// A message with every recipient final is removed next; its removal is
	// the record of the outcome. Otherwise the outcomes are logged (with
	// the first attempt of a fresh message).
	if deferred > 0 || len(recs) > len(final) {
		if err := a.Record(recs...); err != nil {
			q.log.Error("queue: cannot record delivery outcome", "queue_id", e.id.String(), "err", err)
		}
	}

	q.finish(e, final, next, a)
}

// recordWait notes in e's state log that it waits for a breaker until at,
// when a retry or release had recorded it due now (so `queue list` shows
// the later time) and the wait is long. A message made due by its own
// schedule writes nothing: its last attempt record already says when that
// was, and a million of them waiting out an outage would each create a log.
// Not fsync'd: a crash only makes it due sooner.
func (q *Queue) recordWait(e *entry, at, now time.Time) {
	q.mu.Lock()
	retried := e.retried
	e.retried = false
	q.mu.Unlock()
	if retried && at.Sub(now) > time.Minute {
		q.spool.Record(e.id.String(), false, Record{T: "retry", At: at})
	}
}

// waitBreaker puts e, taken by a worker, back in the heap at at, the first
// time a breaker lets a delivery through, without an attempt; false when
// it was deleted meanwhile (the attempt path finishes that).
func (q *Queue) waitBreaker(e *entry, at, now time.Time) bool {
	q.mu.Lock()
	removed := e.removed
	q.mu.Unlock()
	if removed {
		return false
	}
	q.recordWait(e, at, now)
	e.fresh.Close() // no descriptor held while it waits; the attempt is recorded then
	e.fresh = nil
	q.mu.Lock()
	defer q.mu.Unlock()
	if e.removed {
		// Deleted while the record was written: the attempt path removes it.
		return false
	}
	e.inflight = false
	e.retryNow = false // a retry asked for while every breaker is open waits too
	e.env = nil
	q.scheduleLocked(e, at)
	q.poke()
	return true
}

// finish ends attempt a (nil: none was made): it marks final recipients, and
// removes the message when none is pending or reschedules it at next.
func (q *Queue) finish(e *entry, final map[string]bool, next time.Time, a *spool.Attempt) {
	q.mu.Lock()
	e.inflight = false
	pending := 0
	for i, to := range e.env.To {
		if final[to] {
			e.rcpt.set(i)
		}
		if !e.rcpt.done(i) {
			pending++
		}
	}
	removed, silent := e.removed, e.silent
	if pending == 0 || removed {
		// Files go first: once the entry leaves the map (Len) the message
		// is gone from disk too. It is in no heap, so no worker takes it.
		q.mu.Unlock()
		if removed && !silent && pending > 0 {
			q.bounceDeleted(e)
		}
		if a != nil {
			if err := a.Finish(); err != nil {
				q.log.Error("queue: remove finished message", "queue_id", e.id.String(), "err", err)
			}
		} else {
			q.removeFiles(e.id.String(), nil)
		}
		q.mu.Lock()
		delete(q.entries, e.id)
		q.mu.Unlock()
		return
	}
	if a != nil { // a queued message holds no descriptor
		a.Close()
	}
	if e.retryNow { // retry or release arrived during the attempt
		e.retryNow = false
		next = q.now()
	}
	e.env = nil // read again at the next attempt: a queued message stays small
	q.scheduleLocked(e, next)
	q.mu.Unlock()
	q.poke()
}
