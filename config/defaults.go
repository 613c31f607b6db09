package config

import (
	"fmt"
	"time"
)

// Defaults. They are filled in by the loader so that no other package
// re-derives them; a key given explicitly (even as 0) is kept, and validation
// says when it is out of range.
const (
	DefaultPath            = "/etc/sluice/sluice.yaml"
	DefaultStateDir        = "/var/lib/sluice"
	DefaultShutdownTimeout = 30 * time.Second
	DefaultPolicy          = "default"

	DefaultMaxMessageSize = 25 * Size(1e6)
	DefaultMaxRecipients  = 100

	DefaultMaxConnections      = 1000
	DefaultMaxConnectionsPerIP = 50

	DefaultUpstreamPriority       = 10
	DefaultUpstreamWeight         = 1
	DefaultUpstreamMaxConnections = 10
	DefaultBreakerBackoff         = 30 * time.Second
	DefaultUpstreamTimeout        = 60 * time.Second
	DefaultConnectTimeout         = 15 * time.Second
	DefaultGreetingTimeout        = 20 * time.Second

	DefaultQueueMaxAge   = 5 * 24 * time.Hour
	DefaultQueueWorkers  = 32
	DefaultMinFreeSpace  = 100 * Size(1e6)
	DefaultTLSMinVersion = "1.2"

	DefaultDKIMCheckInterval = 5 * time.Minute
	DefaultDKIMRetireAfter   = 7 * 24 * time.Hour
	DefaultDNSTimeout        = 5 * time.Second

	DefaultJournalRetention = 7 * 24 * time.Hour
	DefaultJournalMaxSize   = Size(1e9)
	// MinJournalMaxSize keeps a few segments of a few hundred events.
	MinJournalMaxSize = Size(1 << 20)

	DefaultSuppressionTTL = 30 * 24 * time.Hour
	DefaultHooksIndexTTL  = 7 * 24 * time.Hour
)

// DefaultDKIMAlgorithms are a managed domain's key algorithms when none are
// given: RSA for every verifier, Ed25519 beside it (RFC 8463).
func DefaultDKIMAlgorithms() []string { return []string{AlgoRSA, AlgoEd25519} }

// WebhookEventNames are the events queue.webhook_events may list.
var WebhookEventNames = []string{"bounced", "expired", "delayed", "delivered", "deferred", "suppressed", "complained", "provider_bounce"}

// DefaultWebhookEvents is queue.webhook_events when absent (the events of DESIGN §7).
func DefaultWebhookEvents() []string { return []string{"bounced", "expired", "delayed"} }

// Upstream profiles.
const (
	ProfileGeneric  = "generic"
	ProfileSES      = "ses"
	ProfileSendGrid = "sendgrid"
	ProfilePostmark = "postmark"
	ProfileMailgun  = "mailgun"
)

// Upstream AUTH mechanisms.
const (
	AuthPlain   = "plain"
	AuthLogin   = "login"
	AuthXOAUTH2 = "xoauth2"
)

// DefaultRetry is queue.retry when absent; the last interval repeats until max_age.
func DefaultRetry() []time.Duration {
	return []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
		time.Hour, 2 * time.Hour, 4 * time.Hour}
}

// DefaultBounceFrom is queue.bounce_from when absent: the postmaster
// convention every MTA follows, at the relay's own name.
func DefaultBounceFrom(hostname string) string { return "MAILER-DAEMON@" + hostname }

// profileRank orders provider profiles from the least to the most
// restrictive about what may be signed (docs/policy.md). sendgrid, mailgun
// and postmark sign like generic today; they still rank above it so that
// the strictest names the provider, and a future restriction for one of them
// applies to mixed routes without touching callers.
var profileRank = map[string]int{ProfileGeneric: 0, ProfileSendGrid: 1, ProfileMailgun: 2, ProfilePostmark: 3, ProfileSES: 4}

// ValidProfile reports whether p names a provider profile ("" is generic).
func ValidProfile(p string) bool {
	_, ok := profileRank[p]
	return ok || p == ""
}

// StrictestProfile returns the most restrictive of profiles: a message
// signed for it survives every upstream of its route. No profiles (or only
// unknown ones) give generic.
func StrictestProfile(profiles []string) string {
	best := ProfileGeneric
	for _, p := range profiles {
		if r, ok := profileRank[p]; ok && r > profileRank[best] {
			best = p
		}
	}
	return best
}

// DefaultPorts is an upstream's port list when none is given, by its tls mode
// and profile: the submission ports each provider documents, the alternative
// first-class port after the standard one (SES 2587/2465, SendGrid and
// Mailgun 2525) for networks that block 587. ok is false when the provider
// has no such mode (Postmark offers no implicit TLS).
func DefaultPorts(tls, profile string) (ports []int, ok bool) {
	switch tls {
	case TLSStartTLS:
		switch profile {
		case ProfileSES:
			return []int{587, 2587}, true
		case ProfileSendGrid, ProfilePostmark, ProfileMailgun:
			return []int{587, 2525}, true
		}
		return []int{587}, true
	case TLSImplicit:
		switch profile {
		case ProfileSES:
			return []int{465, 2465}, true
		case ProfilePostmark:
			return nil, false
		}
		return []int{465}, true
	case TLSNone, TLSStartTLSOptional:
		return []int{25}, true
	}
	return nil, false
}

// filler fills absent settings: a string when empty, a number or a
// duration when zero and its key (the func says) absent from the file, so an
// explicit 0 stays for validation.
type filler func(key string) bool

func (filler) str(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func (unset filler) num(p *int, key string, v int) {
	if *p == 0 && unset(key) {
		*p = v
	}
}

func (unset filler) dur(p *time.Duration, key string, v time.Duration) {
	if *p == 0 && unset(key) {
		*p = v
	}
}

// setDefaults fills every absent setting. present holds the dotted keys the
// file gave a value; a nil map means "fill every zero value".
func (l *Loader) setDefaults(c *Config, present map[string]bool) error {
	unset := func(key string) bool { return present == nil || !present[key] }
	str, num, dur := filler(unset).str, filler(unset).num, filler(unset).dur
	var err error
	if c.Hostname == "" {
		c.Hostname, err = l.hostname()
		if err != nil {
			err = fmt.Errorf("cannot determine the host name: %w", err)
		}
	}
	str(&c.StateDir, DefaultStateDir)
	dur(&c.ShutdownTimeout, "shutdown_timeout", DefaultShutdownTimeout)
	str(&c.TLS.MinVersion, DefaultTLSMinVersion)

	for i := range c.Listeners {
		ls := &c.Listeners[i]
		k := fmt.Sprintf("listeners[%d].", i)
		str(&ls.TLS, TLSStartTLS)
		str(&ls.Auth, AuthRequired)
		str(&ls.Policy, DefaultPolicy)
		num(&ls.MaxConnections, k+"max_connections", DefaultMaxConnections)
		num(&ls.MaxConnectionsPerIP, k+"max_connections_per_ip", DefaultMaxConnectionsPerIP)
	}
	for i := range c.Users {
		str(&c.Users[i].Policy, DefaultPolicy)
	}
	for i := range c.DKIM {
		if c.DKIM[i].Managed && len(c.DKIM[i].Algorithms) == 0 && unset(fmt.Sprintf("dkim[%d].algorithms", i)) {
			c.DKIM[i].Algorithms = DefaultDKIMAlgorithms()
		}
	}
	dur(&c.DKIMCheckInterval, "dkim_check_interval", DefaultDKIMCheckInterval)
	dur(&c.DKIMRetireAfter, "dkim_retire_after", DefaultDKIMRetireAfter)
	dur(&c.DNS.Timeout, "dns.timeout", DefaultDNSTimeout)
	if c.Policies == nil {
		c.Policies = map[string]*Policy{}
	}
	if c.Policies[DefaultPolicy] == nil {
		c.Policies[DefaultPolicy] = &Policy{}
	}
	for name, p := range c.Policies {
		if p == nil {
			p = &Policy{}
			c.Policies[name] = p
		}
		k := "policies." + name + "."
		if p.MaxMessageSize == 0 && unset(k+"max_message_size") {
			p.MaxMessageSize = DefaultMaxMessageSize
		}
		num(&p.MaxRecipients, k+"max_recipients", DefaultMaxRecipients)
	}
	for i := range c.Upstreams {
		k := fmt.Sprintf("upstreams[%d].", i)
		c.Upstreams[i].setDefaults(func(key string) bool { return unset(k + key) })
	}
	q := &c.Queue
	if len(q.Retry) == 0 && unset("queue.retry") {
		q.Retry = DefaultRetry()
	}
	dur(&q.MaxAge, "queue.max_age", DefaultQueueMaxAge)
	num(&q.Workers, "queue.workers", DefaultQueueWorkers)
	if c.Hostname != "" {
		str(&q.BounceFrom, DefaultBounceFrom(c.Hostname))
	}
	if q.MinFreeSpace == 0 && unset("queue.min_free_space") {
		q.MinFreeSpace = DefaultMinFreeSpace
	}
	if len(q.WebhookEvents) == 0 && unset("queue.webhook_events") {
		q.WebhookEvents = DefaultWebhookEvents()
	}
	dur(&c.Journal.Retention, "journal.retention", DefaultJournalRetention)
	if c.Journal.MaxSize == 0 && unset("journal.max_size") {
		c.Journal.MaxSize = DefaultJournalMaxSize
	}
	if c.RateLimit.FailOpen == nil {
		t := true
		c.RateLimit.FailOpen = &t
	}
	if c.Suppression.Enabled == nil {
		t := true
		c.Suppression.Enabled = &t
	}
	dur(&c.Suppression.TTL, "suppression.ttl", DefaultSuppressionTTL)
	dur(&c.Hooks.IndexTTL, "hooks.index_ttl", DefaultHooksIndexTTL)
	str(&c.Log.Format, "text")
	str(&c.Log.Level, "info")
	return err
}

// WithDefaults returns u with every absent setting filled, as the loader
// fills it: for upstreams built in code (tests, tools), so that no other
// package re-derives a default.
func (u Upstream) WithDefaults() Upstream {
	u.setDefaults(func(string) bool { return true })
	return u
}

// setDefaults fills u's absent settings; unset says whether the file left a
// key (relative to the upstream) out, so an explicit 0 stays for validation.
func (u *Upstream) setDefaults(unset func(key string) bool) {
	str, num, dur := filler(unset).str, filler(unset).num, filler(unset).dur
	str(&u.Type, UpstreamSMTP)
	str(&u.TLS, TLSStartTLS)
	str(&u.Profile, ProfileGeneric)
	str(&u.AuthMechanism, AuthPlain)
	num(&u.Priority, "priority", DefaultUpstreamPriority)
	num(&u.Weight, "weight", DefaultUpstreamWeight)
	num(&u.MaxConnections, "max_connections", DefaultUpstreamMaxConnections)
	dur(&u.BreakerBackoff, "breaker_backoff", DefaultBreakerBackoff)
	dur(&u.Timeout, "timeout", DefaultUpstreamTimeout)
	dur(&u.ConnectTimeout, "connect_timeout", DefaultConnectTimeout)
	dur(&u.GreetingTimeout, "greeting_timeout", DefaultGreetingTimeout)
	if u.API == APIMailgun {
		str(&u.Region, "us")
	}
	if u.Type == UpstreamSMTP && u.API == "" && len(u.Ports) == 0 && unset("ports") {
		// When the provider lacks the mode, Ports stays empty and
		// validation says why.
		u.Ports, _ = DefaultPorts(u.TLS, u.Profile)
	}
}

// SPFInclude is the domain a sending domain's SPF record must include for
// mail sent through a provider of this profile ("" for generic: nothing
// is known). `sluice doctor` checks it.
func SPFInclude(profile string) string {
	switch profile {
	case ProfileSES:
		return "amazonses.com"
	case ProfileSendGrid:
		return "sendgrid.net"
	case ProfileMailgun:
		return "mailgun.org"
	case ProfilePostmark:
		return "spf.mtasv.net"
	}
	return ""
}
