// Package testsmtp is a real go-smtp upstream for tests: it listens on
// 127.0.0.1:0, can require TLS and AUTH (PLAIN, LOGIN, XOAUTH2), answer
// chosen replies per command, stall, drop mid-DATA or refuse connections,
// and records every message and connection so tests assert what a provider
// would have seen. Every knob is goroutine-safe and may change at runtime.
package testsmtp

import (
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/internal/saslogin"
)

// TLSMode is how the server offers TLS.
type TLSMode int

// TLS modes.
const (
	TLSNone     TLSMode = iota // plaintext, no STARTTLS
	TLSStartTLS                // STARTTLS offered
	TLSImplicit                // TLS from the first byte
)

// Mode is how the listener treats a new connection.
type Mode int

// Listener modes.
const (
	Serve  Mode = iota // speak SMTP
	Refuse             // accept, then close at once (a reset before the banner)
	Silent             // accept and never send a banner (a blackholed port)
)

// Stage names a point in the transaction for Fail and Stall.
type Stage string

// Stages. go-smtp always answers DATA with 354 before the backend sees the
// body, so a reply to the DATA command itself cannot be simulated; "data"
// stalls or drops while the body is being sent instead.
const (
	StageMail     Stage = "mail"
	StageRcpt     Stage = "rcpt"
	StageData     Stage = "data"      // Stall: stop reading the body; Drop: close mid-body
	StageAfterDot Stage = "after-dot" // the reply to the final dot
)

// Options configure a Server. Zero values: plaintext, no AUTH.
type Options struct {
	TLS      TLSMode
	Cert     *tls.Certificate // nil: NewCert("127.0.0.1", "localhost")
	Hostname string           // banner name; default "testsmtp.invalid"
	Username string           // non-empty: AUTH required (PLAIN and LOGIN)
	Password string
	// BearerToken, when set, offers XOAUTH2 and accepts this token for Username.
	BearerToken string
	// LoginPrompts replaces the LOGIN challenges (default "Username:", "Password:").
	LoginPrompts [2]string
	Mode         Mode
	// SMTPUTF8 offers the extension (RFC 6531).
	SMTPUTF8 bool
	// NoLeakCheck turns off the cleanup check that every connection was
	// ended by the client (for tests that abandon connections on purpose).
	NoLeakCheck bool
}

// Message is one message the server accepted.
type Message struct {
	From    string
	To      []string
	Data    []byte // as received, after dot-unstuffing
	Session int    // the connection number, from 1
	At      time.Time
	TLS     bool
	User    string // the authenticated user, "" without AUTH
	UTF8    bool   // MAIL carried the SMTPUTF8 parameter
}

// Rule is a reply the server gives instead of accepting.
type Rule struct {
	Stage    Stage
	Code     int
	Enhanced [3]int // {0,0,0}: derived by go-smtp from Code
	Message  string
	Rcpt     string // StageRcpt only: "" any recipient, else only this one
	Times    int    // 0: every time; else that many times, then the rule is gone
}

// Server is a running test upstream.
type Server struct {
	t    testing.TB
	opts Options
	ln   net.Listener
	srv  *smtp.Server
	cert tls.Certificate

	mu       sync.Mutex
	mode     Mode
	rules    []*Rule
	stalls   map[Stage]bool
	stalled  int // sessions blocked in a stall right now
	drop     bool
	release  chan struct{}
	closed   chan struct{}
	msgs     []Message
	msgCh    chan struct{}
	accepts  int
	total    int
	current  int
	maxConc  int
	byAddr   map[string]int // client address → connection number
	hellos   []string
	open     map[net.Conn]struct{}
	username string
	password string
	token    string
}

// Start runs a server on 127.0.0.1:0 until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsmtp: listen: %v", err)
	}
	s := &Server{
		t: t, opts: opts, ln: ln, mode: opts.Mode,
		stalls:   map[Stage]bool{},
		release:  make(chan struct{}),
		closed:   make(chan struct{}),
		msgCh:    make(chan struct{}, 1),
		byAddr:   map[string]int{},
		open:     map[net.Conn]struct{}{},
		username: opts.Username, password: opts.Password, token: opts.BearerToken,
	}
	if opts.Cert != nil {
		s.cert = *opts.Cert
	} else {
		s.cert, _ = NewCert("127.0.0.1", "localhost")
	}
	s.srv = smtp.NewServer(smtp.BackendFunc(s.newSession))
	s.srv.Domain = opts.Hostname
	if s.srv.Domain == "" {
		s.srv.Domain = "testsmtp.invalid"
	}
	s.srv.AllowInsecureAuth = true // AUTH tests run on plaintext too
	s.srv.EnableSMTPUTF8 = opts.SMTPUTF8
	s.srv.ErrorLog = nopLogger{}
	s.srv.ReadTimeout = 30 * time.Second
	s.srv.WriteTimeout = 30 * time.Second
	cfg := &tls.Config{Certificates: []tls.Certificate{s.cert}}
	var l net.Listener = &listener{Listener: ln, s: s}
	switch opts.TLS {
	case TLSStartTLS:
		s.srv.TLSConfig = cfg
	case TLSImplicit:
		l = tls.NewListener(l, cfg)
	}
	go s.srv.Serve(l)
	t.Cleanup(s.close)
	return s
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...interface{}) {}
func (nopLogger) Println(...interface{})        {}

// Addr is "127.0.0.1:port".
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Port is the listening port.
func (s *Server) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Cert is the server's certificate.
func (s *Server) Cert() tls.Certificate { return s.cert }

// CAFile writes the server's certificate as PEM into a temp file and returns its path.
func (s *Server) CAFile() string {
	return WriteCA(s.t, s.cert)
}

// WriteCA writes c's leaf as PEM into the test's temp dir and returns the path.
func WriteCA(t testing.TB, c tls.Certificate) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]})
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatalf("testsmtp: write ca: %v", err)
	}
	return p
}

// ClosedPort returns a port on 127.0.0.1 nothing listens on (bound, then
// released; nothing else in the test binds it again).
func ClosedPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testsmtp: listen: %v", err)
	}
	p := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return p
}

// SetMode changes how new connections are treated.
func (s *Server) SetMode(m Mode) {
	s.mu.Lock()
	s.mode = m
	s.mu.Unlock()
}

// SetAuth changes the required credentials ("" user: no AUTH).
func (s *Server) SetAuth(user, password, token string) {
	s.mu.Lock()
	s.username, s.password, s.token = user, password, token
	s.mu.Unlock()
}

// Fail makes every transaction fail at stage with this reply until cleared.
func (s *Server) Fail(stage Stage, code int, enhanced [3]int, msg string) {
	s.FailRule(Rule{Stage: stage, Code: code, Enhanced: enhanced, Message: msg})
}

// FailRule adds r; rules are tried in the order added.
func (s *Server) FailRule(r Rule) {
	s.mu.Lock()
	s.rules = append(s.rules, &r)
	s.mu.Unlock()
}

// ClearFailures removes every rule.
func (s *Server) ClearFailures() {
	s.mu.Lock()
	s.rules = nil
	s.mu.Unlock()
}

// Stall makes the server hang at stage (data: stop reading the body;
// after-dot: read it all, then never reply; mail/rcpt: never reply) until
// Release or cleanup.
func (s *Server) Stall(stage Stage) {
	s.mu.Lock()
	s.stalls[stage] = true
	s.mu.Unlock()
}

// Release ends every stall in progress and clears the stall settings.
func (s *Server) Release() {
	s.mu.Lock()
	close(s.release)
	s.release = make(chan struct{})
	s.stalls = map[Stage]bool{}
	s.mu.Unlock()
}

// DropMidData makes the server close the connection after reading part of
// the body (on or off).
func (s *Server) DropMidData(on bool) {
	s.mu.Lock()
	s.drop = on
	s.mu.Unlock()
}

// Messages returns a copy of what was accepted so far, in order.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// WaitMessages waits until at least n messages arrived and returns them;
// it fails the test after timeout.
func (s *Server) WaitMessages(t testing.TB, n int, timeout time.Duration) []Message {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if m := s.Messages(); len(m) >= n {
			return m
		}
		select {
		case <-s.msgCh:
		case <-deadline.C:
			t.Fatalf("testsmtp: %d messages after %v, want %d", len(s.Messages()), timeout, n)
		}
	}
}

// Sessions are counts of SMTP connections served (not refused or silent).
type Sessions struct{ Total, Current, Max int }

// Sessions returns the connection counts.
func (s *Server) Sessions() Sessions {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Sessions{s.total, s.current, s.maxConc}
}

// AcceptCount is the number of connections accepted at the listener in any mode.
func (s *Server) AcceptCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepts
}

// Hellos returns every EHLO/HELO name seen, in order (pre- and post-STARTTLS).
func (s *Server) Hellos() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.hellos...)
}

func (s *Server) close() {
	s.mu.Lock()
	close(s.closed)
	s.mu.Unlock()
	if !s.opts.NoLeakCheck && !s.t.Failed() {
		// The client must end its sessions itself (QUIT or close); give it a
		// moment, since its cleanup may run just before this one.
		deadline := time.Now().Add(3 * time.Second)
		for {
			s.mu.Lock()
			n := len(s.open)
			s.mu.Unlock()
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				s.t.Errorf("testsmtp %s: %d connections still open at cleanup (client leaked sessions)", s.Addr(), n)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	s.srv.Close()
	s.mu.Lock()
	for c := range s.open {
		c.Close()
	}
	s.mu.Unlock()
}

// listener counts and tracks connections and applies the mode.
type listener struct {
	net.Listener
	s *Server
}

func (l *listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s := l.s
		s.mu.Lock()
		s.accepts++
		mode := s.mode
		s.mu.Unlock()
		switch mode {
		case Refuse:
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // a reset, as a firewall or overloaded host sends
			}
			c.Close()
			continue
		case Silent:
			s.mu.Lock()
			s.open[c] = struct{}{}
			s.mu.Unlock()
			go func() {
				io.Copy(io.Discard, c) // until the client gives up
				c.Close()
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
			}()
			continue
		}
		s.mu.Lock()
		s.total++
		s.current++
		if s.current > s.maxConc {
			s.maxConc = s.current
		}
		s.byAddr[c.RemoteAddr().String()] = s.total
		tc := &conn{Conn: c, s: s}
		s.open[tc] = struct{}{}
		s.mu.Unlock()
		return tc, nil
	}
}

type conn struct {
	net.Conn
	s    *Server
	once sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.s.mu.Lock()
		c.s.current--
		delete(c.s.open, c)
		delete(c.s.byAddr, c.RemoteAddr().String())
		c.s.mu.Unlock()
	})
	return err
}

type session struct {
	s    *Server
	c    *smtp.Conn
	num  int
	user string
	from string
	utf8 bool
	to   []string
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hellos = append(s.hellos, c.Hostname())
	return &session{s: s, c: c, num: s.byAddr[c.Conn().RemoteAddr().String()]}, nil
}

func (se *session) authRequired() bool {
	se.s.mu.Lock()
	defer se.s.mu.Unlock()
	return se.s.username != ""
}

// match returns the reply of the first rule for stage (and rcpt), consuming one use.
func (s *Server) match(stage Stage, rcpt string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, r := range s.rules {
		if r.Stage != stage || (r.Rcpt != "" && !strings.EqualFold(r.Rcpt, rcpt)) {
			continue
		}
		if r.Times > 0 {
			r.Times--
			if r.Times == 0 {
				s.rules = append(s.rules[:i:i], s.rules[i+1:]...)
			}
		}
		return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(r.Enhanced), Message: r.Message}
	}
	return nil
}

// stall blocks while stage is stalled, until Release or cleanup.
func (s *Server) stall(stage Stage) {
	s.mu.Lock()
	on, rel, closed := s.stalls[stage], s.release, s.closed
	if on {
		s.stalled++
	}
	s.mu.Unlock()
	if on {
		select {
		case <-rel:
		case <-closed:
		}
		s.mu.Lock()
		s.stalled--
		s.mu.Unlock()
	}
}

// Stalled is how many sessions are blocked in a stall now: a test waits
// for it to know the client is waiting for the stalled reply.
func (s *Server) Stalled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stalled
}

func (se *session) Mail(from string, o *smtp.MailOptions) error {
	if se.authRequired() && se.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	se.s.stall(StageMail)
	if err := se.s.match(StageMail, ""); err != nil {
		return err
	}
	se.from = from
	se.utf8 = o != nil && o.UTF8
	return nil
}

func (se *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	se.s.stall(StageRcpt)
	if err := se.s.match(StageRcpt, to); err != nil {
		return err
	}
	se.to = append(se.to, to)
	return nil
}

func (se *session) Data(r io.Reader) error {
	se.s.stall(StageData)
	se.s.mu.Lock()
	drop := se.s.drop
	se.s.mu.Unlock()
	if drop {
		buf := make([]byte, 64)
		io.ReadFull(r, buf)
		se.c.Conn().Close()
		return errors.New("testsmtp: dropped mid-data")
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	se.s.stall(StageAfterDot)
	if err := se.s.match(StageAfterDot, ""); err != nil {
		return err
	}
	_, isTLS := se.c.TLSConnectionState()
	m := Message{From: se.from, To: append([]string(nil), se.to...), Data: b, Session: se.num, At: time.Now(), TLS: isTLS, User: se.user, UTF8: se.utf8}
	se.s.mu.Lock()
	se.s.msgs = append(se.s.msgs, m)
	se.s.mu.Unlock()
	select {
	case se.s.msgCh <- struct{}{}:
	default:
	}
	return nil
}

func (se *session) Reset() { se.from, se.to = "", nil }

func (se *session) Logout() error { return nil }

func (se *session) AuthMechanisms() []string {
	se.s.mu.Lock()
	defer se.s.mu.Unlock()
	if se.s.username == "" {
		return nil
	}
	m := []string{sasl.Plain, sasl.Login}
	if se.s.token != "" {
		m = append(m, "XOAUTH2")
	}
	return m
}

var errAuth = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication failed"}

func (se *session) check(user, pass, token string) error {
	se.s.mu.Lock()
	wantU, wantP, wantT := se.s.username, se.s.password, se.s.token
	se.s.mu.Unlock()
	if user != wantU || (token == "" && pass != wantP) || (token != "" && token != wantT) {
		return errAuth
	}
	se.user = user
	return nil
}

func (se *session) Auth(mech string) (sasl.Server, error) {
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return errAuth
			}
			return se.check(user, pass, "")
		}), nil
	case sasl.Login:
		return &saslogin.Server{Prompts: se.s.opts.LoginPrompts, Auth: func(u, pw string) error { return se.check(u, pw, "") }}, nil
	case "XOAUTH2":
		return &xoauth2Server{auth: func(u, tok string) error { return se.check(u, "", tok) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// xoauth2Server behaves as Gmail does: a bad token gets a 334 with a JSON
// error, and the client's empty answer then gets 535.
type xoauth2Server struct {
	failed bool
	auth   func(user, token string) error
}

func (x *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if x.failed {
		return nil, true, errAuth
	}
	if resp == nil {
		return []byte{}, false, nil
	}
	var user, token string
	for _, f := range strings.Split(string(resp), "\x01") {
		if v, ok := strings.CutPrefix(f, "user="); ok {
			user = v
		}
		if v, ok := strings.CutPrefix(f, "auth=Bearer "); ok {
			token = v
		}
	}
	if token == "" || x.auth(user, token) != nil {
		x.failed = true
		return []byte(`{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}`), false, nil
	}
	return nil, true, nil
}

// String describes the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("testsmtp(%s)", s.Addr()) }
