package main

// A line-level SMTP client for transcripts a client library would hide:
// exact reply lines, what is offered in EHLO, replies nobody asked for.

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// rawDial connects from local (nil: any), expects a 220 greeting and says EHLO.
func rawDial(t *testing.T, addr string, local net.IP) *rawClient {
	t.Helper()
	s := dialRaw(t, addr, local, "")
	if g := s.reply(); !strings.HasPrefix(g, "220 ") {
		t.Fatalf("greeting %q, want 220", g)
	}
	s.cmd("EHLO client.test", "250")
	return s
}

// ehlo says EHLO and returns every line of the reply.
func (s *rawClient) ehlo() []string {
	s.t.Helper()
	io.WriteString(s.c, "EHLO client.test\r\n")
	var lines []string
	s.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			s.t.Fatalf("reading EHLO reply: %v", err)
		}
		lines = append(lines, strings.TrimRight(line, "\r\n"))
		if len(line) < 4 || line[3] != '-' {
			return lines
		}
	}
}

// starttls upgrades the connection and says EHLO again.
func (s *rawClient) starttls(cfg *tls.Config) {
	s.t.Helper()
	s.cmd("STARTTLS", "220")
	tc := tls.Client(s.c, cfg)
	if err := tc.Handshake(); err != nil {
		s.t.Fatalf("TLS handshake: %v", err)
	}
	s.c, s.r = tc, bufio.NewReader(tc)
	s.cmd("EHLO client.test", "250")
}

// plainAuth is the base64 AUTH PLAIN initial response for user and pw.
func plainAuth(user, pw string) string {
	return base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pw))
}

// write sends raw bytes.
func (s *rawClient) write(b string) {
	s.t.Helper()
	if _, err := io.WriteString(s.c, b); err != nil {
		s.t.Fatalf("write: %v", err)
	}
}

// inStep asserts that the server sent nothing unasked since the last reply
// read: the next reply must be the one to a NOOP sent now (an unsolicited
// reply would come first, a closed connection gives none).
func (s *rawClient) inStep() {
	s.t.Helper()
	s.cmd("NOOP", "250 2.0.0")
}
