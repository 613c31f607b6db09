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

	DefaultQueueMaxAge   = 5 * 24 * time.Hour
	DefaultQueueWorkers  = 32
	DefaultMinFreeSpace  = 100 * Size(1e6)
	DefaultTLSMinVersion = "1.2"
)

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

// setDefaults fills every absent setting. present holds the dotted keys the
// file gave a value; a nil map means "fill every zero value".
func (l *Loader) setDefaults(c *Config, present map[string]bool) error {
	unset := func(key string) bool { return present == nil || !present[key] }
	str := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	num := func(p *int, key string, v int) {
		if *p == 0 && unset(key) {
			*p = v
		}
	}
	dur := func(p *time.Duration, key string, v time.Duration) {
		if *p == 0 && unset(key) {
			*p = v
		}
	}
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
		u := &c.Upstreams[i]
		k := fmt.Sprintf("upstreams[%d].", i)
		str(&u.Type, UpstreamSMTP)
		str(&u.TLS, TLSStartTLS)
		str(&u.Profile, ProfileGeneric)
		str(&u.AuthMechanism, AuthPlain)
		num(&u.Priority, k+"priority", DefaultUpstreamPriority)
		num(&u.Weight, k+"weight", DefaultUpstreamWeight)
		num(&u.MaxConnections, k+"max_connections", DefaultUpstreamMaxConnections)
		dur(&u.BreakerBackoff, k+"breaker_backoff", DefaultBreakerBackoff)
		dur(&u.Timeout, k+"timeout", DefaultUpstreamTimeout)
		dur(&u.ConnectTimeout, k+"connect_timeout", DefaultConnectTimeout)
		if u.Type == UpstreamSMTP && len(u.Ports) == 0 && unset(k+"ports") {
			// When the provider lacks the mode, Ports stays empty and
			// validation says why.
			u.Ports, _ = DefaultPorts(u.TLS, u.Profile)
		}
	}
	q := &c.Queue
	if len(q.Retry) == 0 && unset("queue.retry") {
		q.Retry = DefaultRetry()
	}
	dur(&q.MaxAge, "queue.max_age", DefaultQueueMaxAge)
	num(&q.Workers, "queue.workers", DefaultQueueWorkers)
	if c.Hostname != "" {
		str(&q.BounceFrom, "MAILER-DAEMON@"+c.Hostname)
	}
	if q.MinFreeSpace == 0 && unset("queue.min_free_space") {
		q.MinFreeSpace = DefaultMinFreeSpace
	}
	if c.RateLimit.FailOpen == nil {
		t := true
		c.RateLimit.FailOpen = &t
	}
	str(&c.Log.Format, "text")
	str(&c.Log.Level, "info")
	return err
}
