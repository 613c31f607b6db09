package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// smtpSinkPath is where Debian's postfix package installs Postfix's
// smtp-sink, the upstream of the peers' measurements (shared/bench/peers.md).
const smtpSinkPath = "/usr/sbin/smtp-sink"

// findSmtpSink returns the smtp-sink binary, or "" when it is not installed.
func findSmtpSink() string {
	if p, err := exec.LookPath("smtp-sink"); err == nil {
		return p
	}
	if st, err := os.Stat(smtpSinkPath); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return smtpSinkPath
	}
	return ""
}

// chooseSink checks --sink: go (the default: exactly once, in the tool's
// process), smtp-sink (exactly once through its dump file) or
// smtp-sink-count (arrivals counted only: the cheapest sink, but a lost
// message and a duplicate would cancel out).
func chooseSink(want string) (string, error) {
	switch want {
	case "go", "":
		return "go", nil
	case "smtp-sink", "smtp-sink-count":
		if findSmtpSink() == "" {
			return "", fmt.Errorf("--sink %s: smtp-sink is not installed (Debian: apt-get install postfix)", want)
		}
		return want, nil
	}
	return "", fmt.Errorf("--sink %q: want go, smtp-sink or smtp-sink-count", want)
}

// startSmtpSink runs Postfix's smtp-sink on a free loopback port as the
// upstream: a C process of its own, so the sink's CPU is no longer the
// tool's, and the same sink the peers were measured against. It counts
// messages with -c (a counter line on stdout after every final dot, which a
// goroutine reads and timestamps) and appends every transaction to a dump
// file with -D, whose X-Rcpt-Args lines give the sequence numbers for the
// exactly-once tally. The dump goes to dumpDir (tmpfs when there is one, so
// its writes do not compete with the spool's fsyncs for the disk).
func startSmtpSink(bin, dumpDir string, countOnly bool) (*sink, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dumpDir, "sluice-bench-sink-*.dump")
	if err != nil {
		return nil, fmt.Errorf("sink: dump file: %w", err)
	}
	f.Close()
	s := &sink{seen: map[int]int{}, arrived: make(chan struct{}), extPort: port, dump: f.Name(), countOnly: countOnly}
	// -D takes a strftime template: a literal % would be expanded.
	template := strings.ReplaceAll(s.dump, "%", "%%")
	args := []string{"-c", "-D", template}
	if countOnly {
		args = []string{"-c"}
	}
	if os.Geteuid() == 0 {
		args = append(args, "-u", "root") // required when run as root
	}
	args = append(args, "127.0.0.1:"+strconv.Itoa(port), "256")
	s.proc = exec.Command(bin, args...)
	// The counter goes to a file, not a pipe: on a pipe smtp-sink flushes
	// it only when a session ends, and the upstream sessions last the run.
	out, err := os.CreateTemp(dumpDir, "sluice-bench-sink-*.count")
	if err != nil {
		os.Remove(s.dump)
		return nil, fmt.Errorf("sink: counter file: %w", err)
	}
	s.countFile = out.Name()
	s.proc.Stdout = out
	var stderr bytes.Buffer
	s.proc.Stderr = &stderr
	err = s.proc.Start()
	out.Close()
	if err != nil {
		os.Remove(s.dump)
		os.Remove(s.countFile)
		return nil, fmt.Errorf("sink: %w", err)
	}
	counter, err := os.Open(s.countFile)
	if err != nil {
		s.close()
		return nil, err
	}
	s.stopRead = make(chan struct{})
	s.readerDone = make(chan struct{})
	go s.readCounter(counter)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			s.close()
			return nil, fmt.Errorf("sink: smtp-sink did not listen on %d: %v; %s", port, err, strings.TrimSpace(stderr.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// readCounter follows smtp-sink -c's counter file, "sess=N quit=N mesg=N"
// and a carriage return after every final dot, polling it every
// millisecond, and records each increase of mesg as arrivals at the time it
// was read.
func (s *sink) readCounter(f *os.File) {
	defer close(s.readerDone)
	defer f.Close()
	buf := make([]byte, 64<<10)
	var partial []byte
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		for {
			n, err := f.Read(buf)
			partial = append(partial, buf[:n]...)
			if n == 0 || err != nil {
				break
			}
		}
		if i := bytes.LastIndexByte(partial, '\r'); i >= 0 {
			lines := partial[:i]
			if j := bytes.LastIndexByte(lines, '\r'); j >= 0 {
				lines = lines[j+1:]
			}
			if n, ok := parseCounter(string(lines)); ok {
				s.recordCount(n)
			}
			partial = append(partial[:0], partial[i+1:]...)
		}
		select {
		case <-s.stopRead:
			return
		case <-tick.C:
		}
	}
}

// parseCounter reads the mesg= field of one counter line.
func parseCounter(line string) (int, bool) {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, "mesg="); ok {
			n, err := strconv.Atoi(v)
			return n, err == nil && n >= 0
		}
	}
	return 0, false
}

// recordCount notes that n messages have arrived in total.
func (s *sink) recordCount(n int) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if n <= s.count {
		return
	}
	s.count = n
	if s.first.IsZero() {
		s.first = now
	}
	s.last = now
	close(s.arrived)
	s.arrived = make(chan struct{})
}

// tallyCount is the tally of a count-only sink: accepted messages beyond
// the number that arrived are lost, arrivals beyond the accepted ones are
// duplicates.
func (s *sink) tallyCount(accepted []bool) (lost, dups int) {
	n := 0
	for _, ok := range accepted {
		if ok {
			n++
		}
	}
	s.mu.Lock()
	got := s.count
	s.mu.Unlock()
	return max(n-got, 0), max(got-n, 0)
}

// readDump replaces the per-sequence counts with those of the dump file:
// one X-Rcpt-Args line per accepted RCPT of each transaction. smtp-sink
// writes a transaction to the dump before it answers the final dot.
func (s *sink) readDump() error {
	f, err := os.Open(s.dump)
	if err != nil {
		return err
	}
	defer f.Close()
	seen, other := map[int]int{}, 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prefix := []byte("X-Rcpt-Args: <")
	for sc.Scan() {
		l := sc.Bytes()
		if !bytes.HasPrefix(l, prefix) {
			continue
		}
		addr, _, _ := strings.Cut(string(l[len(prefix):]), ">")
		if seq, ok := parseSeq(addr); ok {
			seen[seq]++
		} else {
			other++
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.seen, s.other = seen, other
	s.mu.Unlock()
	return nil
}

// closeSmtpSink stops smtp-sink and removes its dump.
func (s *sink) closeSmtpSink() {
	s.closeOnce.Do(func() {
		if s.proc.Process != nil {
			_ = s.proc.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { _ = s.proc.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				_ = s.proc.Process.Kill()
				<-done
			}
		}
		if s.readerDone != nil {
			close(s.stopRead)
			<-s.readerDone
		}
		os.Remove(s.dump)
		os.Remove(s.countFile)
	})
}

// sinkCPU is the CPU seconds of the sink when it is a process of its own
// (smtp-sink), 0 for the Go sink, whose CPU is the tool's.
func (s *sink) cpu() float64 {
	if s.proc == nil || s.proc.Process == nil {
		return 0
	}
	c, _ := cpuSeconds(s.proc.Process.Pid)
	return c
}

// dumpDir is where smtp-sink's dump goes: /dev/shm when it is a writable
// tmpfs, else the state directory's parent.
func dumpDir(fallback string) string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if f, err := os.CreateTemp("/dev/shm", "sluice-bench-probe-*"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/dev/shm"
		}
	}
	return filepath.Clean(fallback)
}
