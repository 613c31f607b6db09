package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/internal/certs"
	"github.com/sluicemail/sluice/internal/passwd"
	"github.com/sluicemail/sluice/internal/syncbuf"
	"github.com/sluicemail/sluice/internal/testsmtp"
	"github.com/sluicemail/sluice/internal/testwait"
)

// The integration tests run the real binary, built once.
var sluiceBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sluice-bin")
	if err != nil {
		panic(err)
	}
	sluiceBin = filepath.Join(dir, "sluice")
	args := []string{"build", "-o", sluiceBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building sluice: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one scenario's directory: config, certificate, state.
type env struct {
	t        *testing.T
	dir      string
	certFile string
	keyFile  string
	roots    *x509.CertPool
	hash     string
}

const password = "integration pw"

var pwHash = sync.OnceValue(func() string { h, _ := passwd.Hash(password); return h })

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	_, certPEM, keyPEM, err := certs.SelfSigned("relay.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem"), hash: pwHash()}
	os.WriteFile(e.certFile, certPEM, 0o600)
	os.WriteFile(e.keyFile, keyPEM, 0o600)
	e.roots = x509.NewCertPool()
	e.roots.AppendCertsFromPEM(certPEM)
	return e
}

// configParts are the pieces scenario configs share: {{HOST}} the host
// name and the env's certificate; {{BASE}} those and the STARTTLS
// submission listener (more listeners may follow it); {{APP}} the user app
// with the test password; {{USERS}} app as the only user and the default
// policy sending for *@example.com.
var configParts = strings.NewReplacer(
	"{{HOST}}", hostPart,
	"{{BASE}}", hostPart+"\nlisteners:\n  - name: submission\n    address: 127.0.0.1:0\n    tls: starttls\n    auth: required",
	"{{APP}}", appPart,
	"{{USERS}}", "users:\n"+appPart+"\npolicies:\n  default:\n    allowed_senders: [\"*@example.com\"]",
)

const (
	hostPart = "hostname: relay.test\ntls:\n  cert_file: {{CERT}}\n  key_file: {{KEY}}"
	appPart  = "  - name: app\n    password_hash: \"{{HASH}}\""
)

// config writes sluice.yaml: the given YAML with the configParts
// expanded and {{DIR}}, {{CERT}}, {{KEY}}, {{HASH}} replaced.
func (e *env) config(y string) string {
	y = configParts.Replace(y)
	y = strings.NewReplacer("{{DIR}}", e.dir, "{{CERT}}", e.certFile, "{{KEY}}", e.keyFile, "{{HASH}}", e.hash).Replace(y)
	p := filepath.Join(e.dir, "sluice.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// apiServer starts an HTTPS server (a provider's API) answering with h;
// its certificate is {{DIR}}/api-ca.pem, for a config's tls_ca_file.
func (e *env) apiServer(h http.HandlerFunc) *httptest.Server {
	srv := httptest.NewTLSServer(h)
	e.t.Cleanup(srv.Close)
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(filepath.Join(e.dir, "api-ca.pem"), ca, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return srv
}

func (e *env) tlsConfig() *tls.Config { return &tls.Config{RootCAs: e.roots, ServerName: "relay.test"} }

// proc is a running `sluice serve`.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *syncbuf.Buffer
	stderr *syncbuf.Buffer
	addrs  map[string]string
	done   chan struct{}
	err    error
}

var listeningRE = regexp.MustCompile(`msg=listening listener=(\S+) address=(\S+)`)

// start runs `sluice ARGS...` and waits until every listener logged its address.
func start(t *testing.T, listeners int, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, listeners, args...)
}

// startEnv is start with extra environment variables.
func startEnv(t *testing.T, envv []string, listeners int, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, stdout: &syncbuf.Buffer{}, stderr: &syncbuf.Buffer{}, addrs: map[string]string{}, done: make(chan struct{})}
	p.cmd = exec.Command(sluiceBin, args...)
	if envv != nil {
		p.cmd.Env = append(os.Environ(), envv...)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("sluice stderr:\n%s", p.stderr.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range listeningRE.FindAllStringSubmatch(p.stderr.String(), -1) {
			p.addrs[m[1]] = m[2]
		}
		if len(p.addrs) >= listeners {
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("sluice exited early: %v\nstdout:\n%s\nstderr:\n%s", p.err, p.stdout.String(), p.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("sluice did not start listening:\n%s", p.stderr.String())
	return nil
}

func (p *proc) signal(sig syscall.Signal) { p.cmd.Process.Signal(sig) }

// term sends SIGTERM: the daemon shuts down (stop waits for it too).
func (p *proc) term() { p.signal(syscall.SIGTERM) }

// kill ends the process with SIGKILL, no shutdown at all, and waits for it.
func (p *proc) kill() {
	p.signal(syscall.SIGKILL)
	p.wait(10 * time.Second)
}

// stop sends SIGTERM and returns the exit code (see wait).
func (p *proc) stop(timeout time.Duration) int {
	p.term()
	return p.wait(timeout)
}

// reload sends SIGHUP and fails the test unless the log says want (a
// line such as msg=reloaded or "reload refused") within 10 s.
func (p *proc) reload(want string) {
	p.t.Helper()
	p.signal(syscall.SIGHUP)
	if !p.waitLog(want, 10*time.Second) {
		p.t.Fatalf("no %q in the log after SIGHUP", want)
	}
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(timeout time.Duration) int {
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.t.Fatalf("sluice did not exit within %v:\n%s", timeout, p.stderr.String())
	}
	if p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// waitLog waits until stderr contains s.
func (p *proc) waitLog(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(p.stderr.String(), s) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// runKilled runs `sluice ARGS...`, kills it with SIGKILL after d (0: lets
// it finish) and returns what it wrote to stdout by then.
func runKilled(t *testing.T, d time.Duration, args ...string) string {
	t.Helper()
	cmd := exec.Command(sluiceBin, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if d > 0 {
		timer := time.AfterFunc(d, func() { cmd.Process.Kill() })
		defer timer.Stop()
	}
	cmd.Wait()
	return out.String()
}

// runCmd runs a sluice command to completion.
func runCmd(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runCmdEnv(t, stdin, nil, args...)
}

// runCmdEnv runs a sluice command with extra environment variables.
func runCmdEnv(t *testing.T, stdin string, envv []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(sluiceBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &o, &e, strings.NewReader(stdin)
	if envv != nil {
		cmd.Env = append(os.Environ(), envv...)
	}
	if err := cmd.Run(); err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

func message(from, to, id, body string) string {
	return fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: test %s\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%s@example.com>\r\n\r\n%s\r\n", from, to, id, id, body)
}

// messageIDs counts the Message-IDs in messages an upstream received.
func messageIDs(msgs ...testsmtp.Message) map[string]int {
	out := map[string]int{}
	re := regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)
	for _, m := range msgs {
		if id := re.FindSubmatch(m.Data); id != nil {
			out[string(id[1])]++
		}
	}
	return out
}

func splitAddr(a string) (string, string) {
	i := strings.LastIndexByte(a, ':')
	return a[:i], a[i+1:]
}

// The integration tests speak one dialect to the relay: login, send,
// transact and sendData for sessions through go-smtp; replyCode to match a
// reply; rawClient for the bytes a client library hides; waitFor for polls
// with a deadline; httpAddr, metrics, metric and httpGet for the HTTP side.

// dialTLS opens a STARTTLS session to addr from local (nil: any address).
func dialTLS(addr string, cfg *tls.Config, local net.IP) (*smtp.Client, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
	}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c, err := smtp.NewClientStartTLS(conn, cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// authPlain authenticates user with pw over PLAIN in an open session.
func authPlain(c *smtp.Client, user, pw string) error {
	return c.Auth(sasl.NewPlainClient("", user, pw))
}

// login opens a STARTTLS session to addr from local (nil: any address) and
// authenticates user with pw over PLAIN.
func login(addr string, cfg *tls.Config, local net.IP, user, pw string) (*smtp.Client, error) {
	c, err := dialTLS(addr, cfg, local)
	if err != nil {
		return nil, err
	}
	if err := authPlain(c, user, pw); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// authAttempt authenticates user with pw on a new session from local (nil:
// any address) and returns the reply (see replyCode; "connect: …" when the
// session did not get as far as AUTH) and how long the AUTH took.
func authAttempt(addr string, cfg *tls.Config, local net.IP, user, pw string) (string, time.Duration) {
	c, err := dialTLS(addr, cfg, local)
	if err != nil {
		return "connect: " + replyCode(err), 0
	}
	defer c.Close()
	t0 := time.Now()
	err = authPlain(c, user, pw)
	return replyCode(err), time.Since(t0)
}

// send logs in as user on a new connection, sends data to every recipient
// in to and returns the queue ID of the 250 reply.
func send(addr string, cfg *tls.Config, user, from string, to []string, data string) (string, error) {
	c, err := login(addr, cfg, nil, user, password)
	if err != nil {
		return "", err
	}
	defer c.Close()
	id, err := transact(c, from, to, data)
	if err != nil {
		return "", err
	}
	c.Quit()
	return id, nil
}

var queuedRE = regexp.MustCompile(`queued as (\S+)`)

// transact runs MAIL, one RCPT per recipient and DATA in an open session and
// returns the queue ID of the 250 reply.
func transact(c *smtp.Client, from string, to []string, data string) (string, error) {
	text, err := testsmtp.Transact(c, from, to, data)
	if err != nil {
		return "", err
	}
	return queueID(text)
}

// sendData sends DATA and the message and returns the queue ID of the 250.
func sendData(c *smtp.Client, data string) (string, error) {
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	io.WriteString(w, data)
	r, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return queueID(r.StatusText)
}

// queueID is the queue ID a 250 reply's text names.
func queueID(text string) (string, error) {
	m := queuedRE.FindStringSubmatch(text)
	if m == nil {
		return "", fmt.Errorf("250 text %q names no queue ID", text)
	}
	return m[1], nil
}

// replyCode renders an SMTP reply error as "450 4.7.1", nil as "ok" and any
// other error as its text: tests compare it with the exact reply they want.
func replyCode(err error) string {
	if err == nil {
		return "ok"
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return fmt.Sprintf("%d %d.%d.%d", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	return err.Error()
}

// waitFor polls cond until it holds, or fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, timeout, what, cond)
}

// rawClient is a line-level SMTP client for what go-smtp hides: greetings,
// closed connections, PROXY headers, exact reply lines.
type rawClient struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

// dialRaw connects from local (nil: any address) and writes first, if any,
// before anything is read.
func dialRaw(t *testing.T, addr string, local net.IP, first string) *rawClient {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if first != "" {
		io.WriteString(c, first)
	}
	return &rawClient{t: t, c: c, r: bufio.NewReader(c)}
}

// reply reads one (possibly multi-line) reply and returns its last line.
func (s *rawClient) reply() string {
	s.t.Helper()
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading reply: %v (got %q)", err, line)
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

// cmd writes line and fails the test unless the reply starts with want.
func (s *rawClient) cmd(line, want string) {
	s.t.Helper()
	io.WriteString(s.c, line+"\r\n")
	if got := s.reply(); !strings.HasPrefix(got, want) {
		s.t.Fatalf("%s: %q, want %s", line, got, want)
	}
}

// readToClose reads until the server closes; a deadline passing first is
// reported as not closed.
func (s *rawClient) readToClose(wait time.Duration) (string, bool) {
	s.c.SetReadDeadline(time.Now().Add(wait))
	b, err := io.ReadAll(s.r)
	var ne net.Error
	closed := !(errors.As(err, &ne) && ne.Timeout())
	return string(b), closed
}

var httpListeningRE = regexp.MustCompile(`msg="http listening" address=(\S+)`)

// httpAddr is the address the daemon's HTTP server bound (logged before the
// SMTP listeners, so it is there once start returned).
func (p *proc) httpAddr() string {
	p.t.Helper()
	m := httpListeningRE.FindStringSubmatch(p.stderr.String())
	if m == nil {
		p.t.Fatalf("no http listening line in the log:\n%s", p.stderr.String())
	}
	return m[1]
}

// readMetrics fetches /metrics from addr as series (name{labels}) → value.
func readMetrics(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+addr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d %s", code, body)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			t.Fatalf("bad metrics line %q", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// metric reads one series from /metrics; -1 when absent.
func metric(t *testing.T, addr, series string) float64 {
	t.Helper()
	if v, ok := readMetrics(t, addr)[series]; ok {
		return v
	}
	return -1
}

// httpGet fetches url and returns the status code and body.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitQueueEmpty waits until the spool of e's daemon (state_dir
// {{DIR}}/state) holds no message: nothing is left to deliver, so what the
// upstream got by then is all it will get.
func waitQueueEmpty(t *testing.T, e *env) {
	t.Helper()
	waitFor(t, 20*time.Second, "an empty queue", func() bool {
		out, stderr, code := runCmd(t, "", "queue", "list", "--json", "--state-dir", filepath.Join(e.dir, "state"))
		if code != 0 {
			t.Fatalf("queue list: exit %d: %s", code, stderr)
		}
		return strings.TrimSpace(out) == ""
	})
}

// A testDaemon is one scenario end to end, as launch sets it up: its env
// (directory, certificate), the upstream sink it relays to, its config file
// and the running `sluice serve`. Tests name only what differs: the config
// (baseCfg, opsCfg, polCfg, dataCfg, or their own with configWith) and what
// the sink does (sinkOpts, refused, failRcpt).
type testDaemon struct {
	*env
	*proc
	up  *testsmtp.Server
	cfg string
	txt map[string]string // the DKIM TXT records by name, when the config made keys
}

// setup is what the options of launch fill in.
type setup struct {
	before    []func(e *env)                  // run on the env before the config is written
	config    func(e *env, upPort int) string // writes the config file, returns its path
	edits     [][2]string                     // old, new: replacements in a configWith config
	keygen    bool
	unstarted bool
	sink      testsmtp.Options
	shared    *testsmtp.Server // the sink, when another daemon's
	refuse    bool
	rules     []testsmtp.Rule
}

type option func(*setup)

// launch starts the sink, writes the config and runs `sluice serve -c` on
// it until every listener the config names is listening.
func launch(t *testing.T, opts ...option) *testDaemon {
	t.Helper()
	var s setup
	for _, o := range opts {
		o(&s)
	}
	d := &testDaemon{env: newEnv(t), up: s.shared}
	if d.up == nil {
		d.up = testsmtp.Start(t, s.sink)
	}
	if s.refuse {
		d.up.SetMode(testsmtp.Refuse)
	}
	for _, r := range s.rules {
		d.up.FailRule(r)
	}
	if s.keygen {
		d.txt = d.keygen()
	}
	for _, f := range s.before {
		f(d.env)
	}
	d.cfg = s.config(d.env, d.up.Port())
	if !s.unstarted {
		d.serve()
	}
	return d
}

// serve starts `sluice serve` on the config (again, after a kill or a
// stop; first, after launch with unstarted) and returns the process.
func (d *testDaemon) serve() *proc {
	d.env.t.Helper()
	y, err := os.ReadFile(d.cfg)
	if err != nil {
		d.env.t.Fatal(err)
	}
	d.proc = start(d.env.t, listenerCount(string(y)), "serve", "-c", d.cfg)
	return d.proc
}

// listenerCount counts the entries under a config's listeners: key.
func listenerCount(y string) int {
	n, in := 0, false
	for _, line := range strings.Split(y, "\n") {
		switch {
		case line == "listeners:":
			in = true
		case in && strings.HasPrefix(line, "  - name:"):
			n++
		case in && line != "" && line[0] != ' ':
			in = false
		}
	}
	return n
}

// configWith is a config of the test's own: y is its text (with the
// {{…}} parts config expands), made from the sink's port.
// Edits (see edited) apply to it.
func configWith(y func(upPort int) string) option {
	return func(s *setup) {
		s.config = func(e *env, port int) string {
			text := configParts.Replace(y(port))
			for _, ed := range s.edits {
				text = strings.Replace(text, ed[0], ed[1], 1)
			}
			return e.config(text)
		}
	}
}

// edited replaces the first old in a configWith config (baseCfg, dataCfg,
// polCfg, managedCfg, upCfg) with new, once the configParts are expanded.
func edited(old, new string) option {
	return func(s *setup) { s.edits = append(s.edits, [2]string{old, new}) }
}

// withKeys makes the env's DKIM keys (rsa.pem, ed.pem) before the config.
func withKeys(s *setup) { s.keygen = true }

// baseCfg is baseYAML: two listeners, every message dual-signed with the
// env's DKIM keys (made first), the sink the one upstream.
func baseCfg(s *setup) { baseWith(func(port int) string { return upstreamYAML(port) })(s) }

// baseWith is baseYAML with the upstreams block ups gives for the sink's
// port.
func baseWith(ups func(upPort int) string) option {
	return func(s *setup) {
		withKeys(s)
		configWith(func(port int) string { return strings.Replace(baseYAML, "{{UP}}", ups(port), 1) })(s)
	}
}

// opsCfg is opsYAML filled from o; its upPort is the sink's.
func opsCfg(o opsOpts) option {
	return func(s *setup) {
		s.config = func(e *env, port int) string { o.upPort = port; return e.opsConfig(o) }
	}
}

// before runs f on the env before the config is written (state to set up
// for the daemon to find).
func before(f func(e *env)) option { return func(s *setup) { s.before = append(s.before, f) } }

// mountTmpfs mounts a tmpfs of size at a new directory under dir (skips
// without root). The unmount is registered before any daemon starts, so it
// runs after the daemons were killed.
func mountTmpfs(t *testing.T, dir, size string) string {
	t.Helper()
	mnt := filepath.Join(dir, "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	return mnt
}

// onTmpfs mounts a tmpfs of size at {{DIR}}/small (see mountTmpfs), for a
// state_dir on a small volume.
func onTmpfs(size string) option {
	return before(func(e *env) { mountTmpfs(e.t, e.dir, size) })
}

// unstarted sets up the env, the sink and the config but leaves starting
// the daemon to the test (d.serve), for commands to run before it.
func unstarted(s *setup) { s.unstarted = true }

// sinkOpts sets the sink's options.
func sinkOpts(o testsmtp.Options) option { return func(s *setup) { s.sink = o } }

// sinkOf relays to other's sink rather than a new one (instances side by
// side); other's options and rules hold.
func sinkOf(other *testDaemon) option { return func(s *setup) { s.shared = other.up } }

// refused makes the sink refuse connections from the start, until the test
// calls up.SetMode(testsmtp.Serve).
func refused(s *setup) { s.refuse = true }

// failRcpt makes the sink answer RCPT TO:<rcpt> with code, enhanced code
// and text.
func failRcpt(rcpt string, code int, enhanced [3]int, text string) option {
	return failRcptTimes(0, rcpt, code, enhanced, text)
}

// failRcptOnce is failRcpt for the first RCPT TO:<rcpt> only.
func failRcptOnce(rcpt string, code int, enhanced [3]int, text string) option {
	return failRcptTimes(1, rcpt, code, enhanced, text)
}

func failRcptTimes(times int, rcpt string, code int, enhanced [3]int, text string) option {
	return failRule(testsmtp.Rule{Stage: testsmtp.StageRcpt, Rcpt: rcpt, Code: code, Enhanced: enhanced, Message: text, Times: times})
}

// failAt makes the sink answer every command of stage with code,
// enhanced code and text.
func failAt(stage testsmtp.Stage, code int, enhanced [3]int, text string) option {
	return failRule(testsmtp.Rule{Stage: stage, Code: code, Enhanced: enhanced, Message: text})
}

func failRule(r testsmtp.Rule) option { return func(s *setup) { s.rules = append(s.rules, r) } }

// sendMsg logs in as app on the submission listener and sends a message
// with Message-ID <id@example.com> from app@example.com to rcpts (none:
// r@example.org), its To: the first; it returns the queue ID.
func (d *testDaemon) sendMsg(id, body string, rcpts ...string) (string, error) {
	if len(rcpts) == 0 {
		rcpts = []string{"r@example.org"}
	}
	return send(d.addrs["submission"], d.tlsConfig(), "app", "app@example.com", rcpts, message("app@example.com", rcpts[0], id, body))
}

// mustSend is sendMsg for a message that must be answered 250: anything
// else fails the test. It returns the queue ID.
func (d *testDaemon) mustSend(id, body string, rcpts ...string) string {
	d.env.t.Helper()
	qid, err := d.sendMsg(id, body, rcpts...)
	if err != nil {
		d.env.t.Fatalf("sending %s: %v", id, err)
	}
	return qid
}

// openRcpt logs in as app on the submission listener and says MAIL
// FROM:<app@example.com> and RCPT TO:<to>; it returns the session (open for
// DATA when err is nil; the caller closes it) and the RCPT's error.
func (d *testDaemon) openRcpt(to string) (*smtp.Client, error) {
	t := d.env.t
	t.Helper()
	c, err := login(d.addrs["submission"], d.tlsConfig(), nil, "app", password)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("app@example.com", nil); err != nil {
		c.Close()
		t.Fatal(err)
	}
	return c, c.Rcpt(to, nil)
}

// metric reads one series from the daemon's /metrics; -1 when absent.
func (d *testDaemon) metric(series string) float64 {
	d.env.t.Helper()
	return metric(d.env.t, d.httpAddr(), series)
}

// submitter is a client load: connections sending messages and keeping
// the Message-IDs answered 250.
type submitter struct {
	mu       sync.Mutex
	accepted map[string]bool
	errs     []error
	wg       sync.WaitGroup
}

// submit opens conns connections as app, each sending per messages
// (per < 0: until an error) with Message-IDs prefix-C-I@example.com; every
// connection stops at its first error, and all stop once limit (if > 0)
// messages were accepted.
func submit(addr string, cfg *tls.Config, conns, per int, prefix string, limit int) *submitter {
	s := &submitter{accepted: map[string]bool{}}
	for c := range conns {
		s.wg.Go(func() {
			cl, err := login(addr, cfg, nil, "app", password)
			if err != nil {
				s.fail(err)
				return
			}
			defer cl.Close()
			for i := 0; per < 0 || i < per; i++ {
				id := fmt.Sprintf("%s-%d-%d", prefix, c, i)
				if _, err := transact(cl, "app@example.com", []string{"r@example.org"}, message("app@example.com", "r@example.org", id, prefix)); err != nil {
					s.fail(fmt.Errorf("%s: %w", id, err))
					return
				}
				s.mu.Lock()
				s.accepted[id+"@example.com"] = true
				n := len(s.accepted)
				s.mu.Unlock()
				if limit > 0 && n >= limit {
					return
				}
			}
		})
	}
	return s
}

func (s *submitter) fail(err error) {
	s.mu.Lock()
	s.errs = append(s.errs, err)
	s.mu.Unlock()
}

// count is how many messages were accepted so far.
func (s *submitter) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.accepted)
}

// wait waits for every connection to end and returns the accepted
// Message-IDs and the errors that ended connections.
func (s *submitter) wait() (map[string]bool, []error) {
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted, s.errs
}
