package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"golang.org/x/time/rate"
)

var (
	mUp          = metrics.Default.NewGaugeVec("sluice_upstream_up", "1 when the upstream's circuit breaker is closed or half-open, 0 when open.", "upstream")
	mAttempts    = metrics.Default.NewCounterVec("sluice_upstream_attempts_total", "Delivery attempts per upstream.", "upstream")
	mFailures    = metrics.Default.NewCounterVec("sluice_upstream_failures_total", "Failed delivery attempts per upstream.", "upstream")
	mDispatchers = metrics.Default.NewGauge("sluice_upstream_dispatchers", "Dispatchers built and not yet closed: 1, or 2 while one replaced by a reload finishes its deliveries.")
)

// Dispatcher delivers messages to the configured upstreams. It is safe for
// concurrent use; each Deliver call is one attempt at the message, with
// failover across ports and upstreams inside it.
//
// Lifecycle: New builds it and touches nothing outside (no goroutine, no
// metric, no status file), so a configuration refused after New costs
// nothing but Close. Start makes it the live one: it takes over the
// previous dispatcher's breakers and remembered ports (a reload), or the
// ports of the last run's status file (a start), publishes
// sluice_upstream_up and the status file, and re-probes ports in the
// background. Close ends it.
type Dispatcher struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time
	ups  []*upstream // config order

	rmu sync.Mutex
	rnd *rand.Rand

	live      atomic.Bool // started and not yet replaced: owns the metric and the status file
	startOnce sync.Once
	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
	changed   chan struct{} // status changed (buffered 1)
}

// upstream is one configured upstream: its pool, limiter, breaker and
// remembered port.
type upstream struct {
	d       *Dispatcher
	cfg     config.Upstream
	tls     *tls.Config
	limiter *rate.Limiter // nil: unlimited
	tokens  *tokenSource
	maildir bool
	api     apiSender    // an HTTPS API upstream; nil for SMTP and maildir
	http    *http.Client // the API's client
	pool    *pool

	discover sync.Mutex // held while a delivery finds the first working port

	mu        sync.Mutex // guards the fields below
	breaker   breaker
	port      int // remembered port, 0: none
	portAt    time.Time
	reprobing bool
	utf8      offer // whether the last session offered SMTPUTF8
	lastErr   string
	lastErrAt time.Time
}

// offer is what an upstream said of an extension at its last EHLO.
type offer int

const (
	unknown offer = iota
	offered
	notOffered
)

// New prepares the upstreams' TLS, limiters and pools from validated
// config (defaults filled). It opens no connection and starts nothing.
func New(opts Options) (*Dispatcher, error) {
	d := &Dispatcher{opts: opts, log: opts.Logger, now: opts.Now, rnd: opts.Rand,
		done: make(chan struct{}), changed: make(chan struct{}, 1)}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.rnd == nil {
		seed := uint64(time.Now().UnixNano())
		d.rnd = rand.New(rand.NewPCG(seed, seed>>7))
	}
	if d.opts.IdleTimeout <= 0 {
		d.opts.IdleTimeout = 30 * time.Second
	}
	if d.opts.Hostname == "" {
		h, _ := os.Hostname()
		d.opts.Hostname = h
	}
	if len(opts.Upstreams) == 0 {
		return nil, errors.New("upstream: no upstreams configured")
	}
	for _, c := range opts.Upstreams {
		u, err := d.newUpstream(c)
		if err != nil {
			return nil, err
		}
		d.ups = append(d.ups, u)
	}
	mDispatchers.Add(1)
	return d, nil
}

// newUpstream prepares c's pool, limiter and TLS. c comes validated and
// with its defaults filled by config (config.Upstream.WithDefaults for one
// built in code): nothing is defaulted or checked again here.
func (d *Dispatcher) newUpstream(c config.Upstream) (*upstream, error) {
	u := &upstream{d: d, cfg: c, pool: newPool(c.MaxConnections), breaker: breaker{first: c.BreakerBackoff}}
	if !c.Rate.Unlimited() && c.Rate.Per > 0 {
		// Providers state a ceiling per second; a bucket with burst N would
		// let 2N through in one second, so messages are spaced evenly.
		u.limiter = rate.NewLimiter(rate.Limit(float64(c.Rate.N)/c.Rate.Per.Seconds()), 1)
	}
	if c.Type == config.UpstreamMaildir {
		u.maildir = true
		return u, nil
	}
	if d.opts.RootCAs != nil {
		u.tls = d.opts.RootCAs.Clone()
	} else {
		u.tls = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	u.tls.ServerName = c.Host
	if c.TLSServerName != "" {
		u.tls.ServerName = c.TLSServerName
	}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("upstream: %s: tls_ca_file: %w", c.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("upstream: %s: tls_ca_file %s: no PEM certificate", c.Name, c.TLSCAFile)
		}
		u.tls.RootCAs = pool
	}
	if c.TLSInsecureSkipVerify {
		u.tls.InsecureSkipVerify = true
		d.log.Warn("upstream TLS certificate is not verified (tls_insecure_skip_verify)", "upstream", c.Name)
	}
	if c.API != "" {
		u.tls.ServerName = "" // the endpoint URL's host
		return u, u.newAPI(context.Background())
	}
	if c.AuthMechanism == config.AuthXOAUTH2 {
		u.tokens = &tokenSource{cfg: c.OAuth2, now: d.now, client: &http.Client{Timeout: c.ConnectTimeout + c.Timeout}}
	}
	return u, nil
}

// Start makes d the live dispatcher. With old (a reload), every upstream
// both know by name and host keeps old's breaker, remembered port and last
// error, and old stops publishing; without (a start), remembered ports come
// from the status file of the last run. Call it once, after everything else
// of a reload has been accepted.
func (d *Dispatcher) Start(old *Dispatcher) {
	d.startOnce.Do(func() {
		if old != nil {
			old.live.Store(false)
			d.inherit(old)
		} else if d.opts.StatusFile != "" {
			d.loadPorts(d.opts.StatusFile)
		}
		d.live.Store(true)
		for _, u := range d.ups {
			u.publish()
		}
		d.wg.Add(1)
		go d.background()
	})
}

func (d *Dispatcher) inherit(old *Dispatcher) {
	for _, u := range d.ups {
		for _, o := range old.ups {
			if o.cfg.Name != u.cfg.Name || o.cfg.Host != u.cfg.Host || o.cfg.Path != u.cfg.Path {
				continue
			}
			o.mu.Lock()
			b, port, portAt, lastErr, lastErrAt := o.breaker, o.port, o.portAt, o.lastErr, o.lastErrAt
			o.mu.Unlock()
			b.first, b.probing = u.cfg.BreakerBackoff, false // the probe in flight reports to old
			u.mu.Lock()
			u.breaker, u.lastErr, u.lastErrAt = b, lastErr, lastErrAt
			if slices.Contains(u.cfg.Ports, port) {
				u.port, u.portAt = port, portAt
			}
			u.mu.Unlock()
		}
	}
}

// publish sets sluice_upstream_up from u's breaker, if d is the live dispatcher.
func (u *upstream) publish() {
	if !u.d.live.Load() {
		return
	}
	u.mu.Lock()
	up := u.breaker.state != open
	u.mu.Unlock()
	if up {
		mUp.Set(u.cfg.Name, 1)
	} else {
		mUp.Set(u.cfg.Name, 0)
	}
}

// Close ends every pooled connection (QUIT) and stops background work.
// Deliveries in flight finish; their connections are closed, not pooled.
func (d *Dispatcher) Close() {
	d.closeOnce.Do(func() {
		defer mDispatchers.Add(-1)
		close(d.done)
		d.wg.Wait()
		var wg sync.WaitGroup
		for _, u := range d.ups {
			for _, cl := range u.pool.drain() {
				wg.Add(1)
				go func() { defer wg.Done(); cl.quit() }()
			}
		}
		wg.Wait()
		d.writeStatus()
	})
}

func (d *Dispatcher) closing() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// quit says goodbye politely but briefly; the server need not answer.
func (cl *client) quit() {
	cl.c.CommandTimeout = 2 * time.Second
	if cl.c.Quit() != nil {
		cl.c.Close()
	}
}

// background closes idle connections, re-probes ports and writes the
// status file.
func (d *Dispatcher) background() {
	defer d.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-d.done
		cancel()
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	dirty := true
	for {
		select {
		case <-d.done:
			return
		case <-d.changed:
			dirty = true
		case <-tick.C:
			now := d.now()
			for _, u := range d.ups {
				u.pool.reap(now.Add(-d.opts.IdleTimeout))
				if earlier := u.reprobeDue(now); earlier != nil {
					d.wg.Add(1)
					go func() { defer d.wg.Done(); u.reprobe(ctx, earlier) }()
				}
			}
			if dirty {
				d.writeStatus()
			}
			dirty = false
		}
	}
}

func (d *Dispatcher) touch() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// candidates returns the route's upstreams in the order of one delivery
// (see order).
func (d *Dispatcher) candidates(route []string) []*upstream {
	var set []*upstream
	for _, u := range d.ups {
		if len(route) == 0 || slices.Contains(route, u.cfg.Name) {
			set = append(set, u)
		}
	}
	d.rmu.Lock()
	defer d.rmu.Unlock()
	order(set, d.rnd.IntN)
	return set
}

// Available reports whether a message on route could be tried now, or else
// when it can: the earliest time a breaker of its route lets a delivery
// through. The queue asks before it spends a retry step, so a message made
// due while every breaker is open is not pushed later.
func (d *Dispatcher) Available(route []string, requireTLS bool) (bool, time.Time) {
	now := d.now()
	var at time.Time
	for _, u := range d.candidates(route) {
		if requireTLS && !u.cfg.TLSOnly() {
			continue
		}
		u.mu.Lock()
		ok, t := u.breaker.availableAt(now)
		u.mu.Unlock()
		if ok {
			return true, now
		}
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	if at.IsZero() {
		return true, now // nothing to wait for: Deliver says why
	}
	return false, at
}

// Deliver sends m to the first upstream of its route that takes it,
// failing over at once for any failure before the final dot.
func (d *Dispatcher) Deliver(ctx context.Context, m *Message) Result {
	res := Result{Errs: make([]error, len(m.To))}
	pending := make([]int, len(m.To)) // indexes into m.To still undecided
	for i := range pending {
		pending[i] = i
	}
	cands := d.candidates(m.Route)
	if len(cands) == 0 {
		e := &Error{Stage: StageDial, Message: fmt.Sprintf("no upstream in route %v", m.Route)}
		for i := range res.Errs {
			res.Errs[i] = e
		}
		return res
	}
	var last *Error
	if m.RequireTLS {
		var tlsOnly []*upstream
		for _, u := range cands {
			if u.cfg.TLSOnly() {
				tlsOnly = append(tlsOnly, u)
			}
		}
		if len(tlsOnly) == 0 {
			e := &Error{Stage: StageDial, Code: 550, Enhanced: [3]int{5, 7, 10}, Message: "REQUIRETLS: no upstream of the route is TLS-only"}
			for i := range res.Errs {
				res.Errs[i] = e
			}
			return res
		}
		cands = tlsOnly
	}
	unavailable := false // an upstream was passed over for its open breaker
	for _, u := range cands {
		if ctx.Err() != nil {
			break
		}
		if m.SMTPUTF8 && u.utf8Offer() == notOffered {
			last = noSMTPUTF8(u.cfg.Name) // known from its last EHLO: no connection
			continue
		}
		probe, ok := u.allow()
		if !ok {
			unavailable = true
			continue
		}
		rcpts := make([]string, len(pending))
		for i, p := range pending {
			rcpts[i] = m.To[p]
		}
		started := d.now()
		out := u.deliver(ctx, m, rcpts, probe) // records the outcome in u's breaker
		if out.passedOver {
			unavailable = true
			continue
		}
		res.Attempts = append(res.Attempts, attemptOf(u, rcpts, out, d.now().Sub(started)))
		res.Upstream = u.cfg.Name
		var next []int
		for i, p := range pending {
			re := out.rcptErrs[i]
			var e *Error
			if re != nil && errors.As(re, &e) && !e.Temporary() {
				res.Errs[p] = re // 5xx for this recipient only
				continue
			}
			if out.err == nil {
				res.Errs[p] = re // accepted (nil) or 4xx at RCPT
				continue
			}
			next = append(next, p)
		}
		pending = next
		if out.err == nil || len(pending) == 0 {
			return res
		}
		last = out.err
		if !d.failover(u, out.err) {
			break
		}
	}
	if last == nil || (unavailable && errors.Is(last, errNoSMTPUTF8)) {
		// An upstream that might offer SMTPUTF8 waits behind its breaker:
		// not a reason to bounce yet.
		if ctx.Err() != nil {
			last = &Error{Stage: StageDial, Err: ctx.Err()}
		} else {
			last = &Error{Stage: StageDial, Message: "all upstreams unavailable (circuit breakers open)"}
		}
	}
	for _, p := range pending {
		res.Errs[p] = last
	}
	return res
}

// attemptOf records one try for the journal.
func attemptOf(u *upstream, rcpts []string, out txOutcome, d time.Duration) Attempt {
	a := Attempt{Upstream: u.cfg.Name, Host: u.cfg.Host, Port: out.port, TLS: out.tls, Rcpts: rcpts,
		Errs: make([]error, len(rcpts)), Reply: out.reply, Duration: d}
	if u.maildir {
		a.Host = u.cfg.Path
	}
	for i := range rcpts {
		switch {
		case out.rcptErrs[i] != nil:
			a.Errs[i] = out.rcptErrs[i]
		case out.err != nil:
			a.Errs[i] = out.err
		}
	}
	return a
}

// failover says whether the next upstream may be tried after e.
func (d *Dispatcher) failover(u *upstream, e *Error) bool {
	switch {
	case errors.Is(e.Err, errNoSMTPUTF8):
		return true // the next upstream may offer it
	case e.PossibleDuplicate:
		return false
	case e.Throttled:
		return true
	case e.Stage == StageAfterDot:
		return !e.Temporary() && u.cfg.FailoverOn5xx
	case !e.Temporary():
		// A 5xx on the message (MAIL, DATA) fails it, unless this upstream's
		// refusals are known to be its own (failover_on_5xx). A bare CR is
		// refused the same way everywhere.
		return u.cfg.FailoverOn5xx && !errors.Is(e.Err, errBareCR)
	}
	return true
}

// deliver runs one attempt on u: a pooled or new connection, under u's
// connection limit and rate. A delivery that is not the probe gives up
// without trying (passedOver) when u's breaker opened while it waited for
// a slot or for the rate: with many messages queued behind
// max_connections, each would otherwise still dial the failing upstream,
// delaying the half-open probe and shutdown. The outcome is recorded in the
// breaker before the slot is given back, so the next delivery waiting for
// the slot sees a breaker that this one opened.
func (u *upstream) deliver(ctx context.Context, m *Message, rcpts []string, probe bool) (out txOutcome) {
	if u.maildir {
		mAttempts.Inc(u.cfg.Name)
		out = u.deliverMaildir(m, rcpts)
		u.record(out.err, probe)
		return out
	}
	failed := func(err error) txOutcome {
		return txOutcome{rcptErrs: make([]error, len(rcpts)), err: &Error{Upstream: u.cfg.Name, Stage: StageDial, Err: err}}
	}
	if err := u.pool.acquire(ctx); err != nil {
		out = failed(err)
		u.record(out.err, probe)
		return out
	}
	u.d.touch() // in flight changed
	defer func() {
		u.pool.done()
		u.d.touch()
	}()
	defer func() { // runs before the deferred done above
		if !out.passedOver {
			u.record(out.err, probe)
		}
	}()
	if u.limiter != nil {
		if err := u.limiter.Wait(ctx); err != nil {
			return failed(err)
		}
	}
	if !probe && !u.closed() {
		return txOutcome{passedOver: true}
	}
	mAttempts.Inc(u.cfg.Name)
	if u.api != nil {
		return u.deliverAPI(ctx, m, rcpts)
	}
	if cl := u.pool.take(u.d.now().Add(-u.d.opts.IdleTimeout)); cl != nil {
		out = u.transactCtx(ctx, cl, m, rcpts)
		if out.mailOK || (out.err != nil && !out.err.connectionLost()) {
			u.release(cl, out)
			return out
		}
		// The pooled connection died while idle: not the upstream's fault.
		cl.c.Close()
	}
	cl, e := u.dial(ctx)
	if e != nil {
		return txOutcome{rcptErrs: make([]error, len(rcpts)), err: e}
	}
	out = u.transactCtx(ctx, cl, m, rcpts)
	u.release(cl, out)
	return out
}

// transactCtx runs transact but ends it when ctx is cancelled (shutdown
// past DrainTimeout): go-smtp's client takes no context and sets its own
// deadlines per command, so the connection is closed under it. A cancel
// after the final dot then reads as no reply, a possible duplicate.
func (u *upstream) transactCtx(ctx context.Context, cl *client, m *Message, rcpts []string) txOutcome {
	stop := context.AfterFunc(ctx, func() { cl.conn.Close() })
	out := u.transact(cl, m, rcpts)
	if !stop() {
		out.reusable = false
	}
	return out
}

// release pools cl after a transaction: directly after a success (the next
// MAIL needs no RSET), after an RSET when the transaction failed.
func (u *upstream) release(cl *client, out txOutcome) {
	switch {
	case !out.reusable:
		cl.c.Close()
		return
	case u.d.closing():
		cl.quit()
		return
	case out.err != nil || hasErr(out.rcptErrs):
		if err := cl.c.Reset(); err != nil {
			cl.c.Close()
			return
		}
	}
	cl.lastUsed = u.d.now()
	u.pool.put(cl)
}

func hasErr(errs []error) bool {
	for _, e := range errs {
		if e != nil {
			return true
		}
	}
	return false
}

// utf8Offer says whether u offered SMTPUTF8 at its last EHLO. API
// upstreams and maildir always take UTF-8.
func (u *upstream) utf8Offer() offer {
	if u.maildir || u.api != nil {
		return offered
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.utf8
}

// closed reports whether u's breaker lets every delivery through.
func (u *upstream) closed() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.breaker.state == closed
}

// allow reports whether u may be tried now and whether this is the
// half-open probe.
func (u *upstream) allow() (probe, ok bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.breaker.allow(u.d.now())
}

// record notes an attempt's outcome (e nil: the upstream took the message
// or refused recipients) in u's breaker and status, and says what changed.
func (u *upstream) record(e *Error, probe bool) {
	now := u.d.now()
	u.mu.Lock()
	changed := u.breaker.record(now, probe, verdictOf(e))
	b := u.breaker
	if e != nil {
		u.lastErr, u.lastErrAt = e.Error(), now
	}
	u.mu.Unlock()
	if e != nil {
		mFailures.Inc(u.cfg.Name)
		u.d.touch()
	}
	if !changed {
		return
	}
	u.publish()
	u.d.touch()
	if b.state == open {
		u.d.log.Warn("upstream breaker open", "upstream", u.cfg.Name, "for", b.backoff, "until", b.openUntil, "error", e.Error())
	} else {
		u.d.log.Info("upstream breaker closed", "upstream", u.cfg.Name)
	}
}
