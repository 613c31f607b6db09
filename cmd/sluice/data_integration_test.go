package main

// DATA through the real binary, as raw transcripts: header limits and
// checks, long lines, line endings, Bcc, BDAT and EHLO edge cases (issue 8;
// DESIGN §1 "Line endings", §4, §8.7).

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

const dataYAML = `{{HOST}}
state_dir: {{DIR}}/state
listeners:
  - name: plain
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.0/8]
  - name: keepbcc
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.0/8]
    policy: keepbcc
  - name: team
    address: 127.0.0.1:0
    tls: none
    auth: none
    trusted_networks: [127.0.0.0/8]
    policy: team
policies:
  default:
    allowed_senders: ["*@example.com"]
  keepbcc:
    allowed_senders: ["*@example.com"]
    keep_bcc: true
  team:
    allowed_senders: ["*@example.com"]
    allowed_recipients: ["*@team.example.com"]
  routing:
    allow_percent_hack: true
queue:
  retry: [300ms]
upstreams:
  - name: up1
    host: 127.0.0.1
    ports: [{{UP}}]
    tls: none
`

// dataCfg is dataYAML in front of the sink.
func dataCfg(s *setup) { configWith(dataYAMLTo)(s) }

// dataYAMLTo is dataYAML with the upstream on port.
func dataYAMLTo(port int) string { return strings.ReplaceAll(dataYAML, "{{UP}}", strconv.Itoa(port)) }

// dataRelay launches a daemon on dataYAML and opens a raw session to its
// plain listener (greeted, EHLO said).
func dataRelay(t *testing.T) (*testDaemon, *rawClient) {
	t.Helper()
	d := launch(t, dataCfg)
	return d, rawDial(t, d.addrs["plain"], nil)
}

// dataWant sends body as one message and wants a reply starting with want;
// what names the case in the failure.
func (s *rawClient) dataWant(body, want, what string) {
	s.t.Helper()
	if got := s.data(body); !strings.HasPrefix(got, want) {
		s.t.Errorf("%s: %q, want %s", what, got, want)
	}
}

// data runs MAIL, RCPT and DATA with body (which must end in CRLF) and
// returns the reply to the end of data.
func (s *rawClient) data(body string) string {
	s.t.Helper()
	s.cmd("MAIL FROM:<app@example.com>", "250")
	s.cmd("RCPT TO:<r@example.org>", "250")
	s.cmd("DATA", "354")
	s.write(body + ".\r\n")
	return s.reply()
}

// bySubject finds the upstream message whose Subject: is subject.
func bySubject(t *testing.T, up *testsmtp.Server, subject string) []byte {
	t.Helper()
	var found []byte
	waitFor(t, 20*time.Second, "message "+subject, func() bool {
		for _, m := range up.Messages() {
			if bytes.Contains(m.Data, []byte("\r\nSubject: "+subject+"\r\n")) {
				found = m.Data
				return true
			}
		}
		return false
	})
	return found
}

func TestDataHeaderLimits(t *testing.T) {
	t.Parallel()
	d, s := dataRelay(t)

	// One field folded over 10,000 lines (60 KB) is fine, and quick.
	t0 := time.Now()
	if got := s.data("From: app@example.com\r\nSubject: folded\r\nX-Folded: a" + strings.Repeat("\r\n (c)", 10000) + "\r\n\r\nbody\r\n"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("10,000-line folded field: %q, want 250", got)
	}
	if took := time.Since(t0); took > 5*time.Second {
		t.Errorf("10,000-line folded field took %v", took)
	}
	// Over 100 KiB in one field, or 1 MiB in all: a clear refusal.
	if got := s.data("From: app@example.com\r\nX-Folded: a" + strings.Repeat("\r\n (c)", 85000) + "\r\n\r\nbody\r\n"); got != "552 5.3.4 Header section too large (at most 100 KiB a field, 1 MiB in all)" {
		t.Errorf("85,000-line folded field: %q, want 552 5.3.4 header section too large", got)
	}
	s.dataWant("From: app@example.com\r\n"+strings.Repeat("X-Many: "+strings.Repeat("v", 90)+"\r\n", 12000)+"\r\nbody\r\n", "552 5.3.4 Header section too large", "1.2 MB of header fields")
	s.inStep()
	bySubject(t, d.up, "folded")
}

func TestDataHeaderChecks(t *testing.T) {
	t.Parallel()
	d, s := dataRelay(t)
	for _, c := range []struct{ body, want, what string }{
		// A line without a colon does not end the header section early:
		// the From: after it would escape the check.
		{"Subject: nocolon\r\nX-Junk\r\nFrom: ceo@evil.test\r\n\r\nbody\r\n", "554 5.6.0", "a header line without a colon before From"},
		// "From : x" (obsolete syntax) is a From field and is checked.
		{"Subject: spaced\r\nFrom : ceo@evil.test\r\n\r\nbody\r\n", "550 5.7.1", "From : ceo@evil.test"},
		// Resent-From is checked like From.
		{"From: app@example.com\r\nResent-From: ceo@evil.test\r\nSubject: resent\r\n\r\nbody\r\n", "550 5.7.1", "Resent-From: ceo@evil.test"},
		// A client that sends no blank line still gets its body delivered.
		{"From: app@example.com\r\nSubject: noblank\r\nHello there\r\nsecond line\r\n", "250 2.0.0", "no blank line"},
	} {
		s.dataWant(c.body, c.want, c.what)
	}
	m := bySubject(t, d.up, "noblank")
	if !bytes.Contains(m, []byte("\r\n\r\nHello there\r\nsecond line\r\n")) {
		t.Errorf("no blank line: body not delivered as body:\n%s", m)
	}
	// Bcc: and Resent-Bcc: are removed before signing, unless kept.
	bcc := "From: app@example.com\r\nTo: r@example.org\r\nBcc: secret@example.org\r\nResent-Bcc: other@example.org\r\nSubject: %s\r\n\r\nbody\r\n"
	if got := s.data(strings.Replace(bcc, "%s", "bcc-dropped", 1)); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("bcc: %q", got)
	}
	if m := bySubject(t, d.up, "bcc-dropped"); bytes.Contains(m, []byte("secret@")) || bytes.Contains(m, []byte("other@")) {
		t.Errorf("Bcc relayed:\n%s", m)
	}
	k := rawDial(t, d.addrs["keepbcc"], nil)
	if got := k.data(strings.Replace(bcc, "%s", "bcc-kept", 1)); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("keep_bcc: %q", got)
	}
	if m := bySubject(t, d.up, "bcc-kept"); !bytes.Contains(m, []byte("\r\nBcc: secret@example.org\r\n")) || !bytes.Contains(m, []byte("\r\nResent-Bcc: other@example.org\r\n")) {
		t.Errorf("keep_bcc: true removed Bcc:\n%s", m)
	}
}

func TestDataLongLines(t *testing.T) {
	t.Parallel()
	d, s := dataRelay(t)
	long := strings.Repeat("0123456789", 250) // 2,500 bytes
	// Body lines over 998 bytes are folded, never answered 4xx or cut off;
	// nothing is sent after the reply.
	if got := s.data("From: app@example.com\r\nSubject: longbody\r\n\r\n" + long + "\r\nshort\r\n"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("2,500-byte body line: %q, want 250", got)
	}
	s.inStep()
	m := bySubject(t, d.up, "longbody")
	for _, l := range bytes.Split(m, []byte("\r\n")) {
		if len(l) > 998 {
			t.Errorf("a %d-byte line reached the upstream", len(l))
		}
	}
	if !bytes.Contains(bytes.ReplaceAll(m, []byte("\r\n"), nil), []byte(long+"short")) {
		t.Errorf("long line not delivered whole (folded):\n%.300s", m)
	}
	// A long header line is folded at a space; one with no space is refused.
	words := strings.Repeat("word ", 300)
	if got := s.data("From: app@example.com\r\nSubject: longheader\r\nX-Words: " + words + "\r\n\r\nbody\r\n"); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("1,500-byte header line with spaces: %q, want 250", got)
	}
	m = bySubject(t, d.up, "longheader")
	if !bytes.Contains(bytes.ReplaceAll(m, []byte("\r\n"), nil), []byte("X-Words: "+words)) {
		t.Errorf("long header line not folded at spaces:\n%.300s", m)
	}
	s.dataWant("From: app@example.com\r\nX-Token: "+long+"\r\n\r\nbody\r\n", "554 5.6.0", "2,500-byte header line without a space")
	s.inStep()
}

func TestDataLineEndings(t *testing.T) {
	t.Parallel()
	_, s := dataRelay(t)
	// A bare CR right after a leading dot is a bare CR.
	s.dataWant("From: app@example.com\r\nSubject: dotcr\r\n\r\nline1\r\n.\rX\r\n", "554 5.6.0", "bare CR after a leading dot")
	s.inStep()
	// A BDAT refused for a bad argument still consumes its chunk.
	s.cmd("MAIL FROM:<app@example.com>", "250")
	s.cmd("RCPT TO:<r@example.org>", "250")
	s.write("BDAT 10 NOTLAST\r\nNOOP\r\nNOOP")
	if got := s.reply(); !strings.HasPrefix(got, "501 5.5.4") {
		t.Errorf("BDAT 10 NOTLAST: %q, want 501 5.5.4", got)
	}
	s.inStep() // the chunk's NOOPs were not run as commands
	s.write("BDAT 3 LAST TOO\r\nabc")
	if got := s.reply(); !strings.HasPrefix(got, "501 5.5.4") {
		t.Errorf("BDAT with three arguments: %q, want 501 5.5.4", got)
	}
	s.inStep()
}

func TestDataLongEHLO(t *testing.T) {
	t.Parallel()
	d := launch(t, dataCfg)
	s := dialRaw(t, d.addrs["plain"], nil, "")
	s.reply()
	s.cmd("EHLO "+strings.Repeat("h", 1500)+".test", "501 5.5.2")
	s.cmd("EHLO client.test", "250")
	s.inStep()
}

// rcptSink is an upstream that records the RCPT TO lines exactly as sent
// (a go-smtp server would unquote them) and accepts everything.
type rcptSink struct {
	ln    net.Listener
	mu    sync.Mutex
	rcpts []string
	msgs  int
}

func startRcptSink(t *testing.T) *rcptSink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &rcptSink{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go k.serve(c)
		}
	}()
	return k
}

func (k *rcptSink) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	io.WriteString(c, "220 sink\r\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.ToUpper(line[:min(4, len(line))])
		switch cmd {
		case "EHLO", "HELO":
			io.WriteString(c, "250 sink\r\n")
		case "RCPT":
			k.mu.Lock()
			k.rcpts = append(k.rcpts, strings.TrimRight(line, "\r\n"))
			k.mu.Unlock()
			io.WriteString(c, "250 ok\r\n")
		case "DATA":
			io.WriteString(c, "354 go\r\n")
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			k.mu.Lock()
			k.msgs++
			k.mu.Unlock()
			io.WriteString(c, "250 ok\r\n")
		case "QUIT":
			io.WriteString(c, "221 bye\r\n")
			return
		default:
			io.WriteString(c, "250 ok\r\n")
		}
	}
}

// TestAddressForms: the upstream gets exactly the address policy checked,
// quoted again where go-smtp unquoted it; % and ! local parts are refused;
// <Postmaster> is accepted and goes to postmaster@hostname.
func TestAddressForms(t *testing.T) {
	t.Parallel()
	sink := startRcptSink(t)
	e := newEnv(t)
	p := start(t, 3, "serve", "-c", e.config(dataYAMLTo(sink.ln.Addr().(*net.TCPAddr).Port)))
	s := rawDial(t, p.addrs["team"], nil)
	s.cmd("MAIL FROM:<app@example.com>", "250")
	s.cmd(`RCPT TO:<"victim@evil.test"@team.example.com>`, "250")
	s.cmd(`RCPT TO:<"a\\b"@team.example.com>`, "250")
	s.cmd("RCPT TO:<victim%evil.test@team.example.com>", "553 5.1.3")
	s.cmd("RCPT TO:<evil.test!victim@team.example.com>", "553 5.1.3")
	s.cmd("RCPT TO:<Postmaster>", "250")
	s.cmd("RCPT TO:<victim@evil.test>", "550 5.7.1")
	s.cmd("DATA", "354")
	s.write("From: app@example.com\r\nSubject: forms\r\n\r\nbody\r\n.\r\n")
	if got := s.reply(); !strings.HasPrefix(got, "250 2.0.0") {
		t.Fatalf("end of data: %q", got)
	}
	waitFor(t, 20*time.Second, "the message upstream", func() bool { sink.mu.Lock(); defer sink.mu.Unlock(); return sink.msgs == 1 })
	sink.mu.Lock()
	defer sink.mu.Unlock()
	want := []string{`RCPT TO:<"victim@evil.test"@team.example.com>`, `RCPT TO:<"a\\b"@team.example.com>`, "RCPT TO:<postmaster@relay.test>"}
	if strings.Join(sink.rcpts, "\n") != strings.Join(want, "\n") {
		t.Errorf("upstream got\n%s\nwant\n%s", strings.Join(sink.rcpts, "\n"), strings.Join(want, "\n"))
	}
}
