package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// setup is what the benchmark configures sluice with.
type setup struct {
	Dir           string // state, keys, config and log live below it
	Listen        string // 127.0.0.1:PORT
	SinkPort      int
	PasswordHash  string
	DKIMKeys      []dkimKey
	MaxConns      int // listener max_connections and max_connections_per_ip
	UpstreamConns int // 0: the config default
	Workers       int // 0: the config default
	LogLevel      string
	MaxSize       string // policy max_message_size
	HTTP          string // http.address, "" for none
	Retry         string // queue.retry's one interval, "" for the default
}

type dkimKey struct{ Selector, File string }

const (
	benchUser   = "bench"
	benchDomain = "bench.test"
)

// configYAML is the sluice.yaml the benchmark runs with: one STARTTLS
// listener with AUTH, one user whose policy allows the sender and has no
// rate limit, keys for the From: domain, and one plaintext SMTP upstream —
// the sink. No http block: nothing else should compete for the cores.
func configYAML(s setup) string {
	var b strings.Builder
	fmt.Fprintf(&b, "hostname: bench.localhost\nstate_dir: %s\nshutdown_timeout: 10s\n", filepath.Join(s.Dir, "state"))
	b.WriteString("tls:\n  self_signed: true\n")
	fmt.Fprintf(&b, "listeners:\n  - name: bench\n    address: %q\n    tls: starttls\n    auth: required\n", s.Listen)
	fmt.Fprintf(&b, "    max_connections: %d\n    max_connections_per_ip: %d\n", s.MaxConns, s.MaxConns)
	fmt.Fprintf(&b, "users:\n  - name: %s\n    password_hash: %q\n", benchUser, s.PasswordHash)
	fmt.Fprintf(&b, "policies:\n  default:\n    allowed_senders: [\"*@%s\"]\n    max_message_size: %s\n", benchDomain, s.MaxSize)
	if len(s.DKIMKeys) > 0 {
		b.WriteString("dkim:\n")
		for _, k := range s.DKIMKeys {
			fmt.Fprintf(&b, "  - domain: %s\n    selector: %s\n    key_file: %s\n", benchDomain, k.Selector, k.File)
		}
	}
	fmt.Fprintf(&b, "upstreams:\n  - name: sink\n    host: 127.0.0.1\n    ports: [%d]\n    tls: none\n", s.SinkPort)
	if s.UpstreamConns > 0 {
		fmt.Fprintf(&b, "    max_connections: %d\n", s.UpstreamConns)
	}
	if s.Retry != "" {
		b.WriteString("    breaker_backoff: 1s\n")
	}
	if s.Workers > 0 || s.Retry != "" {
		b.WriteString("queue:\n")
	}
	if s.Workers > 0 {
		fmt.Fprintf(&b, "  workers: %d\n", s.Workers)
	}
	if s.Retry != "" {
		fmt.Fprintf(&b, "  retry: [%s]\n", s.Retry)
	}
	if s.HTTP != "" {
		fmt.Fprintf(&b, "http:\n  address: %q\n", s.HTTP)
	}
	fmt.Fprintf(&b, "log:\n  format: text\n  level: %s\n", s.LogLevel)
	return b.String()
}

// hashPassword asks the binary for a hash, as an operator would.
func hashPassword(bin, password string, bcrypt bool) (string, error) {
	args := []string{"passwd"}
	if bcrypt {
		args = append(args, "--bcrypt")
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(password + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("sluice passwd: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// keygen writes one DKIM key with `sluice dkim keygen`.
func keygen(bin, dir, algo string) (dkimKey, error) {
	k := dkimKey{Selector: "bench-" + algo, File: filepath.Join(dir, benchDomain+"."+algo+".pem")}
	cmd := exec.Command(bin, "dkim", "keygen", "--domain", benchDomain, "--selector", k.Selector, "--algo", algo, "--out", k.File)
	if out, err := cmd.CombinedOutput(); err != nil {
		return k, fmt.Errorf("sluice dkim keygen --algo %s: %w: %s", algo, err, strings.TrimSpace(string(out)))
	}
	return k, nil
}

// keyAlgos maps the --dkim flag to the keys to generate.
func keyAlgos(mode string) ([]string, error) {
	switch mode {
	case "rsa":
		return []string{"rsa"}, nil
	case "ed25519":
		return []string{"ed25519"}, nil
	case "dual":
		return []string{"rsa", "ed25519"}, nil
	case "none":
		return nil, nil
	}
	return nil, fmt.Errorf("--dkim %q: want rsa, ed25519, dual or none", mode)
}

// freePort asks the kernel for a free loopback port. The listener is closed
// before sluice binds it; on loopback nothing else races for it in practice,
// and a lost race shows up as a start failure, not a wrong figure.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// checkOnDisk refuses a state directory on tmpfs: the durable spool's fsync
// is the cost under test, and tmpfs makes it free.
func checkOnDisk(dir string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	const tmpfsMagic = 0x01021994
	if st.Type == tmpfsMagic {
		return fmt.Errorf("%s is on tmpfs: the spool must be on disk (use --dir)", dir)
	}
	return nil
}

// child is a running `sluice serve`.
type child struct {
	cmd     *exec.Cmd
	log     string
	exited  chan struct{}
	waitErr error
}

// startSluice runs `sluice serve -c cfg` with its output in logPath and
// waits until addr accepts connections.
func startSluice(bin, cfg, logPath, addr string, timeout time.Duration) (*child, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "serve", "-c", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	c := &child{cmd: cmd, log: logPath, exited: make(chan struct{})}
	go func() {
		c.waitErr = cmd.Wait()
		logf.Close()
		close(c.exited)
	}()
	deadline := time.Now().Add(timeout)
	for {
		conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			conn.Close()
			return c, nil
		}
		select {
		case <-c.exited:
			return nil, fmt.Errorf("sluice exited at start (%v):\n%s", c.waitErr, c.tail(20))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.kill()
			return nil, fmt.Errorf("sluice did not listen on %s within %s:\n%s", addr, timeout, c.tail(20))
		}
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop sends SIGTERM and waits for the drain; a child that outlives the
// grace period is killed so the benchmark stays bounded.
func (c *child) stop(grace time.Duration) error {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
		return c.waitErr
	case <-time.After(grace):
		c.kill()
		return fmt.Errorf("sluice did not exit within %s of SIGTERM; killed", grace)
	}
}

// killUnlessExited is the deferred cleanup: a child still running is killed.
func (c *child) killUnlessExited() {
	select {
	case <-c.exited:
	default:
		c.kill()
	}
}

func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}

// tail returns the last n lines of the child's log.
func (c *child) tail(n int) string {
	b, _ := os.ReadFile(c.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// procMem is the memory of a process from /proc/PID/status, in bytes. RSS
// and its peak HWM count the binary's own pages too (RssFile: 11–23 MB here,
// more when the kernel maps the text through huge pages); Anon is the
// process's private memory now.
type procMem struct{ RSS, HWM, Anon int64 }

func readMem(pid int) (procMem, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	return parseStatus(bufio.NewScanner(f))
}

func parseStatus(sc *bufio.Scanner) (procMem, error) {
	var m procMem
	var found int
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM" && key != "RssAnon") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return m, fmt.Errorf("status: %s: unexpected %q", key, val)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("status: %s: %w", key, err)
		}
		switch key {
		case "VmRSS":
			m.RSS = kb * 1024
			found++
		case "VmHWM":
			m.HWM = kb * 1024
			found++
		case "RssAnon":
			m.Anon = kb * 1024
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if found != 2 {
		return m, errors.New("status: VmRSS or VmHWM missing")
	}
	return m, nil
}

// cpuSeconds is the user+system CPU time of a process so far. Linux reports
// it in clock ticks of USER_HZ, which is 100 on every supported platform.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from after ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("stat: short")
	}
	ut, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("stat: bad utime/stime")
	}
	return (ut + st) / 100, nil
}

// selfCPU is this process's user+system CPU time: the load generator and
// the sink share the two cores with sluice, so the table shows both.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}
