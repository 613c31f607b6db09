package upstream

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/sluicemail/sluice/config"
)

// client is one open, greeted (and authenticated) connection to an upstream.
type client struct {
	c        *smtp.Client
	conn     net.Conn // what c writes to: for write deadlines while sending the body
	port     int
	tls      string // negotiated TLS version ("TLS 1.3") or "none", for the journal
	utf8     bool   // the server offered SMTPUTF8
	pipeline bool   // the server offered PIPELINING: MAIL, RCPT and DATA go in one write
	lastUsed time.Time
}

// tlsName names the TLS version conn runs over, or "none".
func tlsName(conn net.Conn) string {
	if g, ok := conn.(*greetedConn); ok {
		conn = g.Conn
	}
	if tc, ok := conn.(*tls.Conn); ok {
		return tls.VersionName(tc.ConnectionState().Version)
	}
	return "none"
}

// greetedConn replays a synthetic banner before the real stream. After we
// spoke the pre-TLS EHLO and STARTTLS ourselves (go-smtp has no StartTLS
// method and would say "EHLO localhost"), a fresh smtp.Client still
// expects a 220 greeting first; the server sends none after STARTTLS.
// The same replay serves every mode: the banner is read by us, under the
// greeting timeout, before go-smtp's client takes the connection.
type greetedConn struct {
	net.Conn
	pre []byte
	r   io.Reader // what follows the banner: the Conn, or a reader buffering it
}

func (g *greetedConn) Read(p []byte) (int, error) {
	if len(g.pre) > 0 {
		n := copy(p, g.pre)
		g.pre = g.pre[n:]
		return n, nil
	}
	return g.r.Read(p)
}

// readBanner reads the server's 220 greeting under greeting_timeout, its
// own limit: a port that accepts TCP and never greets (a firewall's
// transparent proxy) costs that, not the command timeout.
func (u *upstream) readBanner(conn net.Conn) (*bufio.Reader, *Error) {
	conn.SetReadDeadline(time.Now().Add(u.cfg.GreetingTimeout))
	defer conn.SetReadDeadline(time.Time{})
	br := bufio.NewReader(conn)
	if _, _, err := textproto.NewReader(br).ReadResponse(220); err != nil {
		return nil, u.errorf(StageConnect, smtpErr(err), "banner")
	}
	return br, nil
}

const resumedBanner = "220 resumed\r\n"

// open dials one port and brings the session to the point where MAIL may
// be sent: banner, EHLO, TLS, EHLO, AUTH.
func (u *upstream) open(ctx context.Context, port int) (*client, *Error) {
	cfg := &u.cfg
	addr := net.JoinHostPort(cfg.Host, strconv.Itoa(port))
	d := net.Dialer{Timeout: cfg.ConnectTimeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, u.errorf(StageDial, err, "dial %s", addr)
	}
	// The handshake reads under deadlines; a cancelled ctx (shutdown)
	// ends it at once by closing the connection under it.
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	cl, e := u.handshake(ctx, raw, port)
	if !stop() && e == nil {
		cl.c.Close()
		e = &Error{Upstream: cfg.Name, Stage: StageConnect, Err: ctx.Err()}
	}
	if e != nil {
		raw.Close()
		return nil, e
	}
	return cl, nil
}

func (u *upstream) handshake(ctx context.Context, raw net.Conn, port int) (*client, *Error) {
	cfg := &u.cfg
	hostname := u.d.opts.Hostname
	var conn net.Conn = raw
	switch cfg.TLS {
	case config.TLSImplicit:
		tc := tls.Client(raw, u.tls)
		raw.SetDeadline(time.Now().Add(cfg.ConnectTimeout))
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, u.errorf(StageTLS, err, "tls handshake")
		}
		raw.SetDeadline(time.Time{})
		br, e := u.readBanner(tc)
		if e != nil {
			return nil, e
		}
		conn = &greetedConn{Conn: tc, pre: []byte(resumedBanner), r: br}
	case config.TLSNone:
		br, e := u.readBanner(raw)
		if e != nil {
			return nil, e
		}
		conn = &greetedConn{Conn: raw, pre: []byte(resumedBanner), r: br}
	case config.TLSStartTLS, config.TLSStartTLSOptional:
		c, e := u.startTLS(ctx, raw, hostname)
		if e != nil {
			return nil, e
		}
		conn = c
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = cfg.Timeout
	c.SubmissionTimeout = cfg.Timeout
	if err := c.Hello(hostname); err != nil {
		return nil, u.errorf(StageConnect, err, "greeting")
	}
	if e := u.auth(ctx, c); e != nil {
		c.Close()
		return nil, e
	}
	utf8, _ := c.Extension("SMTPUTF8")
	pipeline, _ := c.Extension("PIPELINING")
	u.mu.Lock()
	u.utf8 = notOffered
	if utf8 {
		u.utf8 = offered
	}
	u.mu.Unlock()
	return &client{c: c, conn: conn, port: port, tls: tlsName(conn), utf8: utf8, pipeline: pipeline, lastUsed: u.d.now()}, nil
}

// startTLS speaks banner, EHLO (with our hostname) and STARTTLS on the raw
// connection. starttls never continues in plaintext; starttls-optional
// does when the server offers no STARTTLS or refuses it.
func (u *upstream) startTLS(ctx context.Context, raw net.Conn, hostname string) (net.Conn, *Error) {
	optional := u.cfg.TLS == config.TLSStartTLSOptional
	br, e := u.readBanner(raw)
	if e != nil {
		return nil, e
	}
	raw.SetDeadline(time.Now().Add(u.cfg.Timeout))
	defer raw.SetDeadline(time.Time{})
	tr := textproto.NewReader(br)
	if _, err := fmt.Fprintf(raw, "EHLO %s\r\n", hostname); err != nil {
		return nil, u.errorf(StageConnect, err, "ehlo")
	}
	_, msg, err := tr.ReadResponse(250)
	if err != nil {
		return nil, u.errorf(StageConnect, smtpErr(err), "ehlo")
	}
	offered := false
	for _, l := range strings.Split(msg, "\n")[1:] {
		if strings.EqualFold(strings.TrimSpace(l), "STARTTLS") {
			offered = true
		}
	}
	plaintext := func() (net.Conn, *Error) {
		if br.Buffered() > 0 {
			return nil, u.errorf(StageConnect, errors.New("unexpected data from server"), "ehlo")
		}
		return &greetedConn{Conn: raw, pre: []byte(resumedBanner), r: raw}, nil
	}
	if !offered {
		if optional {
			return plaintext()
		}
		return nil, u.errorf(StageTLS, errors.New("server does not offer STARTTLS"), "starttls")
	}
	if _, err := io.WriteString(raw, "STARTTLS\r\n"); err != nil {
		return nil, u.errorf(StageTLS, err, "starttls")
	}
	if _, _, err := tr.ReadResponse(220); err != nil {
		if optional {
			var pe *textproto.Error
			if errors.As(err, &pe) {
				return plaintext()
			}
		}
		return nil, u.errorf(StageTLS, smtpErr(err), "starttls")
	}
	// Bytes buffered before the handshake would be plaintext injected into
	// the TLS session (CVE-2011-0411 style): refuse.
	if br.Buffered() > 0 {
		return nil, u.errorf(StageTLS, errors.New("data after STARTTLS reply"), "starttls")
	}
	tc := tls.Client(raw, u.tls)
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, u.errorf(StageTLS, err, "tls handshake")
	}
	return &greetedConn{Conn: tc, pre: []byte(resumedBanner), r: tc}, nil
}

// smtpErr converts a textproto reply error into the *smtp.SMTPError shape
// go-smtp's client uses, so replies are classified in one place.
func smtpErr(err error) error {
	var pe *textproto.Error
	if !errors.As(err, &pe) {
		return err
	}
	se := &smtp.SMTPError{Code: pe.Code, Message: pe.Msg}
	if code, rest, ok := strings.Cut(pe.Msg, " "); ok {
		parts := strings.Split(code, ".")
		if len(parts) == 3 {
			var ec smtp.EnhancedCode
			valid := true
			for i, p := range parts {
				// RFC 3463: class 2, 4 or 5, then 1-3 digit numbers; only
				// canonical digits count, so odd text stays text.
				n, err := strconv.Atoi(p)
				if err != nil || strconv.Itoa(n) != p || n > 999 || (i == 0 && n != 2 && n != 4 && n != 5) {
					valid = false
					break
				}
				ec[i] = n
			}
			if valid {
				se.EnhancedCode, se.Message = ec, rest
			}
		}
	}
	return se
}

func (u *upstream) auth(ctx context.Context, c *smtp.Client) *Error {
	cfg := &u.cfg
	switch cfg.AuthMechanism {
	case "xoauth2":
		tok, err := u.tokens.get(ctx, false)
		if err != nil {
			return &Error{Upstream: cfg.Name, Stage: StageAuth, Message: err.Error(), Err: err}
		}
		err = c.Auth(&xoauth2Client{user: cfg.Username, token: tok})
		if err == nil {
			return nil
		}
		// The cached token may have been revoked early: fetch a new one once.
		tok, terr := u.tokens.get(ctx, true)
		if terr != nil {
			return &Error{Upstream: cfg.Name, Stage: StageAuth, Message: terr.Error(), Err: terr}
		}
		if err := c.Auth(&xoauth2Client{user: cfg.Username, token: tok}); err != nil {
			return newError(cfg.Name, StageAuth, err)
		}
		return nil
	case "login":
		if err := c.Auth(&loginClient{user: cfg.Username, pass: cfg.Password}); err != nil {
			return newError(cfg.Name, StageAuth, err)
		}
	default:
		if cfg.Username == "" {
			return nil
		}
		if err := c.Auth(sasl.NewPlainClient("", cfg.Username, cfg.Password)); err != nil {
			return newError(cfg.Name, StageAuth, err)
		}
	}
	return nil
}

func (u *upstream) errorf(stage Stage, err error, format string, args ...any) *Error {
	e := newError(u.cfg.Name, stage, err)
	if e.Code == 0 {
		e.Err = fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	}
	return e
}

// txOutcome is one transaction's result on one connection.
type txOutcome struct {
	rcptErrs []error // per recipient given: nil accepted, else *Error
	err      *Error  // the message-level failure, nil if at least one recipient was accepted
	reusable bool    // the connection is in a known state (may go back to the pool)
	mailOK   bool    // MAIL was accepted (a stale pooled connection fails before this)
	port     int     // where it was tried, and the reply to the final dot (journal)
	tls      string
	reply    string
	// passedOver: the breaker opened while this delivery waited for a
	// connection slot or the rate limiter, so nothing was tried.
	passedOver bool
}

// bareCRWriter refuses a bare CR (one not followed by LF) before it
// reaches the DotWriter, which would pass it through unstuffed.
type bareCRWriter struct {
	w      io.Writer
	conn   net.Conn
	tmo    time.Duration
	lastCR bool
}

var errBareCR = errors.New("message contains a bare CR")

func (b *bareCRWriter) Write(p []byte) (int, error) {
	for _, c := range p {
		if b.lastCR && c != '\n' {
			return 0, errBareCR
		}
		b.lastCR = c == '\r'
	}
	// go-smtp sets no deadline while the body is written: a server that stops
	// reading would block us forever.
	b.conn.SetWriteDeadline(time.Now().Add(b.tmo))
	return b.w.Write(p)
}

// pipelined sends MAIL, every RCPT and DATA in one write (the upstream
// offered PIPELINING) and classifies the replies as transact does command by
// command. It returns the body's writer, or done with out filled in.
func (u *upstream) pipelined(cl *client, m *Message, mo *smtp.MailOptions, rcpts []string, out *txOutcome) (*smtp.DataCommand, bool) {
	name := u.cfg.Name
	w, res := cl.c.MailRcptData(m.From, mo, rcpts)
	if res.Mail != nil {
		out.err = newError(name, StageMail, res.Mail)
		out.reusable = !res.Lost && !out.err.connectionLost()
		return nil, true
	}
	out.mailOK = true
	accepted := 0
	var firstTemp *Error
	for i, err := range res.Rcpt {
		if err == nil {
			accepted++
			continue
		}
		e := newError(name, StageRcpt, err)
		out.rcptErrs[i] = e
		if res.Lost || e.connectionLost() {
			out.err = e
			return nil, true
		}
		if e.Temporary() && firstTemp == nil {
			firstTemp = e
		}
	}
	if accepted == 0 {
		// DATA was refused (or ended empty): the connection is in a known state.
		out.reusable = true
		if firstTemp != nil {
			out.err = firstTemp
		}
		return nil, true
	}
	if res.Data != nil {
		out.err = newError(name, StageData, res.Data)
		out.reusable = !res.Lost && !out.err.connectionLost()
		return nil, true
	}
	return w, false
}

// transact runs MAIL, RCPT×n, DATA, body and the final dot on cl.
func (u *upstream) transact(cl *client, m *Message, rcpts []string) txOutcome {
	name := u.cfg.Name
	c := cl.c
	out := txOutcome{rcptErrs: make([]error, len(rcpts)), port: cl.port, tls: cl.tls}
	if m.SMTPUTF8 && !cl.utf8 {
		out.err, out.reusable = noSMTPUTF8(name), true
		return out
	}
	var mo *smtp.MailOptions
	if m.Size > 0 || m.SMTPUTF8 {
		mo = &smtp.MailOptions{Size: m.Size, UTF8: m.SMTPUTF8}
	}
	var w *smtp.DataCommand
	if cl.pipeline {
		var done bool
		if w, done = u.pipelined(cl, m, mo, rcpts, &out); done {
			return out
		}
	} else {
		if err := c.Mail(m.From, mo); err != nil {
			out.err = newError(name, StageMail, err)
			out.reusable = !out.err.connectionLost()
			return out
		}
		out.mailOK = true
		accepted := 0
		var firstTemp *Error
		for i, r := range rcpts {
			if err := c.Rcpt(r, nil); err != nil {
				e := newError(name, StageRcpt, err)
				out.rcptErrs[i] = e
				if e.connectionLost() {
					// The connection is gone: every recipient fails with it.
					out.err = e
					return out
				}
				if e.Temporary() && firstTemp == nil {
					firstTemp = e
				}
				continue
			}
			accepted++
		}
		if accepted == 0 {
			out.reusable = true
			if firstTemp != nil {
				out.err = firstTemp
			}
			return out
		}
		var err error
		if w, err = c.Data(); err != nil {
			out.err = newError(name, StageData, err)
			out.reusable = !out.err.connectionLost()
			return out
		}
	}
	rc, err := m.Open()
	if err != nil {
		cl.c.Close()
		out.err = &Error{Upstream: name, Stage: StageData, Err: fmt.Errorf("open message %s: %w", m.ID, err)}
		return out
	}
	bw := &bareCRWriter{w: w, conn: cl.conn, tmo: u.cfg.Timeout}
	_, err = io.Copy(bw, rc)
	rc.Close()
	if err == nil && bw.lastCR {
		err = errBareCR
	}
	if err != nil {
		// Abort without the final dot: the server discards the transaction.
		cl.c.Close()
		if errors.Is(err, errBareCR) {
			out.err = &Error{Upstream: name, Stage: StageData, Code: 554, Enhanced: [3]int{5, 6, 0}, Message: err.Error(), Err: err}
		} else {
			out.err = &Error{Upstream: name, Stage: StageData, Err: err}
		}
		return out
	}
	cl.conn.SetWriteDeadline(time.Now().Add(u.cfg.Timeout))
	resp, err := w.CloseWithResponse()
	if err == nil && resp != nil {
		out.reply = resp.StatusText
	}
	if err != nil {
		e := newError(name, StageAfterDot, err)
		if e.Code == 0 {
			// No reply after (possibly) the final dot: the upstream may hold
			// the message. Retry later; never fail over now.
			e.PossibleDuplicate = true
			cl.c.Close()
		} else {
			out.reusable = !e.connectionLost()
		}
		out.err = e
		return out
	}
	out.reusable = true
	return out
}
