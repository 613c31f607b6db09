// Package relay is where a message enters Sluice: the listeners (STARTTLS,
// implicit TLS, plain; PROXY protocol; connection limits), the go-smtp
// sessions, AUTH against the user store, the policy decisions at MAIL, RCPT
// and DATA, and the DATA pipeline (line endings, header checks, Received:,
// DKIM signing) that ends in the durable spool. It answers 250 only after
// queue.Draft.Commit returned, so it never touches the network upstream.
package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/policy"
	"github.com/sluicemail/sluice/queue"
	"github.com/sluicemail/sluice/signing"
	"github.com/sluicemail/sluice/suppress"
)

// Options are what a relay Server is built from.
type Options struct {
	Config *config.Config
	Policy *policy.Engine
	Keys   *signing.Keyring
	Queue  *queue.Queue
	// TLS is the server certificate configuration (GetCertificate lets the
	// caller swap certificates on reload); nil when no listener uses TLS.
	TLS    *tls.Config
	Logger *slog.Logger
	Now    func() time.Time
	// Journal receives an accepted event for every message answered 250
	// (nil: none kept).
	Journal journal.Sink
	// Suppress, when set, refuses RCPT to suppressed addresses (DESIGN §8.2).
	Suppress *suppress.List
}

// state is everything a reload replaces at once. A session keeps the state
// it started with, so a reload never changes the rules under an open
// transaction.
type state struct {
	cfg    *config.Config
	policy *policy.Engine
	keys   *signing.Keyring
	users  *users
}

// Server runs every configured listener.
type Server struct {
	state     atomic.Pointer[state]
	queue     *queue.Queue
	journal   journal.Sink
	supp      *suppress.List
	tlsConfig *tls.Config
	log       *slog.Logger
	now       func() time.Time

	listeners []*listener
	wg        sync.WaitGroup
	cids      atomic.Uint64
}

var (
	mAccepted    = metrics.Default.NewCounter("sluice_messages_accepted_total", "Messages answered 250 and spooled.")
	mRejected    = metrics.Default.NewCounterVec("sluice_messages_rejected_total", "Messages, recipients or connections refused, by reason.", "reason")
	mAuthFail    = metrics.Default.NewCounter("sluice_auth_failures_total", "Failed SMTP AUTH attempts.")
	mAuthOK      = metrics.Default.NewCounter("sluice_auth_successes_total", "Successful SMTP AUTH attempts.")
	mConnections = metrics.Default.NewCounterVec("sluice_connections_total", "Connections admitted, by listener.", "listener")
	mSessions    = metrics.Default.NewGauge("sluice_sessions", "Open SMTP sessions.")
	mAcceptSecs  = metrics.Default.NewHistogram("sluice_accept_duration_seconds", "End of DATA to the 250 reply: signing, spool commit and fsync.", metrics.LatencyBuckets)
)

func (s *Server) metricRejected(reason string) { mRejected.Inc(reason) }

// New prepares a server; Listen binds the addresses.
func New(opts Options) (*Server, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{queue: opts.Queue, journal: opts.Journal, supp: opts.Suppress, tlsConfig: opts.TLS, log: opts.Logger, now: opts.Now}
	s.state.Store(s.newState(opts.Config, opts.Policy, opts.Keys))
	return s, nil
}

func (s *Server) newState(cfg *config.Config, pol *policy.Engine, keys *signing.Keyring) *state {
	return &state{cfg: cfg, policy: pol, keys: keys, users: newUsers(cfg.Users, s.now)}
}

// Reload swaps users, policies and keys; open sessions finish under the old
// ones. Listener addresses are not changed by a reload.
func (s *Server) Reload(cfg *config.Config, pol *policy.Engine, keys *signing.Keyring) {
	s.state.Store(s.newState(cfg, pol, keys))
	// New connections go to go-smtp servers built from the new state: EHLO
	// SIZE (the largest max_message_size) and the banner name are server
	// fields fixed at construction.
	for _, l := range s.listeners {
		nf := &front{gate: newGate(l.raw.Addr()), srv: s.newSMTPServer(l)}
		l.smu.Lock()
		kept := l.fronts[:0]
		for _, f := range l.fronts {
			if f == l.front.Load() || f.open.Load() > 0 {
				kept = append(kept, f)
			}
		}
		clear(l.fronts[len(kept):])
		l.fronts = append(kept, nf)
		l.smu.Unlock()
		s.serveFront(l, nf)
		old := l.front.Swap(nf)
		old.gate.close() // its server stops accepting; its sessions go on
	}
}

// Listen binds every configured listener, so that a port in use fails the
// start with a clear error before anything is served.
func (s *Server) Listen() error {
	st := s.state.Load()
	for _, lc := range st.cfg.Listeners {
		if lc.TLS != config.TLSNone && s.tlsConfig == nil {
			return fmt.Errorf("relay: listener %s needs a TLS certificate", lc.Name)
		}
		trusted, err := parsePrefixes(lc.TrustedNetworks)
		if err != nil {
			return fmt.Errorf("relay: listener %s: %w", lc.Name, err)
		}
		raw, err := net.Listen("tcp", lc.Address)
		if err != nil {
			s.closeListeners()
			return fmt.Errorf("relay: listener %s: %w", lc.Name, err)
		}
		l := &listener{srv: s, cfg: lc, raw: raw, trusted: trusted, perIP: map[netip.Addr]int{}}
		l.front.Store(&front{gate: newGate(raw.Addr()), srv: s.newSMTPServer(l)})
		l.fronts = []*front{l.front.Load()}
		s.listeners = append(s.listeners, l)
	}
	return nil
}

// Serve runs the listeners until Shutdown; it returns at once.
func (s *Server) Serve() {
	for _, l := range s.listeners {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); l.serve() }()
		s.serveFront(l, l.front.Load())
	}
}

func (s *Server) serveFront(l *listener, f *front) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := f.srv.Serve(f.gate); err != nil && !errors.Is(err, smtp.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			s.log.Error("listener stopped", "listener", l.cfg.Name, "err", err)
		}
	}()
}

// Addr returns the bound address of the named listener (nil if unknown).
func (s *Server) Addr(name string) net.Addr {
	for _, l := range s.listeners {
		if l.cfg.Name == name {
			return l.raw.Addr()
		}
	}
	return nil
}

func (s *Server) closeListeners() {
	for _, l := range s.listeners {
		l.raw.Close()
	}
}

// Shutdown stops accepting, lets open sessions finish until ctx is done,
// then closes what is left. A session cut off before its 250 has had
// nothing committed, so nothing is lost.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeListeners()
	var wg sync.WaitGroup
	for _, l := range s.listeners {
		l.smu.Lock()
		var servers []*smtp.Server
		for _, f := range l.fronts {
			servers = append(servers, f.srv)
		}
		l.smu.Unlock()
		for _, srv := range servers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := srv.Shutdown(ctx); err != nil {
					srv.Close()
				}
			}()
		}
	}
	wg.Wait()
	s.wg.Wait()
	return nil
}

func (s *Server) newSMTPServer(l *listener) *smtp.Server {
	st := s.state.Load()
	srv := smtp.NewServer(&backend{srv: s, l: l})
	srv.Domain = st.cfg.Hostname
	srv.MaxMessageBytes = st.policy.MaxMessageSize()
	srv.MaxRecipients = 0 // per policy, in Rcpt
	srv.MaxLineLength = 2000
	srv.ReadTimeout = 0 // idle timeout per read in trackedConn instead
	srv.WriteTimeout = writeTimeout
	// AUTH is offered only where allowed (AuthMechanisms), and an AUTH on a
	// plaintext STARTTLS listener is answered 530 by Auth, not go-smtp's 523.
	srv.AllowInsecureAuth = true
	srv.EnableREQUIRETLS = true
	srv.EnableDSN = true
	srv.EnableSMTPUTF8 = true // DESIGN §8.5; Mail/Rcpt refuse UTF-8 addresses without it
	srv.ErrorLog = slogErrorLog{s.log}
	if l.cfg.TLS == config.TLSStartTLS {
		srv.TLSConfig = s.tlsConfig
	}
	return srv
}

type slogErrorLog struct{ l *slog.Logger }

func (e slogErrorLog) Printf(format string, v ...any) { e.l.Warn(fmt.Sprintf(format, v...)) }
func (e slogErrorLog) Println(v ...any)               { e.l.Warn(fmt.Sprint(v...)) }
