package relay

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/certs"
	"github.com/sluicemail/sluice/internal/passwd"
	"github.com/sluicemail/sluice/internal/testsmtp"
	"github.com/sluicemail/sluice/internal/testwait"
	"github.com/sluicemail/sluice/policy"
	"github.com/sluicemail/sluice/queue"
	"github.com/sluicemail/sluice/signing"
	"github.com/sluicemail/sluice/upstream"
)

// testRelay is a whole relay in process: real listeners with real TLS, the
// real spool in a temp dir, real DKIM keys, and a real go-smtp upstream.
type testRelay struct {
	srv      *Server
	up       *testsmtp.Server
	roots    *x509.CertPool
	keys     *signing.Keyring
	txt      map[string]string // DKIM DNS records by "selector._domainkey.domain"
	password string
	cfg      *config.Config
}

const testPassword = "correct horse"

// Hashes are made once: argon2id costs ~20 ms per hash.
var testHash = func() string { h, _ := passwd.Hash(testPassword); return h }()

// yamlBase has %[1]s = the upstream port, %[2]s = the policies block,
// %[3]s = extra listeners.
const yamlBase = `hostname: relay.test
state_dir: %[4]s
tls:
  self_signed: true
listeners:
  - name: submission
    address: 127.0.0.1:0
    tls: starttls
    auth: required
  - name: submissions
    address: 127.0.0.1:0
    tls: implicit
    auth: required
%[3]s
users:
  - name: alice
    password_hash: "%[5]s"
  - name: bob
    password_hash: "%[5]s"
    policy: strict
policies:
  default:
    allowed_senders: ["*@example.com", "*@news.example.com", "{user}@users.example.com"]
%[2]s
dkim: []
upstreams:
  - name: up
    host: 127.0.0.1
    ports: [%[1]s]
    tls: none
%[6]s
queue:
  retry: [50ms]
`

type relayOpts struct {
	policies  string // extra YAML under policies:
	listeners string // extra listeners
	upstreams string // extra upstreams (YAML list items)
	routes    string // a routes: block
	minFree   uint64
	now       func() time.Time
}

func startRelay(t *testing.T, o relayOpts) *testRelay { return startRelayFor(t, o) }

// startRelayFor takes a testing.TB so fuzz targets can share one relay.
func startRelayFor(t testing.TB, o relayOpts) *testRelay {
	t.Helper()
	up := testsmtp.Start(t, testsmtp.Options{})
	dir := t.TempDir()
	if o.policies == "" {
		o.policies = "  strict:\n    allowed_senders: [\"bob@example.com\"]\n"
	}
	y := fmt.Sprintf(yamlBase, fmt.Sprint(up.Port()), o.policies, o.listeners, dir, testHash, o.upstreams) + o.routes
	cfg, err := config.Parse([]byte(y), filepath.Join(dir, "sluice.yaml"))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, y)
	}
	tr := &testRelay{up: up, cfg: cfg, password: testPassword, txt: map[string]string{}}

	rsaKey, err := signing.GenerateKey("rsa", 2048)
	if err != nil {
		t.Fatal(err)
	}
	edKey, err := signing.GenerateKey("ed25519", 0)
	if err != nil {
		t.Fatal(err)
	}
	tr.keys = signing.NewKeyring([]signing.Key{
		{Domain: "example.com", Selector: "r1", Signer: rsaKey},
		{Domain: "example.com", Selector: "e1", Signer: edKey},
		{Domain: "news.example.com", Selector: "e1", Signer: edKey},
		{Domain: "news.example.com", Selector: "r1", Signer: rsaKey},
	})
	for _, d := range []string{"example.com", "news.example.com"} {
		tr.txt["r1._domainkey."+d] = signing.TXTValue(rsaKey.Public())
		tr.txt["e1._domainkey."+d] = signing.TXTValue(edKey.Public())
	}

	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	popts := policy.Options{Logger: logger}
	if o.now != nil {
		popts.Now = o.now
	}
	pol, err := policy.New(cfg, popts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pol.Close)
	disp, err := upstream.New(upstream.Options{Hostname: cfg.Hostname, Upstreams: cfg.Upstreams, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(disp.Close)
	q, err := queue.Open(queue.Options{Dir: filepath.Join(dir, "spool"), Config: cfg.Queue, Hostname: cfg.Hostname, Deliverer: disp, Logger: logger, MinFreeSpace: o.minFree})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); q.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; q.Close() })

	cert, certPEM, _, err := certs.SelfSigned("relay.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	tr.roots = x509.NewCertPool()
	tr.roots.AppendCertsFromPEM(certPEM)
	srv, err := New(Options{Config: cfg, Policy: pol, Keys: tr.keys, Queue: q, Logger: logger,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatal(err)
	}
	srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	tr.srv = srv
	return tr
}

func (tr *testRelay) addr(listener string) string { return tr.srv.Addr(listener).String() }

func (tr *testRelay) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: tr.roots, ServerName: "relay.test"}
}

// dial connects to a listener with STARTTLS (or implicit TLS for
// "submissions", plaintext when plain is set) and optionally logs in.
func (tr *testRelay) dial(t *testing.T, listener, user string) *smtp.Client {
	t.Helper()
	var c *smtp.Client
	var err error
	switch listener {
	case "submissions":
		c, err = smtp.DialTLS(tr.addr(listener), tr.tlsConfig())
	case "submission":
		c, err = smtp.DialStartTLS(tr.addr(listener), tr.tlsConfig())
	default:
		c, err = smtp.Dial(tr.addr(listener))
	}
	if err != nil {
		t.Fatalf("dial %s: %v", listener, err)
	}
	t.Cleanup(func() { c.Close() })
	if user != "" {
		if err := c.Auth(sasl.NewPlainClient("", user, tr.password)); err != nil {
			t.Fatalf("auth %s: %v", user, err)
		}
	}
	return c
}

func msg(from, to, subject, body string) string {
	return "From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: " + subject + "\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <" + subject + "@example.com>\r\n\r\n" + body + "\r\n"
}

// send runs one transaction and returns the reply to the final dot.
func send(c *smtp.Client, from string, to []string, data string) (string, error) {
	return testsmtp.Transact(c, from, to, data)
}

// codeOf renders an error as "CODE X.Y.Z" for assertions.
func codeOf(err error) string {
	if e, ok := err.(*smtp.SMTPError); ok {
		return fmt.Sprintf("%d %d.%d.%d", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2])
	}
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

// rawSession is a line-level client for what go-smtp's client refuses to send.
type rawSession struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func rawDial(t *testing.T, addr string, cfg *tls.Config) *rawSession {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg != nil {
		c = tls.Client(c, cfg)
	}
	c.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &rawSession{t: t, c: c, br: bufio.NewReader(c)}
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (r *rawSession) reply() string {
	r.t.Helper()
	for {
		line, err := r.br.ReadString('\n')
		if err != nil {
			return "EOF: " + line
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

func (r *rawSession) cmd(line string) string {
	r.t.Helper()
	if _, err := io.WriteString(r.c, line+"\r\n"); err != nil {
		return "write: " + err.Error()
	}
	return r.reply()
}

func (r *rawSession) write(s string) {
	r.t.Helper()
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatal(err)
	}
}

// startTLS upgrades a raw session on a STARTTLS listener and logs in.
func (r *rawSession) startTLSAuth(cfg *tls.Config, user, pass string) {
	r.t.Helper()
	r.reply()
	r.cmd("EHLO client.test")
	if got := r.cmd("STARTTLS"); !strings.HasPrefix(got, "220") {
		r.t.Fatalf("STARTTLS: %s", got)
	}
	tc := tls.Client(r.c, cfg)
	r.c, r.br = tc, bufio.NewReader(tc)
	r.cmd("EHLO client.test")
	if user != "" {
		if got := r.cmd("AUTH PLAIN " + plainIR(user, pass)); !strings.HasPrefix(got, "235") {
			r.t.Fatalf("AUTH: %s", got)
		}
	}
}

func plainIR(user, pass string) string {
	return b64("\x00" + user + "\x00" + pass)
}

func fmtSscanf(line string, code, a, b, c *int) (int, error) {
	return fmt.Sscanf(line, "%d %d.%d.%d", code, a, b, c)
}

// TestReloadRaisesSizeLimit: a SIGHUP that raises max_message_size lets
// a message between the old and the new limit through, and EHLO advertises
// the new SIZE (go-smtp fixes both per server, so Reload puts a new server
// in front).
func TestReloadRaisesSizeLimit(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{policies: reviewPolicies})

	y := strings.Replace(mustYAML(t, tr), "max_message_size: 2000\n", "max_message_size: 200000\n", -1)
	cfg, err := config.Parse([]byte(y), filepath.Join(t.TempDir(), "sluice.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.New(cfg, policy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pol.Close)
	tr.srv.Reload(cfg, pol, tr.keys)

	c := tr.dial(t, "submission", "alice")
	if ok, size := c.Extension("SIZE"); !ok || size != "200000" {
		t.Errorf("EHLO SIZE after reload = %q, want 200000 (the new largest max_message_size)", size)
	}
	body := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n", 100) // ~7.5 KB
	_, err = send(c, "a@example.com", []string{"r@example.org"}, msg("a@example.com", "r@example.org", "big", body))
	if err != nil {
		t.Fatalf("7.5 KB message under the reloaded 200 KB limit: %s (want 250)", codeOf(err))
	}
}

const reviewPolicies = "    max_message_size: 2000\n  strict:\n    allowed_senders: [\"bob@example.com\"]\n    max_message_size: 2000\n"

// mustYAML rebuilds the YAML a relay was started from (the test config is
// not kept as text), by formatting the same template.
func mustYAML(t *testing.T, tr *testRelay) string {
	t.Helper()
	port := fmt.Sprint(tr.up.Port())
	return fmt.Sprintf(yamlBase, port, reviewPolicies, "", tr.cfg.StateDir, testHash, "")
}

// TestReloadDropsIdleServers: each reload puts a new go-smtp server in
// front; the old ones are kept only while they still have sessions, so
// many reloads do not pile up servers (issue 9 item 6).
func TestReloadDropsIdleServers(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	fronts := func() int {
		n := 0
		for _, l := range tr.srv.listeners {
			if l.cfg.Name == "submission" {
				l.smu.Lock()
				n = len(l.fronts)
				l.smu.Unlock()
			}
		}
		return n
	}
	// A session opened before the reloads keeps its server.
	held := tr.dial(t, "submission", "alice")
	for range 5 {
		tr.srv.Reload(tr.cfg, tr.srv.state.Load().policy, tr.keys)
	}
	if n := fronts(); n != 3 {
		t.Errorf("after 5 reloads with one session open: %d servers, want 3 (the held session's, the last old one, the new one)", n)
	}
	// The session ends; its connection slot is given back when the server
	// closes it, then the next reload drops its server.
	held.Quit()
	waitForCond(t, func() bool {
		for _, l := range tr.srv.listeners {
			if l.cfg.Name == "submission" {
				l.smu.Lock()
				defer l.smu.Unlock()
				return l.fronts[0].open.Load() == 0
			}
		}
		return false
	})
	tr.srv.Reload(tr.cfg, tr.srv.state.Load().policy, tr.keys)
	if n := fronts(); n != 2 {
		t.Errorf("after the session ended and one more reload: %d servers, want 2", n)
	}
	// The relay still serves.
	c := tr.dial(t, "submission", "alice")
	if _, err := send(c, "a@example.com", []string{"r@example.org"}, msg("a@example.com", "r@example.org", "after-reloads", "x")); err != nil {
		t.Fatal(err)
	}
}

// waitForCond polls cond until it holds or 10 s pass.
func waitForCond(t *testing.T, cond func() bool) {
	t.Helper()
	testwait.Until(t, 10*time.Second, "the condition", cond)
}
