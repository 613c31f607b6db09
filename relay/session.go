package relay

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/policy"
	"github.com/sluicemail/sluice/queue"
)

// maxHeloBytes bounds the EHLO name (a domain name has at most 255 bytes).
const maxHeloBytes = 255

// backend makes one session per EHLO for one listener.
type backend struct {
	srv *Server
	l   *listener
}

func (b *backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.srv
	// A host name has at most 255 bytes; a longer EHLO name would make an
	// over-long Received: line.
	if len(c.Hostname()) > maxHeloBytes {
		return nil, ReplyHeloTooLong
	}
	ip := addrIP(c.Conn().RemoteAddr())
	cid := strconv.FormatUint(s.cids.Add(1), 36)
	_, isTLS := c.TLSConnectionState()
	sess := &session{
		srv:  s,
		l:    b.l,
		st:   s.state.Load(),
		conn: c,
		ip:   ip.String(),
		addr: ip,
		tls:  isTLS,
		log:  s.log.With("cid", cid, "listener", b.l.cfg.Name, "ip", ip.String()),
	}
	if b.l.cfg.Auth == config.AuthNone {
		// Admitted by network (the listener refused everyone else at connect).
		sess.policyName = b.l.cfg.Policy
	}
	mSessions.Add(1)
	return sess, nil
}

// session is one client's SMTP conversation after EHLO.
type session struct {
	srv  *Server
	l    *listener
	st   *state
	conn *smtp.Conn
	ip   string
	addr netip.Addr
	tls  bool
	log  *slog.Logger

	user       string // authenticated name, "" when admitted by network
	policyName string // "" until authenticated (on auth: required listeners)

	// The transaction. go-smtp runs Data in its own goroutine for BDAT and
	// may call Reset (RSET, a new MAIL) while it runs, so tx is guarded by
	// mu and Data works on a copy.
	mu sync.Mutex
	tx txn
}

// txn is one mail transaction's state.
type txn struct {
	pol      *policy.Policy
	from     string
	mailOpts *smtp.MailOptions
	rcpts    []string
	rcptOpts []*smtp.RcptOptions
	reserve  *policy.Reservation // message-rate token, given back unless accepted
	origFrom string              // MAIL FROM as sent, when masquerade rewrote it (journal only)
}

// reserveMessage and chargeRecipient apply rate limits to the user, or to
// the client address for clients admitted by network.
func (s *session) reserveMessage(ctx context.Context, pol *policy.Policy) (*policy.Reservation, *policy.Denial) {
	if s.user != "" {
		return s.st.policy.ReserveMessage(ctx, pol, s.user)
	}
	return s.st.policy.ReserveMessageIP(ctx, pol, s.ip)
}

func (s *session) chargeRecipient(ctx context.Context, pol *policy.Policy) *policy.Denial {
	if s.user != "" {
		return s.st.policy.ChargeRecipient(ctx, pol, s.user)
	}
	return s.st.policy.ChargeRecipientIP(ctx, pol, s.ip)
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.Reset()
	if s.policyName == "" {
		s.reject("auth_required", "mail", from)
		return ReplyAuthRequired
	}
	if opts != nil && opts.RequireTLS && !s.tls {
		s.reject("requiretls", "mail", from)
		return ReplyRequireTLS
	}
	pol := s.st.policy.Lookup(s.policyName)
	if pol == nil {
		mRejected.Inc("no_policy")
		s.log.Error("rejected", "reason", "no_policy", "policy", s.policyName)
		return ReplyNoPolicy
	}
	if strings.ContainsAny(from, " \t\r\n<>") {
		return ReplyBadSender
	}
	if !isASCII(from) && !utf8.ValidString(from) {
		return ReplyBadSender // RFC 6531: UTF-8, nothing else
	}
	if !isASCII(from) && (opts == nil || !opts.UTF8) {
		// Accepted, it would be bounced later by a strict upstream (DESIGN §8.5).
		s.reject("smtputf8", "mail", from)
		return ReplyNeedsSMTPUTF8
	}
	from = QuoteAddr(from)
	// Masquerade (DESIGN §8.5) rewrites the sender before it is checked.
	origFrom := ""
	if m, ok := pol.Masquerade(s.user, from); ok {
		origFrom, from = from, m
	}
	if d := pol.CheckSender(s.user, from); d != nil {
		return s.deny(d, "mail", from)
	}
	if opts != nil && opts.Size > 0 && opts.Size > pol.MaxMessageSize {
		s.reject("size", "mail", from)
		return ReplyTooLarge
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, d := s.reserveMessage(ctx, pol)
	if d != nil {
		return s.deny(d, "mail", from)
	}
	s.mu.Lock()
	s.tx = txn{pol: pol, from: from, mailOpts: opts, reserve: res, origFrom: origFrom}
	s.mu.Unlock()
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	pol, n, mailOpts := s.tx.pol, len(s.tx.rcpts), s.tx.mailOpts
	s.mu.Unlock()
	if pol == nil { // go-smtp only calls Rcpt after a successful Mail
		return ReplyAuthRequired
	}
	// <Postmaster> (no domain) must be accepted (RFC 5321 §4.5.1): it goes
	// to postmaster at the relay's hostname, past the recipient rules.
	postmaster := strings.EqualFold(to, "postmaster")
	if postmaster {
		to = "postmaster@" + s.st.cfg.Hostname
	}
	if to == "" || strings.ContainsAny(to, " \t\r\n<>") || !strings.Contains(to, "@") {
		return ReplyBadRecipient
	}
	if !isASCII(to) && !utf8.ValidString(to) {
		return ReplyBadRecipient
	}
	if !isASCII(to) && (mailOpts == nil || !mailOpts.UTF8) {
		s.reject("smtputf8", "rcpt", to)
		return ReplyNeedsSMTPUTF8
	}
	// Policy checks, and the upstream gets, the address in one form:
	// go-smtp hands over a quoted local part unquoted, which upstreams
	// would read differently ("a@b"@c sent as a@b@c).
	to = QuoteAddr(to)
	if local := to[:strings.LastIndexByte(to, '@')]; strings.ContainsAny(local, "%!") && !pol.PercentHack {
		// user%host@relay and host!user@relay ask the next hop to relay
		// on: refused unless the policy allows it.
		s.reject("percent_hack", "rcpt", to)
		return ReplyRecipientRouting
	}
	if d := pol.CheckRecipient(s.user, to, n); d != nil && !postmaster {
		return s.deny(d, "rcpt", to)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if l := s.srv.supp; l != nil && !pol.IgnoreSuppression {
		if e, ok := l.Check(ctx, to); ok {
			// Refused before the recipient rate is charged: nothing is
			// queued for it, so it costs the sender nothing.
			l.Refused()
			s.reject("suppressed", "rcpt", to, "kind", e.Kind, "added", e.Added.Format(time.RFC3339))
			s.mu.Lock()
			from := s.tx.from
			s.mu.Unlock()
			if s.srv.journal != nil {
				s.srv.journal.Append(journal.Event{Time: s.srv.now(), Event: journal.Suppressed, Sender: from,
					Recipient: to, Reason: e.Describe()})
			}
			if s.srv.queue != nil { // posted only when queue.webhook_events lists it
				s.srv.queue.Webhook(queue.Event{Event: "suppressed", Sender: from, Recipient: to, Status: "5.1.1", Diagnostic: e.Describe()})
			}
			return replySuppressed(to, e)
		}
	}
	if d := s.chargeRecipient(ctx, pol); d != nil {
		return s.deny(d, "rcpt", to)
	}
	s.mu.Lock()
	s.tx.rcpts = append(s.tx.rcpts, to)
	s.tx.rcptOpts = append(s.tx.rcptOpts, opts)
	s.mu.Unlock()
	return nil
}

// Reset ends a transaction; a message-rate token reserved at MAIL for a
// message that was never accepted is given back.
func (s *session) Reset() {
	s.mu.Lock()
	tx := s.tx
	s.tx = txn{}
	s.mu.Unlock()
	if tx.reserve != nil {
		tx.reserve.Cancel()
	}
}

func (s *session) Logout() error {
	s.Reset()
	mSessions.Add(-1)
	return nil
}

// deny maps a policy denial to its reply, in one place.
func (s *session) deny(d *policy.Denial, stage, addr string) error {
	s.reject(d.Kind.String(), stage, addr, "rule", d.Rule)
	switch d.Kind {
	case policy.SenderDenied:
		return ReplySenderDenied
	case policy.HeaderFromDenied:
		return ReplyHeaderFromDenied
	case policy.RecipientDenied:
		return ReplyRecipientDenied
	case policy.TooManyRecipients:
		return ReplyTooManyRcpts
	case policy.TooLarge:
		return ReplyTooLarge
	case policy.RateLimited:
		return replyRateLimited(d.RetryAfter)
	case policy.DKIMRequired:
		return ReplyDKIMRequired
	case policy.Unavailable:
		return ReplyRateUnavailable
	}
	return ReplySpoolFailed
}

func (s *session) reject(reason, stage, addr string, extra ...any) {
	mRejected.Inc(reason)
	s.log.Info("rejected", append([]any{"reason", reason, "stage", stage, "addr", addr}, extra...)...)
}

func tlsVersion(st tls.ConnectionState) string { return tls.VersionName(st.Version) }
func tlsCipher(st tls.ConnectionState) string {
	if n, ok := cipherNames()[st.CipherSuite]; ok {
		return n
	}
	return tls.CipherSuiteName(st.CipherSuite)
}

// cipherNames is tls.CipherSuiteName's table, built once: the function
// builds the whole list of suites on every call, 1.3 KB for each message's
// Received: field.
var cipherNames = sync.OnceValue(func() map[uint16]string {
	m := map[uint16]string{}
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		m[cs.ID] = cs.Name
	}
	return m
})

// QuoteAddr writes addr (local@domain, the local part unquoted as go-smtp
// or net/mail hands it over) in the form an SMTP path reads as the same
// address: a local part that is not a dot-atom is quoted, with \ and "
// escaped (RFC 5321 §4.1.2).
func QuoteAddr(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return addr
	}
	local := addr[:at]
	if IsDotAtom(local) {
		return addr
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if local[i] == '"' || local[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteString(`"`)
	b.WriteString(addr[at:])
	return b.String()
}

// IsDotAtom: atext words joined by single dots (RFC 5322 §3.2.3); bytes
// of UTF-8 (RFC 6531) count as atext.
func IsDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c >= 0x80:
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// isASCII reports whether s holds only 7-bit bytes: an address that does not
// needs SMTPUTF8 (RFC 6531).
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}
