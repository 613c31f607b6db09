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
	"sort"
	"sync"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"golang.org/x/time/rate"
)

const (
	maxBackoff     = 10 * time.Minute
	portReprobe    = 10 * time.Minute
	failuresToOpen = 3
)

var (
	mUp       = metrics.Default.NewGaugeVec("sluice_upstream_up", "1 when the upstream's circuit breaker is closed or half-open, 0 when open.", "upstream")
	mAttempts = metrics.Default.NewCounterVec("sluice_upstream_attempts_total", "Delivery attempts per upstream.", "upstream")
	mFailures = metrics.Default.NewCounterVec("sluice_upstream_failures_total", "Failed delivery attempts per upstream.", "upstream")
)

// Dispatcher delivers messages to the configured upstreams. It is safe for
// concurrent use; each Deliver call is one attempt at the message, with
// failover across ports and upstreams inside it.
type Dispatcher struct {
	opts Options
	log  *slog.Logger
	now  func() time.Time
	ups  []*upstream // config order

	rmu sync.Mutex
	rnd *rand.Rand

	closeOnce sync.Once
	done      chan struct{}
	wg        sync.WaitGroup
	changed   chan struct{} // status changed (buffered 1)
}

type breakerState int

const (
	closed breakerState = iota
	open
	halfOpen
)

func (s breakerState) String() string {
	return [...]string{"closed", "open", "half-open"}[s]
}

// upstream is one configured upstream with its pool, limiter and breaker.
type upstream struct {
	d       *Dispatcher
	cfg     config.Upstream
	tls     *tls.Config
	limiter *rate.Limiter // nil: unlimited
	slots   chan struct{} // one per connection in use
	tokens  *tokenSource
	maildir bool

	mu        sync.Mutex
	idle      []*client
	state     breakerState
	openUntil time.Time
	backoff   time.Duration // the last open period
	probing   bool          // a half-open probe is in flight
	failures  int           // consecutive connection failures
	port      int           // remembered port, 0: none
	portAt    time.Time
	inFlight  int
	lastErr   string
	lastErrAt time.Time
}

// New checks the upstreams and prepares their TLS, limiters and pools. It
// opens no connection.
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
		mUp.Set(c.Name, 1)
	}
	d.wg.Add(1)
	go d.background()
	return d, nil
}

// newUpstream prepares c's pool, limiter and TLS. c comes validated and
// with its defaults filled by config (config.Upstream.WithDefaults for one
// built in code): nothing is defaulted or checked again here.
func (d *Dispatcher) newUpstream(c config.Upstream) (*upstream, error) {
	u := &upstream{d: d, cfg: c, slots: make(chan struct{}, max(c.MaxConnections, 1))}
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
	if c.AuthMechanism == config.AuthXOAUTH2 {
		u.tokens = &tokenSource{cfg: c.OAuth2, now: d.now, client: &http.Client{Timeout: c.ConnectTimeout + c.Timeout}}
	}
	return u, nil
}

// Close ends every pooled connection (QUIT) and stops background work.
// Deliveries in flight finish; their connections are closed, not pooled.
func (d *Dispatcher) Close() {
	d.closeOnce.Do(func() {
		close(d.done)
		d.wg.Wait()
		var wg sync.WaitGroup
		for _, u := range d.ups {
			u.mu.Lock()
			idle := u.idle
			u.idle = nil
			u.mu.Unlock()
			for _, cl := range idle {
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

// background closes idle connections and writes the status file.
func (d *Dispatcher) background() {
	defer d.wg.Done()
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
			d.reapIdle()
			if dirty && d.opts.StatusFile != "" {
				d.writeStatus()
			}
			dirty = false
		}
	}
}

func (d *Dispatcher) reapIdle() {
	cut := d.now().Add(-d.opts.IdleTimeout)
	for _, u := range d.ups {
		var old []*client
		u.mu.Lock()
		keep := u.idle[:0]
		for _, cl := range u.idle {
			if cl.lastUsed.Before(cut) {
				old = append(old, cl)
			} else {
				keep = append(keep, cl)
			}
		}
		u.idle = keep
		u.mu.Unlock()
		for _, cl := range old {
			cl.quit()
		}
	}
}

func (d *Dispatcher) touch() {
	select {
	case d.changed <- struct{}{}:
	default:
	}
}

// candidates returns the route's upstreams: by priority, equal priorities
// in a weighted random order (each draw proportional to weight among those
// not yet drawn).
func (d *Dispatcher) candidates(route []string) []*upstream {
	var set []*upstream
	if len(route) == 0 {
		set = append(set, d.ups...)
	} else {
		for _, u := range d.ups {
			for _, n := range route {
				if n == u.cfg.Name {
					set = append(set, u)
					break
				}
			}
		}
	}
	sort.SliceStable(set, func(i, j int) bool { return set[i].cfg.Priority < set[j].cfg.Priority })
	d.rmu.Lock()
	defer d.rmu.Unlock()
	for i := 0; i < len(set); {
		j := i
		for j < len(set) && set[j].cfg.Priority == set[i].cfg.Priority {
			j++
		}
		group := set[i:j]
		for k := range group {
			total := 0
			for _, u := range group[k:] {
				total += u.cfg.Weight
			}
			r := d.rnd.IntN(total)
			for l := k; l < len(group); l++ {
				r -= group[l].cfg.Weight
				if r < 0 {
					group[k], group[l] = group[l], group[k]
					break
				}
			}
		}
		i = j
	}
	return set
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
	for _, u := range cands {
		if ctx.Err() != nil {
			break
		}
		probe, ok := u.allow()
		if !ok {
			continue
		}
		rcpts := make([]string, len(pending))
		for i, p := range pending {
			rcpts[i] = m.To[p]
		}
		started := d.now()
		out := u.deliver(ctx, m, rcpts)
		u.verdict(out, probe)
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
	if last == nil {
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
// connection limit and rate.
func (u *upstream) deliver(ctx context.Context, m *Message, rcpts []string) txOutcome {
	mAttempts.Inc(u.cfg.Name)
	if u.maildir {
		return u.deliverMaildir(m, rcpts)
	}
	select {
	case u.slots <- struct{}{}:
	case <-ctx.Done():
		return txOutcome{rcptErrs: make([]error, len(rcpts)), err: &Error{Upstream: u.cfg.Name, Stage: StageDial, Err: ctx.Err()}}
	}
	defer func() { <-u.slots }()
	u.mu.Lock()
	u.inFlight++
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.inFlight--
		u.mu.Unlock()
	}()
	if u.limiter != nil {
		if err := u.limiter.Wait(ctx); err != nil {
			return txOutcome{rcptErrs: make([]error, len(rcpts)), err: &Error{Upstream: u.cfg.Name, Stage: StageDial, Err: err}}
		}
	}
	cl := u.takeIdle()
	if cl != nil {
		out := u.transactCtx(ctx, cl, m, rcpts)
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
	out := u.transactCtx(ctx, cl, m, rcpts)
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

func (u *upstream) takeIdle() *client {
	cut := u.d.now().Add(-u.d.opts.IdleTimeout)
	for {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			return nil
		}
		cl := u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		if cl.lastUsed.After(cut) {
			return cl
		}
		cl.quit()
	}
}

// release pools cl after a transaction: directly after a success (the next
// MAIL needs no RSET), after an RSET when the transaction failed.
func (u *upstream) release(cl *client, out txOutcome) {
	if !out.reusable || u.d.closing() {
		if out.reusable {
			cl.quit()
		} else {
			cl.c.Close()
		}
		return
	}
	if out.err != nil || hasErr(out.rcptErrs) {
		if err := cl.c.Reset(); err != nil {
			cl.c.Close()
			return
		}
	}
	cl.lastUsed = u.d.now()
	u.mu.Lock()
	u.idle = append(u.idle, cl)
	u.mu.Unlock()
}

func hasErr(errs []error) bool {
	for _, e := range errs {
		if e != nil {
			return true
		}
	}
	return false
}

// dial tries the remembered port first, then the others in order, and
// remembers the first that connects and completes TLS.
func (u *upstream) dial(ctx context.Context) (*client, *Error) {
	now := u.d.now()
	u.mu.Lock()
	remembered := u.port
	if remembered != 0 && now.Sub(u.portAt) > portReprobe {
		remembered = 0 // re-probe from the first port: a blocked port may be open again
		u.port = 0
	}
	u.mu.Unlock()
	ports := u.cfg.Ports
	if remembered != 0 {
		ports = append([]int{remembered}, without(u.cfg.Ports, remembered)...)
	}
	var last *Error
	for _, p := range ports {
		cl, e := u.open(ctx, p)
		if e == nil {
			if p != remembered {
				u.mu.Lock()
				u.port, u.portAt = p, now
				u.mu.Unlock()
				u.d.log.Info("upstream port remembered", "upstream", u.cfg.Name, "port", p)
				u.d.touch()
			}
			return cl, nil
		}
		last = e
		if e.Stage == StageAuth || ctx.Err() != nil {
			break // the same credentials fail on every port
		}
	}
	return nil, last
}

func without(ports []int, p int) []int {
	var out []int
	for _, q := range ports {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}

// allow reports whether u may be tried now and whether this is the
// half-open probe.
func (u *upstream) allow() (probe, ok bool) {
	now := u.d.now()
	u.mu.Lock()
	defer u.mu.Unlock()
	switch u.state {
	case closed:
		return false, true
	case open:
		if now.Before(u.openUntil) {
			return false, false
		}
		u.state = halfOpen
		u.probing = true
		return true, true
	default:
		if u.probing {
			return false, false
		}
		u.probing = true
		return true, true
	}
}

// verdict updates the breaker after an attempt. Throttling opens it at
// once; connection-level failures (no reply, or dial/TLS/AUTH) open it
// after three in a row; any other answer shows the upstream is working.
func (u *upstream) verdict(out txOutcome, probe bool) {
	e := out.err
	now := u.d.now()
	u.mu.Lock()
	if probe {
		u.probing = false
	}
	if e != nil {
		mFailures.Inc(u.cfg.Name)
		u.lastErr, u.lastErrAt = e.Error(), now
	}
	trip := false
	switch {
	case e != nil && errors.Is(e.Err, context.Canceled):
		// Our own shutdown says nothing about the upstream.
	case e != nil && e.Throttled:
		trip = true
	case e != nil && (e.Code == 0 || e.Stage == StageDial || e.Stage == StageConnect || e.Stage == StageTLS || e.Stage == StageAuth) && !e.PossibleDuplicate:
		u.failures++
		trip = u.failures >= failuresToOpen || u.state == halfOpen
	default:
		u.failures = 0
		if u.state != closed {
			u.state = closed
			u.backoff = 0
			u.mu.Unlock()
			mUp.Set(u.cfg.Name, 1)
			u.d.log.Info("upstream breaker closed", "upstream", u.cfg.Name)
			u.d.touch()
			return
		}
	}
	if trip {
		if u.state == closed || u.backoff == 0 {
			u.backoff = u.cfg.BreakerBackoff
		} else {
			u.backoff = min(2*u.backoff, maxBackoff)
		}
		u.state = open
		u.openUntil = now.Add(u.backoff)
		u.failures = 0
		until, backoff, reason := u.openUntil, u.backoff, e.Error()
		u.mu.Unlock()
		mUp.Set(u.cfg.Name, 0)
		u.d.log.Warn("upstream breaker open", "upstream", u.cfg.Name, "for", backoff, "until", until, "error", reason)
		u.d.touch()
		return
	}
	u.mu.Unlock()
	if e != nil {
		u.d.touch()
	}
}
