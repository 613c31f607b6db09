package main

import (
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the fast upstream the relay delivers to: a plaintext go-smtp
// server that discards bodies and records, per benchmark sequence number
// (carried in the recipient n<seq>@sink.test), how often it arrived and
// when the latest message came in. internal/testsmtp keeps every body in
// memory and needs a testing.TB, which suits tests but not a 50 MB run.
type sink struct {
	ln  net.Listener
	srv *smtp.Server

	// smtp-sink instead of the Go server (smtpsink.go).
	proc       *exec.Cmd
	extPort    int
	dump       string
	countOnly  bool
	countFile  string
	readerDone chan struct{}
	stopRead   chan struct{}
	closeOnce  sync.Once

	mu      sync.Mutex
	seen    map[int]int // seq → arrivals
	count   int         // messages received, any recipient
	other   int         // messages whose recipient carried no sequence number
	bytes   int64
	first   time.Time
	last    time.Time
	arrived chan struct{} // closed and replaced on every arrival
}

// startSink listens on 127.0.0.1:0 and serves until close.
func startSink() (*sink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sink: listen: %w", err)
	}
	return serveSink(ln), nil
}

func serveSink(ln net.Listener) *sink {
	s := &sink{ln: ln, seen: map[int]int{}, arrived: make(chan struct{})}
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{s: s}, nil
	}))
	s.srv.Domain = "sink.test"
	// No size or recipient cap and no read deadline: the sink must never be
	// the reason a message is refused or slow.
	s.srv.MaxMessageBytes = 0
	s.srv.MaxRecipients = 0
	s.srv.ErrorLog = discardLogger{}
	go func() { _ = s.srv.Serve(ln) }()
	return s
}

func (s *sink) port() int {
	if s.proc != nil {
		return s.extPort
	}
	return s.ln.Addr().(*net.TCPAddr).Port
}

func (s *sink) close() {
	if s.proc != nil {
		s.closeSmtpSink()
		return
	}
	_ = s.srv.Close()
}

// record notes one delivered message for the given recipients.
func (s *sink) record(rcpts []string, n int64) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.count++
	s.bytes += n
	if s.first.IsZero() {
		s.first = now
	}
	s.last = now
	for _, r := range rcpts {
		if seq, ok := parseSeq(r); ok {
			s.seen[seq]++
		} else {
			s.other++
		}
	}
	close(s.arrived)
	s.arrived = make(chan struct{})
}

// snapshot returns the number of messages received and the latest arrival.
func (s *sink) snapshot() (count int, last time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count, s.last
}

// firstArrival is when the first message arrived (zero if none).
func (s *sink) firstArrival() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first
}

// waitCount blocks until at least n messages arrived or the deadline passes,
// and reports whether n was reached.
func (s *sink) waitCount(n int, deadline time.Time) bool {
	for {
		s.mu.Lock()
		got, ch := s.count, s.arrived
		s.mu.Unlock()
		if got >= n {
			return true
		}
		d := time.Until(deadline)
		if d <= 0 {
			return false
		}
		t := time.NewTimer(d)
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

// tally compares what the load generator saw accepted with what arrived:
// lost counts accepted sequence numbers that never arrived, dups the extra
// arrivals of a sequence number (allowed by DESIGN §1 only around crashes).
func (s *sink) tally(accepted []bool) (lost, dups int) {
	if s.countOnly {
		return s.tallyCount(accepted)
	}
	if s.proc != nil {
		if err := s.readDump(); err != nil {
			// Nothing can be confirmed: every accepted message counts as lost.
			s.mu.Lock()
			s.seen = map[int]int{}
			s.mu.Unlock()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for seq, ok := range accepted {
		if n := s.seen[seq]; ok && n == 0 {
			lost++
		} else if n > 1 {
			dups += n - 1
		}
	}
	return lost, dups
}

// rcptFor is the recipient that carries a message's sequence number.
func rcptFor(seq int) string { return "n" + strconv.Itoa(seq) + "@sink.test" }

// parseSeq is the inverse of rcptFor.
func parseSeq(rcpt string) (int, bool) {
	local, domain, ok := strings.Cut(rcpt, "@")
	if !ok || !strings.EqualFold(domain, "sink.test") || len(local) < 2 || local[0] != 'n' {
		return 0, false
	}
	n, err := strconv.Atoi(local[1:])
	if err != nil || n < 0 || strconv.Itoa(n) != local[1:] {
		return 0, false
	}
	return n, true
}

type sinkSession struct {
	s     *sink
	rcpts []string
}

func (ss *sinkSession) Reset()        { ss.rcpts = ss.rcpts[:0] }
func (ss *sinkSession) Logout() error { return nil }
func (ss *sinkSession) Mail(string, *smtp.MailOptions) error {
	ss.rcpts = ss.rcpts[:0]
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return err
	}
	ss.s.record(ss.rcpts, n)
	return nil
}

// discardLogger silences go-smtp's per-connection error log (resets at
// SIGTERM are expected and would clutter the table).
type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}
