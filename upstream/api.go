// Package upstream delivers spooled messages to providers and smarthosts:
// connection, STARTTLS/implicit TLS, AUTH, port fallback, failover by
// priority and weight, connection reuse, pacing, circuit breakers, and the
// classification of every reply into a typed Error.
package upstream

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/sluicemail/sluice/config"
)

// Message is one spooled message handed to Deliver.
type Message struct {
	ID   string   // queue ID (the maildir upstream names its file <ID>.eml)
	From string   // envelope sender, "" for the null sender
	To   []string // recipients still to deliver
	Size int64    // bytes Open yields
	// Route: the upstream names allowed, as policy resolved them at
	// acceptance (policy.Route). Empty only for envelopes spooled by a
	// version that did not resolve routes: then every upstream.
	Route []string
	// RequireTLS (RFC 8689): only upstreams that never fall back to
	// plaintext (tls: starttls or implicit, or a local maildir) may carry it.
	RequireTLS bool
	// SMTPUTF8 (RFC 6531): the message needs it; only upstreams that offer
	// it take the message (API upstreams and maildir do), else it fails
	// with 5.6.7.
	SMTPUTF8 bool
	// Open returns the whole message (DKIM-Signature prefix, headers, body;
	// CRLF line endings). It may be called more than once (failover, retry).
	Open func() (io.ReadCloser, error)
}

// Result is the outcome of one Deliver call.
type Result struct {
	Upstream string  // the upstream that accepted (or finally refused) the message
	Errs     []error // len(Msg.To): nil = accepted by Upstream, else *Error
	// Attempts are the tries this call made, one per upstream, in order
	// (for the delivery journal).
	Attempts []Attempt
}

// Attempt is one try of a message on one upstream.
type Attempt struct {
	Upstream string
	Host     string
	Port     int    // 0 when no connection was made
	TLS      string // "TLS 1.3", "none"; "" when no connection was made
	Rcpts    []string
	Errs     []error // per Rcpts: nil accepted, else the *Error that refused it
	Reply    string  // the upstream's reply to the final dot when it accepted
	Duration time.Duration
}

// Options configure a Dispatcher.
type Options struct {
	Hostname  string // EHLO name
	Upstreams []config.Upstream
	RootCAs   *tls.Config // optional base TLS config (tests); nil: system roots
	Logger    *slog.Logger
	Now       func() time.Time

	// Rand orders upstreams of equal priority by weight; nil: seeded from the clock.
	Rand *rand.Rand
	// StatusFile, when set, receives the Status list as JSON (atomically, at
	// most once a second, when something changed) for `sluice upstreams`.
	StatusFile string
	// IdleTimeout closes pooled connections unused for this long; default 30s.
	IdleTimeout time.Duration
}

// Deliverer is what the queue needs from this package.
type Deliverer interface {
	Deliver(ctx context.Context, m *Message) Result
}

// Availability is what a Deliverer may add: whether a message on route can
// be tried now, or else when (the first of its breakers to let a delivery
// through). The queue asks before spending a retry step.
type Availability interface {
	Available(route []string, requireTLS bool) (ok bool, at time.Time)
}
