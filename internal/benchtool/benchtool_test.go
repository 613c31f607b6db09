package main

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"github.com/sluicemail/sluice/config"
)

// The sink counts what a real go-smtp client delivers, by sequence number,
// and the tally names accepted messages that never arrived.
func TestSinkTalliesArrivals(t *testing.T) {
	t.Parallel()
	s, err := startSink()
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	c, err := smtp.Dial(s.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, to := range []string{rcptFor(0), rcptFor(2), rcptFor(2), "postmaster@sink.test"} {
		if _, err := send(c, "bench@bench.test", to, bytesReader(message(0, 2048, "t"))); err != nil {
			t.Fatalf("send to %s: %v", to, err)
		}
	}
	if !s.waitCount(4, time.Now().Add(5*time.Second)) {
		t.Fatal("sink did not count 4 messages")
	}
	n, last := s.snapshot()
	if n != 4 || last.IsZero() {
		t.Fatalf("snapshot = %d, %v; want 4 and an arrival time", n, last)
	}
	// 0 and 2 arrived (2 twice), 1 was "accepted" but never sent, 3 was refused.
	lost, dups := s.tally([]bool{true, true, true, false})
	if lost != 1 || dups != 1 {
		t.Fatalf("tally = lost %d, dups %d; want 1, 1", lost, dups)
	}
	if s.other != 1 || s.bytes < 4*2048 {
		t.Fatalf("other = %d, bytes = %d; want 1 and at least %d", s.other, s.bytes, 4*2048)
	}
	if s.waitCount(5, time.Now().Add(50*time.Millisecond)) {
		t.Fatal("waitCount(5) reported success with 4 messages")
	}
}

func TestMessageIsExactSizeAndSignable(t *testing.T) {
	t.Parallel()
	for _, size := range []int{0, 300, 2048, 2049, 2050, 10000} {
		m := message(7, size, "run")
		if size >= 300 && len(m) != size {
			t.Errorf("size %d: got %d bytes", size, len(m))
		}
		s := string(m)
		if !strings.HasPrefix(s, "From: Bench <bench@bench.test>\r\n") || !strings.Contains(s, "\r\nTo: <n7@sink.test>\r\n") {
			t.Errorf("size %d: headers %q", size, s[:min(len(s), 80)])
		}
		if !strings.HasSuffix(s, "\r\n") || strings.Contains(strings.ReplaceAll(s, "\r\n", ""), "\n") || strings.Contains(strings.ReplaceAll(s, "\r\n", ""), "\r") {
			t.Errorf("size %d: not CRLF lines throughout", size)
		}
		if !strings.Contains(s, "\r\n\r\n") {
			t.Errorf("size %d: no header/body separator", size)
		}
	}
}

func TestBigBodyStreamsCRLFLines(t *testing.T) {
	t.Parallel()
	const n = 3<<20 + 17
	b := newBigBody(1, n, "run")
	want := b.size()
	if want > n || want < n-int64(len(bodyLine)) {
		t.Fatalf("size() = %d, want within one line below %d", want, n)
	}
	var got bytes.Buffer
	// A small odd buffer exercises lines split across reads.
	if _, err := io.CopyBuffer(&got, struct{ io.Reader }{b}, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if int64(got.Len()) != want {
		t.Fatalf("read %d bytes, size() said %d", got.Len(), want)
	}
	parts := bytes.Split(got.Bytes(), []byte("\n"))
	if len(parts[len(parts)-1]) != 0 {
		t.Fatal("the body does not end with a line break")
	}
	lines := len(parts) - 1
	for i, l := range parts[:lines] {
		if !bytes.HasSuffix(l, []byte("\r")) {
			t.Fatalf("line %d not CRLF-terminated: %q", i, l)
		}
	}
	if lines < n/len(bodyLine) {
		t.Fatalf("only %d lines", lines)
	}
}

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"50MB": 50e6, "50MiB": 50 << 20, "2KB": 2000, "1GiB": 1 << 30, "123": 123, "7B": 7} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "-1MB", "5 MB", "5mb", "1.5MB"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	s := sortedCopy(d)
	for p, want := range map[float64]time.Duration{50: 50 * time.Millisecond, 99: 99 * time.Millisecond, 100: 100 * time.Millisecond, 0: time.Millisecond} {
		if got := percentile(s, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if percentile(nil, 99) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

func TestParseStatus(t *testing.T) {
	t.Parallel()
	in := "Name:\tsluice\nVmPeak:\t 1300000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   20480 kB\nRssAnon:\t    8192 kB\nThreads:\t7\n"
	m, err := parseStatus(bufio.NewScanner(strings.NewReader(in)))
	if err != nil || m.HWM != 40<<20 || m.RSS != 20<<20 || m.Anon != 8<<20 {
		t.Fatalf("parseStatus = %+v, %v", m, err)
	}
	if _, err := parseStatus(bufio.NewScanner(strings.NewReader("VmRSS:\t1 kB\n"))); err == nil {
		t.Fatal("missing VmHWM not reported")
	}
	// This process has a status file too.
	if m, err := readMem(os.Getpid()); err != nil || m.RSS <= 0 || m.HWM < m.RSS {
		t.Fatalf("readMem(self) = %+v, %v", m, err)
	}
}

// The generated configuration is one sluice's own loader accepts, with the
// settings the benchmark depends on.
func TestConfigYAMLLoads(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "k.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	y := configYAML(setup{
		Dir: dir, Listen: "127.0.0.1:2525", SinkPort: 2526, PasswordHash: string(hash),
		DKIMKeys: []dkimKey{{Selector: "bench-ed25519", File: keyFile}}, MaxConns: 1050,
		UpstreamConns: 20, Workers: 16, LogLevel: "warn", MaxSize: "200MB",
	})
	cfg, err := config.Parse([]byte(y), filepath.Join(dir, "sluice.yaml"))
	if err != nil {
		t.Fatalf("config does not load: %v\n%s", err, y)
	}
	ls := cfg.Listeners[0]
	if ls.TLS != "starttls" || ls.Auth != "required" || ls.MaxConnectionsPerIP != 1050 || !cfg.TLS.SelfSigned {
		t.Errorf("listener = %+v, self_signed %v", ls, cfg.TLS.SelfSigned)
	}
	up := cfg.Upstreams[0]
	if up.TLS != "none" || up.Host != "127.0.0.1" || len(up.Ports) != 1 || up.Ports[0] != 2526 || up.MaxConnections != 20 {
		t.Errorf("upstream = %+v", up)
	}
	p := cfg.Policy("default")
	if p == nil || p.MaxMessageSize < 100e6 || p.Rate.Messages != (config.Rate{}) {
		t.Errorf("policy = %+v", p)
	}
	if cfg.StateDir != filepath.Join(dir, "state") || cfg.Queue.Workers != 16 || len(cfg.DKIM) != 1 {
		t.Errorf("state_dir %q, workers %d, dkim %d", cfg.StateDir, cfg.Queue.Workers, len(cfg.DKIM))
	}
}

func TestParseOptions(t *testing.T) {
	t.Parallel()
	o, err := parseOptions([]string{"--sluice", "/x", "--dkim", "dual", "--big", "50MB"}, io.Discard)
	if err != nil || o.conns != 20 || o.messages != 20000 || o.size != 2048 || o.timeout != time.Minute {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
	for _, args := range [][]string{
		{},
		{"--sluice", "/x", "--dkim", "dsa"},
		{"--sluice", "/x", "--idle", "10", "--big", "1MB"},
		{"--sluice", "/x", "--big", "lots"},
		{"--sluice", "/x", "--timeout", "1s"},
		{"--sluice", "/x", "extra"},
		{"--sluice", "/x", "--queue", "10", "--reconnect"},
	} {
		if _, err := parseOptions(args, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

func TestCheckOnDisk(t *testing.T) {
	t.Parallel()
	if err := checkOnDisk(t.TempDir()); err != nil {
		// Only a tmpfs TMPDIR fails, and then the message must say so.
		if !strings.Contains(err.Error(), "tmpfs") {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat("/dev/shm"); err == nil {
		if err := checkOnDisk("/dev/shm"); err == nil {
			t.Error("/dev/shm accepted as on disk")
		}
	}
}

// parseSeq is the inverse of rcptFor and accepts nothing else.
func FuzzParseSeq(f *testing.F) {
	for _, s := range []string{"n0@sink.test", "n123@SINK.test", "n01@sink.test", "x1@sink.test", "n-1@sink.test", "n@sink.test"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := parseSeq(s)
		if !ok {
			return
		}
		if n < 0 || !strings.EqualFold(rcptFor(n), s) {
			t.Fatalf("parseSeq(%q) = %d, but rcptFor(%d) = %q", s, n, n, rcptFor(n))
		}
		if m, ok := parseSeq(rcptFor(n)); !ok || m != n {
			t.Fatalf("round trip of %d gave %d, %v", n, m, ok)
		}
	})
}

// The queue mode's configuration: one retry interval, a short breaker
// backoff, and the HTTP listener whose /readyz and /metrics it polls.
func TestConfigYAMLQueueMode(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	y := configYAML(setup{
		Dir: dir, Listen: "127.0.0.1:2525", SinkPort: 2526, PasswordHash: string(hash),
		MaxConns: 70, UpstreamConns: 20, LogLevel: "info", MaxSize: "200MB",
		HTTP: "127.0.0.1:8025", Retry: "1m",
	})
	cfg, err := config.Parse([]byte(y), filepath.Join(dir, "sluice.yaml"))
	if err != nil {
		t.Fatalf("config does not load: %v\n%s", err, y)
	}
	if len(cfg.Queue.Retry) != 1 || cfg.Queue.Retry[0] != time.Minute || cfg.HTTP.Address != "127.0.0.1:8025" ||
		cfg.Upstreams[0].BreakerBackoff != time.Second {
		t.Errorf("retry %v, http %q, breaker_backoff %v", cfg.Queue.Retry, cfg.HTTP.Address, cfg.Upstreams[0].BreakerBackoff)
	}
}

func TestMetric(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		io.WriteString(w, "# HELP sluice_queue_messages Messages in the spool.\n# TYPE sluice_queue_messages gauge\n"+
			"sluice_queue_messages_total 7\nsluice_queue_messages 1234\n")
	}))
	defer srv.Close()
	if n, ok := metric(srv.URL, "sluice_queue_messages"); !ok || n != 1234 {
		t.Errorf("metric = %v, %v; want 1234", n, ok)
	}
	if _, ok := metric(srv.URL, "sluice_absent"); ok {
		t.Error("an absent metric was found")
	}
}

// smtp-sink as the upstream (peers.md's): arrivals are counted from its -c
// counter, and the tally reads sequence numbers from its dump, so a lost and
// a duplicated message are both seen; the count-only sink counts.
func TestSmtpSinkTalliesArrivals(t *testing.T) {
	t.Parallel()
	bin := findSmtpSink()
	if bin == "" {
		t.Skip("smtp-sink is not installed (Debian: postfix)")
	}
	for _, countOnly := range []bool{false, true} {
		s, err := startSmtpSink(bin, t.TempDir(), countOnly)
		if err != nil {
			t.Fatal(err)
		}
		c, err := smtp.Dial("127.0.0.1:" + strconv.Itoa(s.port()))
		if err != nil {
			t.Fatal(err)
		}
		for _, to := range []string{rcptFor(0), rcptFor(2), rcptFor(2), "postmaster@sink.test"} {
			if _, err := send(c, "bench@bench.test", to, bytesReader(message(0, 2048, "t"))); err != nil {
				t.Fatalf("send to %s: %v", to, err)
			}
		}
		if !s.waitCount(4, time.Now().Add(5*time.Second)) {
			n, _ := s.snapshot()
			t.Fatalf("sink counted %d of 4 messages", n)
		}
		if n, last := s.snapshot(); n != 4 || last.IsZero() {
			t.Fatalf("snapshot = %d, %v; want 4 and an arrival time", n, last)
		}
		if s.waitCount(5, time.Now().Add(50*time.Millisecond)) {
			t.Fatal("waitCount(5) reported success with 4 messages")
		}
		lost, dups := s.tally([]bool{true, true, true, false})
		want := [2]int{1, 1} // 1 never sent, 2 twice
		if countOnly {
			want = [2]int{0, 1} // 3 accepted, 4 arrived
		}
		if [2]int{lost, dups} != want {
			t.Errorf("countOnly=%v: tally = lost %d, dups %d; want %v", countOnly, lost, dups, want)
		}
		c.Close()
		s.close()
		if _, err := os.Stat(s.dump); !os.IsNotExist(err) {
			t.Errorf("dump %s left behind: %v", s.dump, err)
		}
	}
}

func TestParseCounter(t *testing.T) {
	for in, want := range map[string]int{"sess=1 quit=0 mesg=12\r": 12, "mesg=0": 0, "sess=1 quit=0": -1, "mesg=x": -1} {
		n, ok := parseCounter(in)
		if !ok {
			n = -1
		}
		if n != want {
			t.Errorf("parseCounter(%q) = %d, want %d", in, n, want)
		}
	}
}

// writeCounter counts the writes to the connections a listener accepts.
type writeCounter struct {
	net.Listener
	writes atomic.Int64
}

func (l *writeCounter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countedConn{Conn: c, n: &l.writes}, nil
}

type countedConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countedConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// The patched go-smtp server (the sink's, and sluice's own) answers
// MAIL, RCPT and DATA sent in one write (PIPELINING) with one write; a
// client that waits for each reply still gets each at once.
func TestServerAnswersPipelinedCommandsInOneWrite(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := &writeCounter{Listener: ln}
	s := serveSink(wl)
	defer s.close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	expect := func(prefix string) {
		t.Helper()
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("waiting for %q: %v", prefix, err)
			}
			if strings.HasPrefix(l, prefix+" ") {
				return
			}
			if !strings.HasPrefix(l, prefix+"-") {
				t.Fatalf("got %q, want %s", l, prefix)
			}
		}
	}
	expect("220")
	io.WriteString(c, "EHLO client.test\r\n")
	expect("250")
	before := wl.writes.Load()
	io.WriteString(c, "MAIL FROM:<a@bench.test>\r\nRCPT TO:<"+rcptFor(1)+">\r\nRCPT TO:<"+rcptFor(2)+">\r\nDATA\r\n")
	expect("250")
	expect("250")
	expect("250")
	expect("354")
	if n := wl.writes.Load() - before; n != 1 {
		t.Errorf("four pipelined replies took %d writes, want 1", n)
	}
	io.WriteString(c, "Subject: x\r\n\r\nbody\r\n.\r\n")
	expect("250")
	// One command at a time: every reply comes without the next command.
	for _, cmd := range []string{"MAIL FROM:<a@bench.test>", "RCPT TO:<" + rcptFor(3) + ">", "DATA"} {
		io.WriteString(c, cmd+"\r\n")
		if cmd == "DATA" {
			expect("354")
		} else {
			expect("250")
		}
	}
	io.WriteString(c, "Subject: y\r\n\r\nbody\r\n.\r\n")
	expect("250")
	if !s.waitCount(2, time.Now().Add(5*time.Second)) {
		t.Fatal("the sink did not count both messages")
	}
}
