package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	proxyproto "github.com/pires/go-proxyproto"

	"github.com/sluicemail/sluice/config"
)

// Connection timing. The idle timeout is per read (go-smtp's ReadTimeout is
// a deadline over a whole DATA, which would cut off slow senders of large
// messages; libs.md §1.3), the session cap bounds a connection's life.
const (
	idleTimeout      = 5 * time.Minute
	sessionCap       = 30 * time.Minute
	handshakeTimeout = 15 * time.Second
	proxyTimeout     = 5 * time.Second
	writeTimeout     = 2 * time.Minute
)

// listener is one configured address: it admits connections (PROXY header,
// trusted networks, connection limits, blocked IPs, implicit TLS handshake)
// and hands the admitted ones to its go-smtp server through a gate.
type listener struct {
	srv     *Server
	cfg     config.Listener
	raw     net.Listener
	trusted []netip.Prefix

	// front is the go-smtp server taking new connections and the gate that
	// feeds it. A reload puts a new one in front (SIZE, banner name and
	// limits come from the new configuration); the old server keeps its
	// open sessions until they end. fronts holds the current one and the
	// old ones with sessions still open, for Shutdown; a reload drops the
	// old ones whose sessions have all ended, so they do not pile up.
	front  atomic.Pointer[front]
	smu    sync.Mutex
	fronts []*front

	mu    sync.Mutex
	perIP map[netip.Addr]int
	total int
}

func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("relay: bad network %q", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func contains(prefixes []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func addrIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// serve accepts until the raw listener is closed.
func (l *listener) serve() {
	var ln net.Listener = l.raw
	if l.cfg.ProxyProtocol {
		// Trusted proxies must send a header; anyone else sending one is
		// refused (DESIGN §7).
		pol, err := proxyproto.PolicyFromRanges(l.cfg.TrustedProxies, proxyproto.REQUIRE, proxyproto.REJECT)
		if err != nil {
			l.srv.log.Error("proxy protocol policy", "listener", l.cfg.Name, "err", err)
			return
		}
		ln = &proxyproto.Listener{Listener: l.raw, ConnPolicy: pol, ReadHeaderTimeout: proxyTimeout}
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				l.front.Load().gate.close()
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			// A refused PROXY header surfaces here for some policies; keep serving.
			l.srv.log.Debug("accept", "listener", l.cfg.Name, "err", err)
			continue
		}
		go l.admit(c)
	}
}

// admit runs the connection-level checks in the connection's own goroutine
// so a slow PROXY header or TLS handshake never stalls the accept loop.
func (l *listener) admit(c net.Conn) {
	if pc, ok := c.(*proxyproto.Conn); ok {
		// A zero-length read makes go-proxyproto read and check the header.
		if _, err := pc.Read(nil); err != nil {
			mRejected.Inc("proxy_protocol")
			l.srv.log.Info("rejected", "listener", l.cfg.Name, "peer", pc.Raw().RemoteAddr().String(), "reason", "proxy_protocol", "err", err)
			pc.Close()
			return
		}
	}
	ip := addrIP(c.RemoteAddr())
	st := l.srv.state.Load()

	var refuse *smtp.SMTPError
	switch {
	case l.cfg.Auth == config.AuthNone && !contains(l.trusted, ip):
		refuse = ReplyNotTrusted
	// An IP blocked for failed AUTH is refused at connect only where AUTH
	// is all it could do; a trusted network's listener still relays for it
	// (anyone sharing its NAT address could otherwise cut off a printer),
	// and AUTH there answers 421 (authenticate).
	case l.cfg.Auth == config.AuthRequired && st.policy.Blocked(context.Background(), ip.String()):
		refuse = ReplyAuthBlocked
	case !l.acquire(ip):
		refuse = ReplyTooManyConns
	}
	tc := &trackedConn{Conn: c}
	if refuse == nil {
		tc.release = func() { l.release(ip) }
	}
	var conn net.Conn = tc
	if l.cfg.TLS == config.TLSImplicit {
		t := tls.Server(tc, l.srv.tlsConfig)
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		err := t.HandshakeContext(ctx)
		cancel()
		if err != nil {
			l.srv.log.Debug("tls handshake failed", "listener", l.cfg.Name, "ip", ip.String(), "err", err)
			t.Close()
			return
		}
		conn = t
	}
	if refuse != nil {
		l.srv.metricRejected(refuseReason(refuse))
		l.srv.log.Info("rejected", "listener", l.cfg.Name, "ip", ip.String(), "reply", refuse.Error())
		conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(conn, "%d %d.%d.%d %s\r\n", refuse.Code, refuse.EnhancedCode[0], refuse.EnhancedCode[1], refuse.EnhancedCode[2], refuse.Message)
		conn.Close()
		return
	}
	mConnections.Inc(l.cfg.Name)
	tc.cap = time.AfterFunc(sessionCap, func() { tc.Close() })
	for {
		f := l.front.Load()
		f.open.Add(1)
		tc.done.Store(f)
		if f.gate.put(conn) {
			return
		}
		f.open.Add(-1)
		tc.done.Store(nil)
		if l.front.Load() == f { // shutting down, not a reload
			conn.Close()
			return
		}
	}
}

// front is one go-smtp server and the gate it accepts from; open counts
// the connections it was handed that are not closed yet.
type front struct {
	gate *gate
	srv  *smtp.Server
	open atomic.Int64
}

func refuseReason(r *smtp.SMTPError) string {
	switch r {
	case ReplyNotTrusted:
		return "untrusted_network"
	case ReplyAuthBlocked:
		return "auth_blocked"
	}
	return "connection_limit"
}

func (l *listener) acquire(ip netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.cfg.MaxConnections || (l.cfg.MaxConnectionsPerIP > 0 && l.perIP[ip] >= l.cfg.MaxConnectionsPerIP) {
		return false
	}
	l.total++
	l.perIP[ip]++
	return true
}

func (l *listener) release(ip netip.Addr) {
	l.mu.Lock()
	l.total--
	if l.perIP[ip]--; l.perIP[ip] <= 0 {
		delete(l.perIP, ip)
	}
	l.mu.Unlock()
}

// trackedConn sets an idle deadline before every read, gives its connection
// slot back exactly once on Close, and can close itself right after the next
// reply is written (a 421 to AUTH from a blocked address).
type trackedConn struct {
	net.Conn
	release    func()
	cap        *time.Timer
	closed     atomic.Bool
	closeAfter atomic.Bool
	done       atomic.Pointer[front] // the front serving it, told on Close
}

func (c *trackedConn) Read(p []byte) (int, error) {
	c.Conn.SetReadDeadline(time.Now().Add(idleTimeout))
	return c.Conn.Read(p)
}

func (c *trackedConn) Write(p []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	n, err := c.Conn.Write(p)
	if c.closeAfter.Load() {
		c.Close()
	}
	return n, err
}

func (c *trackedConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.cap != nil {
		c.cap.Stop()
	}
	if c.release != nil {
		c.release()
	}
	if f := c.done.Load(); f != nil {
		f.open.Add(-1)
	}
	return c.Conn.Close()
}

// gate is the net.Listener go-smtp serves: it yields admitted connections.
type gate struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newGate(addr net.Addr) *gate {
	return &gate{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (g *gate) put(c net.Conn) bool {
	select {
	case g.ch <- c:
		return true
	case <-g.done:
		return false
	}
}

func (g *gate) Accept() (net.Conn, error) {
	select {
	case c := <-g.ch:
		return c, nil
	case <-g.done:
		return nil, net.ErrClosed
	}
}

func (g *gate) close()         { g.once.Do(func() { close(g.done) }) }
func (g *gate) Close() error   { g.close(); return nil }
func (g *gate) Addr() net.Addr { return g.addr }

// trackedOf finds the trackedConn under a go-smtp connection (plain or TLS).
func trackedOf(c net.Conn) *trackedConn {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	tc, _ := c.(*trackedConn)
	return tc
}

var _ net.Listener = (*gate)(nil)
