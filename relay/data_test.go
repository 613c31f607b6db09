package relay

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-sasl"
)

func (tr *testRelay) verify(t *testing.T, data []byte) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(data), &dkim.VerifyOptions{
		LookupTXT: func(domain string) ([]string, error) {
			if v, ok := tr.txt[domain]; ok {
				return []string{v}, nil
			}
			return nil, fmt.Errorf("no TXT for %s", domain)
		},
	})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return vs
}

// TestSignedAndDelivered: STARTTLS + PLAIN on one listener, implicit TLS +
// LOGIN on the other; the upstream receives each message once, with a
// Received: header and an RSA and an Ed25519 signature that both verify.
func TestSignedAndDelivered(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	c := tr.dial(t, "submission", "alice")
	if _, err := send(c, "a@example.com", []string{"r@example.org"}, msg("a@example.com", "r@example.org", "plain", "one")); err != nil {
		t.Fatal(err)
	}
	c2 := tr.dial(t, "submissions", "")
	if err := c2.Auth(sasl.NewLoginClient("alice", testPassword)); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	if _, err := send(c2, "a@example.com", []string{"r@example.org"}, msg("a@example.com", "r@example.org", "login", "two")); err != nil {
		t.Fatal(err)
	}
	msgs := tr.up.WaitMessages(t, 2, 10*time.Second)
	for _, m := range msgs {
		if !bytes.Contains(m.Data, []byte("\r\nReceived: from ")) && !bytes.HasPrefix(bytes.SplitN(m.Data, []byte("Received:"), 2)[0], []byte("DKIM-Signature")) {
			t.Errorf("no Received: header:\n%s", m.Data)
		}
		vs := tr.verify(t, m.Data)
		algos := map[string]bool{}
		for _, v := range vs {
			if v.Err != nil {
				t.Errorf("signature %s failed: %v", v.Domain, v.Err)
			}
		}
		for _, line := range strings.Split(string(m.Data), "\r\n") {
			if strings.HasPrefix(line, "DKIM-Signature:") {
				for _, a := range []string{"rsa-sha256", "ed25519-sha256"} {
					if strings.Contains(line, "a="+a) {
						algos[a] = true
					}
				}
			}
		}
		if len(vs) != 2 || !algos["rsa-sha256"] || !algos["ed25519-sha256"] {
			t.Errorf("want an RSA and an Ed25519 signature, got %d (%v)", len(vs), algos)
		}
	}
}

// TestBareLFNormalised: a legacy sender's LF-only lines arrive as CRLF and
// the signature still verifies; missing Date/Message-ID are added.
func TestBareLFNormalised(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	r := rawDial(t, tr.addr("submission"), nil)
	r.startTLSAuth(tr.tlsConfig(), "alice", testPassword)
	for _, l := range []string{"MAIL FROM:<printer@example.com>", "RCPT TO:<r@example.org>"} {
		if got := r.cmd(l); !strings.HasPrefix(got, "250") {
			t.Fatalf("%s: %s", l, got)
		}
	}
	if got := r.cmd("DATA"); !strings.HasPrefix(got, "354") {
		t.Fatal(got)
	}
	r.write("From: printer@example.com\nTo: r@example.org\nSubject: scan\n\nline one\nline two\r\n.\r\n")
	if got := r.reply(); !strings.HasPrefix(got, "250 2.0.0 OK queued as ") {
		t.Fatalf("end of data: %s", got)
	}
	m := tr.up.WaitMessages(t, 1, 10*time.Second)[0]
	if bytes.Contains(bytes.ReplaceAll(m.Data, []byte("\r\n"), nil), []byte("\n")) {
		t.Errorf("bare LF reached the upstream:\n%q", m.Data)
	}
	for _, h := range []string{"\r\nDate: ", "\r\nMessage-ID: <", "line one\r\nline two\r\n"} {
		if !bytes.Contains(m.Data, []byte(h)) {
			t.Errorf("upstream message lacks %q:\n%s", h, m.Data)
		}
	}
	for _, v := range tr.verify(t, m.Data) {
		if v.Err != nil {
			t.Errorf("signature: %v", v.Err)
		}
	}
}

// TestSmuggling sends, in one write, a transaction whose body holds each
// end-of-data look-alike followed by a second transaction. Exactly one
// message may reach the upstream, and it must hold the "smuggled" text as
// content; sequences with a bare CR are refused outright.
func TestSmuggling(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	seqs := []struct {
		seq     string
		refused bool
	}{
		{"\n.\n", false},
		{"\n.\r\n", false},
		{"\r\n.\n", false},
		{"\r.\r", true},
		{"\r.\r\n", true},
		{"\r\n.\r", true}, // a bare CR after a leading dot (go-smtp used to drop it)
		{"\n.\r", true},
		{"\r\n.\x00\r\n", true},
	}
	for i, s := range seqs {
		r := rawDial(t, tr.addr("submission"), nil)
		r.startTLSAuth(tr.tlsConfig(), "alice", testPassword)
		subject := fmt.Sprintf("smuggle-%d", i)
		r.write("MAIL FROM:<a@example.com>\r\nRCPT TO:<r@example.org>\r\nDATA\r\n" +
			"From: a@example.com\r\nSubject: " + subject + "\r\n\r\nlegit body" + s.seq +
			"MAIL FROM:<admin@example.com>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nFrom: admin@example.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")
		var replies []string
		for j := 0; j < 4; j++ {
			replies = append(replies, r.reply())
		}
		last := replies[3]
		if s.refused && !strings.HasPrefix(last, "554 5.6.0") {
			t.Errorf("%q: end of data got %q, want 554 5.6.0", s.seq, last)
		}
		if !s.refused && !strings.HasPrefix(last, "250 ") {
			t.Errorf("%q: end of data got %q, want 250", s.seq, last)
		}
		// Exactly the NOOP's reply: a smuggled transaction would have put
		// its own replies (and a queue ID) first.
		if got := r.cmd("NOOP"); got != "250 2.0.0 I have successfully done nothing" {
			t.Errorf("%q: after the message: %q (a smuggled command was executed?)", s.seq, got)
		}
	}
	want := 0
	for _, s := range seqs {
		if !s.refused {
			want++
		}
	}
	// Every message the relay queued was answered in a transcript above,
	// so once these arrived nothing more can.
	tr.up.WaitMessages(t, want, 10*time.Second)
	msgs := tr.up.Messages()
	if len(msgs) != want {
		t.Fatalf("upstream got %d messages, want %d", len(msgs), want)
	}
	for _, m := range msgs {
		if m.From != "a@example.com" || len(m.To) != 1 || m.To[0] != "r@example.org" {
			t.Errorf("a smuggled envelope reached the upstream: from %s to %v", m.From, m.To)
		}
		if !bytes.Contains(m.Data, []byte("smuggled")) {
			t.Errorf("smuggled text is not content of the one message:\n%q", m.Data)
		}
	}
}

// TestAuthFailuresSlowThenRefuse: 10 wrong passwords from one address are
// answered 535 (later ones delayed), then that address gets 421 4.7.0 even
// with the right password, at AUTH and at connect.
func TestAuthFailuresSlowThenRefuse(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	open := tr.dial(t, "submissions", "") // a session opened before the failures
	var delays []time.Duration
	for i := 0; i < 10; i++ {
		// A new connection each time, as a password-guessing client does
		// (go-smtp's client also sends "*" after a failure, which go-smtp's
		// server counts as a syntax error).
		c := tr.dial(t, "submissions", "")
		start := time.Now()
		err := c.Auth(sasl.NewPlainClient("", "alice", "wrong"))
		delays = append(delays, time.Since(start))
		if got := codeOf(err); got != "535 5.7.8" {
			t.Fatalf("attempt %d: %s, want 535 5.7.8", i+1, got)
		}
	}
	if delays[9] < delays[2]+500*time.Millisecond {
		t.Errorf("failures are not slowed: first %v, tenth %v", delays[2], delays[9])
	}
	err := open.Auth(sasl.NewPlainClient("", "alice", testPassword))
	if got := codeOf(err); got != "421 4.7.0" {
		t.Errorf("right password after 10 failures: %s, want 421 4.7.0", got)
	}
	r := rawDial(t, tr.addr("submission"), nil)
	if got := r.reply(); !strings.HasPrefix(got, "421 4.7.0") {
		t.Errorf("greeting to a blocked address: %q, want 421 4.7.0", got)
	}
}

// TestBDATResetRace: with CHUNKING, go-smtp runs Session.Data in its
// own goroutine; an RSET (or a new MAIL) between chunks calls Session.Reset
// on the connection goroutine while Data is still running. Data works on
// its own copy of the transaction (the race detector watches this test).
func TestBDATResetRace(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	for i := 0; i < 5; i++ {
		r := rawDial(t, tr.addr("submission"), nil)
		r.startTLSAuth(tr.tlsConfig(), "alice", testPassword)
		if got := r.cmd("MAIL FROM:<a@example.com>"); !strings.HasPrefix(got, "250") {
			t.Fatalf("MAIL: %s", got)
		}
		if got := r.cmd("RCPT TO:<r@example.org>"); !strings.HasPrefix(got, "250") {
			t.Fatalf("RCPT: %s", got)
		}
		// One chunk with the whole header and part of the body, not LAST:
		// Data parses the header and reads s.from/s.rcpts, then waits.
		chunk := "From: <a@example.com>\r\nTo: <r@example.org>\r\nSubject: bdat\r\n\r\npart one\r\n"
		r.write(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk))
		if got := r.reply(); !strings.HasPrefix(got, "250") {
			t.Fatalf("BDAT: %s", got)
		}
		// Each reply is checked: the Reset while Data waits must leave the
		// session usable, not wedged or answering out of turn.
		for _, step := range []struct{ cmd, want string }{
			{"RSET", "250 2.0.0"},
			{"MAIL FROM:<a@example.com>", "250 2.0.0"},
			{"RCPT TO:<x@example.org>", "250 2.0.0"},
			{"QUIT", "221 2.0.0"},
		} {
			if got := r.cmd(step.cmd); !strings.HasPrefix(got, step.want) {
				t.Fatalf("%s after an unfinished BDAT: %q, want %s", step.cmd, got, step.want)
			}
		}
	}
}
