package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/internal/certs"
	"github.com/sluicemail/sluice/internal/passwd"
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

// syncBuffer collects a child's output while tests read it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
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

// config writes sluice.yaml: the given YAML with {{DIR}}, {{CERT}}, {{KEY}},
// {{HASH}} replaced.
func (e *env) config(y string) string {
	y = strings.NewReplacer("{{DIR}}", e.dir, "{{CERT}}", e.certFile, "{{KEY}}", e.keyFile, "{{HASH}}", e.hash).Replace(y)
	p := filepath.Join(e.dir, "sluice.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) tlsConfig() *tls.Config { return &tls.Config{RootCAs: e.roots, ServerName: "relay.test"} }

// proc is a running `sluice serve`.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdout *syncBuffer
	stderr *syncBuffer
	addrs  map[string]string
	done   chan struct{}
	err    error
}

var listeningRE = regexp.MustCompile(`msg=listening listener=(\S+) address=(\S+)`)

// start runs `sluice ARGS...` and waits until every listener logged its address.
func start(t *testing.T, listeners int, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, stdout: &syncBuffer{}, stderr: &syncBuffer{}, addrs: map[string]string{}, done: make(chan struct{})}
	p.cmd = exec.Command(sluiceBin, args...)
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

// runCmd runs a sluice command to completion.
func runCmd(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(sluiceBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &o, &e, strings.NewReader(stdin)
	err := cmd.Run()
	if err != nil {
		if _, ok := err.(*exec.ExitError); !ok {
			t.Fatal(err)
		}
	}
	return o.String(), e.String(), cmd.ProcessState.ExitCode()
}

// goSend logs in with STARTTLS + PLAIN and sends one message.
func goSend(t *testing.T, addr string, cfg *tls.Config, from, to, data string) (string, error) {
	t.Helper()
	c, err := smtp.DialStartTLS(addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.Auth(sasl.NewPlainClient("", "app", password)); err != nil {
		return "", err
	}
	return sendOn(c, from, to, data)
}

func sendOn(c *smtp.Client, from, to, data string) (string, error) {
	if err := c.Mail(from, nil); err != nil {
		return "", err
	}
	if err := c.Rcpt(to, nil); err != nil {
		return "", err
	}
	w, err := c.Data()
	if err != nil {
		return "", err
	}
	io.WriteString(w, data)
	r, err := w.CloseWithResponse()
	if err != nil {
		return "", err
	}
	return r.StatusText, nil
}

func message(from, to, id, body string) string {
	return fmt.Sprintf("From: <%s>\r\nTo: <%s>\r\nSubject: test %s\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%s@example.com>\r\n\r\n%s\r\n", from, to, id, id, body)
}

// messageIDs counts the Message-IDs in a set of raw messages.
func messageIDs(datas [][]byte) map[string]int {
	out := map[string]int{}
	re := regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)
	for _, d := range datas {
		if m := re.FindSubmatch(d); m != nil {
			out[string(m[1])]++
		}
	}
	return out
}

type smtpClient = smtp.Client

func dialClient(addr string, cfg *tls.Config) (*smtp.Client, error) {
	c, err := smtp.DialStartTLS(addr, cfg)
	if err != nil {
		return nil, err
	}
	if err := c.Auth(sasl.NewPlainClient("", "app", password)); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}
