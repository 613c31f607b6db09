// Package policy decides what an SMTP client may do once the relay knows who
// it is: which envelope and header senders, which recipients, how large and
// how many, how fast (per-user rate limits and per-IP auth-failure counters,
// in memory or shared through Redis), and which upstreams a message may take.
// Decisions are pure functions of the compiled config and return a *Denial
// (nil = allowed) that the relay maps to a reply code.
package policy

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
)

// Options are the seams of an Engine.
type Options struct {
	Now    func() time.Time // nil: time.Now; every limiter and counter reads this clock
	Logger *slog.Logger     // nil: slog.Default()
	// Metrics receives sluice_ratelimit_redis_errors_total; nil: metrics.Default.
	Metrics *metrics.Registry
	// MaxKeys caps the rate-limit buckets and the auth-failure entries held
	// in memory (each separately); 0: 100,000. See docs/scaling.md.
	MaxKeys int
	// RedisTimeout bounds every Redis call; 0: 200ms.
	RedisTimeout time.Duration
	// ManagedKeyActive tells Explain whether a managed DKIM domain has an
	// active key (signing/managed.go); nil: Explain assumes it has.
	ManagedKeyActive func(domain string) bool
}

// Kind is why something was denied. String() is the metric label.
type Kind int

// Kinds of denial, in the order a message meets them.
const (
	SenderDenied      Kind = iota + 1 // 550 5.7.1
	HeaderFromDenied                  // 550 5.7.1
	RecipientDenied                   // 550 5.7.1
	TooManyRecipients                 // 452 4.5.3
	TooLarge                          // 552 5.3.4
	RateLimited                       // 450 4.7.1
	DKIMRequired                      // 550 5.7.1
	Unavailable                       // 451 4.7.1: Redis down and fail_open false
)

var kindNames = [...]string{
	SenderDenied:      "sender",
	HeaderFromDenied:  "header_from",
	RecipientDenied:   "recipient",
	TooManyRecipients: "recipients",
	TooLarge:          "size",
	RateLimited:       "rate",
	DKIMRequired:      "dkim",
	Unavailable:       "unavailable",
}

// String returns the metric label of k: sender, header_from, recipient,
// recipients, size, rate, dkim or unavailable.
func (k Kind) String() string {
	if k > 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Denial says why something was refused. nil means allowed.
type Denial struct {
	Kind       Kind
	Rule       string        // the rule that refused, for logs and explain (never shown to clients)
	RetryAfter time.Duration // RateLimited: how long until the next one would pass
}

// Error makes a Denial loggable as an error value.
func (d *Denial) Error() string {
	s := "policy: " + d.Kind.String() + " denied by " + d.Rule
	if d.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %s)", d.RetryAfter.Round(time.Second))
	}
	return s
}

// Policy is one compiled entry of `policies`.
type Policy struct {
	Name           string
	MaxMessageSize int64
	MaxRecipients  int // 0: unlimited
	RemoveHeaders  []string
	RequireDKIM    bool
	KeepBcc        bool     // keep Bcc:/Resent-Bcc: (removed before signing otherwise)
	PercentHack    bool     // accept % and ! in recipients' local parts
	Upstreams      []string // this policy's route; empty: every upstream
	RateMessages   config.Rate
	RateRecipients config.Rate

	// IgnoreSuppression: RCPT to a suppressed address is not refused.
	IgnoreSuppression bool

	senders, allowedRcpts, deniedRcpts patternList
	masq                               []masqRule
}

// masqRule is one compiled `masquerade` entry.
type masqRule struct {
	match pattern
	to    string
}

// Masquerades reports whether the policy has masquerade rules.
func (p *Policy) Masquerades() bool { return len(p.masq) > 0 }

// Masquerade returns the address a sender address is rewritten to
// (DESIGN §8.5): the first rule whose match fits addr, its `to` with
// {local} the local part of addr and {user} the authenticated user. ok is
// false when no rule applies (the null sender never is rewritten; a rule
// naming {user} does not apply to a client admitted by network).
func (p *Policy) Masquerade(user, addr string) (string, bool) {
	addr = trimAddr(addr)
	at := strings.LastIndexByte(addr, '@')
	if addr == "" || at < 0 {
		return "", false
	}
	for _, r := range p.masq {
		if !r.match.match(user, addr) {
			continue
		}
		if strings.Contains(r.to, "{user}") && (user == "" || strings.ContainsAny(user, " \t\r\n<>@\"")) {
			continue
		}
		return strings.NewReplacer("{local}", addr[:at], "{user}", user).Replace(r.to), true
	}
	return "", false
}

// CheckSender checks the envelope sender (MAIL FROM; "" is the null sender,
// allowed only when "<>" is listed). An empty allowed_senders allows every
// non-null sender.
func (p *Policy) CheckSender(user, addr string) *Denial {
	addr = trimAddr(addr)
	if addr != "" && len(p.senders) == 0 {
		return nil
	}
	if _, ok := p.senders.match(user, addr); ok {
		return nil
	}
	if addr == "" {
		return &Denial{Kind: SenderDenied, Rule: "null sender <> not in allowed_senders " + p.senders.String()}
	}
	return &Denial{Kind: SenderDenied, Rule: "allowed_senders " + p.senders.String()}
}

// CheckHeaderFrom checks every address of the header From: (and Sender:)
// against allowed_senders. A restricted policy refuses a message that has
// none, since the header is what the recipient sees.
func (p *Policy) CheckHeaderFrom(user string, addrs []string) *Denial {
	if len(p.senders) == 0 {
		return nil
	}
	if len(addrs) == 0 {
		return &Denial{Kind: HeaderFromDenied, Rule: "no From: address; allowed_senders " + p.senders.String()}
	}
	for _, a := range addrs {
		a = trimAddr(a)
		// An empty header address is not the null sender: "<>" does not allow it.
		if _, ok := p.senders.match(user, a); !ok || a == "" {
			return &Denial{Kind: HeaderFromDenied, Rule: fmt.Sprintf("header address %q not in allowed_senders %s", a, p.senders)}
		}
	}
	return nil
}

// CheckRecipient checks one RCPT TO. count is the number of recipients
// already accepted for this message. denied_recipients wins over
// allowed_recipients; an empty allowed_recipients allows any.
func (p *Policy) CheckRecipient(user, addr string, count int) *Denial {
	addr = trimAddr(addr)
	if p.MaxRecipients > 0 && count >= p.MaxRecipients {
		return &Denial{Kind: TooManyRecipients, Rule: fmt.Sprintf("max_recipients %d", p.MaxRecipients)}
	}
	if m, ok := p.deniedRcpts.match(user, addr); ok {
		return &Denial{Kind: RecipientDenied, Rule: fmt.Sprintf("denied_recipients %q", m.raw)}
	}
	if len(p.allowedRcpts) == 0 {
		return nil
	}
	if _, ok := p.allowedRcpts.match(user, addr); ok {
		return nil
	}
	return &Denial{Kind: RecipientDenied, Rule: "allowed_recipients " + p.allowedRcpts.String()}
}

// CheckSize checks a message size (MAIL … SIZE= or the bytes received).
func (p *Policy) CheckSize(size int64) *Denial {
	if p.MaxMessageSize > 0 && size > p.MaxMessageSize {
		return &Denial{Kind: TooLarge, Rule: fmt.Sprintf("max_message_size %d", p.MaxMessageSize)}
	}
	return nil
}

// CheckDKIM refuses an unsigned message when the policy requires DKIM.
func (p *Policy) CheckDKIM(signed bool) *Denial {
	if p.RequireDKIM && !signed {
		return &Denial{Kind: DKIMRequired, Rule: "require_dkim: no key for the From: domain"}
	}
	return nil
}

// Engine holds the compiled policies, the routes and the limiters.
type Engine struct {
	cfg      *config.Config
	policies map[string]*Policy
	users    map[string]string // user name → policy name
	routes   []route
	maxSize  int64

	now     func() time.Time
	log     *slog.Logger
	buckets *gcraTable
	auth    *authTable
	redis   *redisStore // nil: in memory only

	managedKeyActive func(domain string) bool // Options.ManagedKeyActive
}

// New compiles every policy and route of cfg and, when ratelimit.redis is
// set, connects to Redis (lazily: an unreachable Redis is not an error here,
// it is handled per call by fail_open).
func New(cfg *config.Config, opts Options) (*Engine, error) {
	e := &Engine{
		cfg:      cfg,
		policies: map[string]*Policy{},
		users:    map[string]string{},
		now:      opts.Now,
		log:      opts.Logger,

		managedKeyActive: opts.ManagedKeyActive,
	}
	if e.now == nil {
		e.now = time.Now
	}
	if e.log == nil {
		e.log = slog.Default()
	}
	maxKeys := opts.MaxKeys
	if maxKeys <= 0 {
		maxKeys = 100_000
	}
	e.buckets = newGCRATable(maxKeys)
	e.auth = newAuthTable(maxKeys)

	var errs []string
	names := make([]string, 0, len(cfg.Policies))
	for name := range cfg.Policies {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		p, err := compilePolicy(name, cfg.Policies[name])
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		e.policies[name] = p
		e.maxSize = max(e.maxSize, p.MaxMessageSize)
	}
	if _, ok := e.policies["default"]; !ok && len(errs) == 0 {
		// The loader always supplies "default"; a config built in code may not.
		e.policies["default"], _ = compilePolicy("default", &config.Policy{})
	}
	for _, u := range cfg.Users {
		pol := u.Policy
		if pol == "" {
			pol = "default"
		}
		e.users[u.Name] = pol
	}
	for i, r := range cfg.Routes {
		e.routes = append(e.routes, compileRoute(r))
		for _, name := range r.Upstreams {
			if !slices.ContainsFunc(cfg.Upstreams, func(u config.Upstream) bool { return u.Name == name }) {
				errs = append(errs, fmt.Sprintf("routes[%d].upstreams: unknown upstream %q", i, name))
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("policy: %s", strings.Join(errs, "; "))
	}
	if cfg.RateLimit.Redis != "" {
		failOpen := cfg.RateLimit.FailOpen == nil || *cfg.RateLimit.FailOpen
		rs, err := newRedisStore(cfg.RateLimit.Redis, failOpen, opts, e.log)
		if err != nil {
			return nil, err
		}
		e.redis = rs
	}
	return e, nil
}

func compilePolicy(name string, c *config.Policy) (*Policy, error) {
	if c == nil {
		c = &config.Policy{}
	}
	p := &Policy{
		Name:           name,
		MaxMessageSize: int64(c.MaxMessageSize),
		MaxRecipients:  c.MaxRecipients,
		RemoveHeaders:  slices.Clone(c.RemoveHeaders),
		RequireDKIM:    c.RequireDKIM,
		KeepBcc:        c.KeepBcc,
		PercentHack:    c.AllowPercentHack,
		Upstreams:      slices.Clone(c.Upstreams),
		RateMessages:   c.Rate.Messages,
		RateRecipients: c.Rate.Recipients,
	}
	p.IgnoreSuppression = c.IgnoreSuppression
	var err error
	key := "policies." + name
	if p.senders, err = compileList(key+".allowed_senders", c.AllowedSenders); err != nil {
		return nil, err
	}
	if p.allowedRcpts, err = compileList(key+".allowed_recipients", c.AllowedRecipients); err != nil {
		return nil, err
	}
	if p.deniedRcpts, err = compileList(key+".denied_recipients", c.DeniedRecipients); err != nil {
		return nil, err
	}
	for i, m := range c.Masquerade {
		pat, err := compilePattern(m.Match)
		if err == nil {
			err = config.CheckMasqueradeTemplate(m.To)
		}
		if err != nil {
			return nil, fmt.Errorf("%s.masquerade[%d]: %w", key, i, err)
		}
		p.masq = append(p.masq, masqRule{match: pat, to: m.To})
	}
	for _, r := range []struct {
		k string
		r config.Rate
	}{{"rate.messages", c.Rate.Messages}, {"rate.recipients", c.Rate.Recipients}} {
		if r.r.N < 0 || r.r.Burst < 0 || (r.r.N > 0 && r.r.Per <= 0) {
			return nil, fmt.Errorf("%s.%s: invalid rate %d/%s burst %d", key, r.k, r.r.N, r.r.Per, r.r.Burst)
		}
	}
	return p, nil
}

// Close releases the Redis connection, if any.
func (e *Engine) Close() {
	if e.redis != nil {
		e.redis.close()
	}
}

// Lookup returns the compiled policy called name, nil if absent.
func (e *Engine) Lookup(name string) *Policy { return e.policies[name] }

// UserPolicy returns the policy of a configured user, nil for an unknown one.
func (e *Engine) UserPolicy(user string) *Policy {
	name, ok := e.users[user]
	if !ok {
		return nil
	}
	return e.policies[name]
}

// MaxMessageSize is the largest max_message_size of any policy: the SIZE the
// relay advertises in EHLO before it knows who the client is.
func (e *Engine) MaxMessageSize() int64 { return e.maxSize }

// Inherit takes over old's in-memory rate-limit buckets and auth-failure
// counters, so that a reload (a new Engine from a new configuration) gives
// nobody a fresh burst and unblocks no address. Buckets are keyed by policy
// and client and read with the current rates, so changed rates apply at
// once. Call it before the new Engine serves; old must no longer be used
// for new sessions.
func (e *Engine) Inherit(old *Engine) {
	if old == nil {
		return
	}
	e.buckets, e.auth = old.buckets, old.auth
}
