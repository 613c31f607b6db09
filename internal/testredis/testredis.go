// Package testredis starts a real redis-server on loopback for tests of
// shared rate limits. Without redis-server a test is skipped, except in CI
// (the CI variable set), where .ci/run installs it and the test must run.
package testredis

import (
	"bufio"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Server is one redis-server without persistence; Stop (also run at
// cleanup) kills it and waits until it has exited.
type Server struct {
	Addr string // 127.0.0.1:PORT
	URL  string // redis://127.0.0.1:PORT/0
	cmd  *exec.Cmd
	done chan struct{}
}

// Start runs redis-server on a free port and waits until it answers PING.
func Start(t testing.TB) *Server {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "" {
			t.Skip("redis-server not installed; CI installs it")
		}
		t.Fatalf("redis-server is required in CI: %v", err)
	}
	// redis-server cannot be handed a listener: take a free port and
	// release it just before redis binds it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()
	s := &Server{Addr: "127.0.0.1:" + port, URL: "redis://127.0.0.1:" + port + "/0", done: make(chan struct{})}
	s.cmd = exec.Command(path, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning")
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	t.Cleanup(s.Stop)
	deadline := time.Now().Add(10 * time.Second)
	for !s.ping() {
		select {
		case <-s.done:
			t.Fatalf("redis-server on %s exited at start", s.Addr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s does not answer PING", s.Addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return s
}

func (s *Server) ping() bool {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	io.WriteString(c, "PING\r\n")
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.HasPrefix(line, "+PONG")
}

// Stop kills redis-server (as when Redis goes down mid-test) and waits.
func (s *Server) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Kill()
	<-s.done
}
