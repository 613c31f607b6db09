package main

// AUTH through the real binary: where it is offered, what it answers, and
// how failures are limited (DESIGN §4, §7 "Auth failures", §8.7).

import (
	"bufio"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
)

// authTrusted is a STARTTLS listener for the trusted network, no AUTH needed.
const authTrusted = `  - name: trusted
    address: 127.0.0.1:0
    tls: starttls
    auth: none
    trusted_networks: [127.0.0.0/8]
    policy: legacy
`

// guessAuth connects from local, says STARTTLS and EHLO, and tries up to
// tries wrong passwords on the one connection; it returns the reply codes
// ("421 4.7.0" at connect included) and stops at the first that is not 535.
func guessAuth(addr string, cfg *tls.Config, local net.IP, tries int) []string {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: local}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		return []string{err.Error()}
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	r := bufio.NewReader(conn)
	read := func() string {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "read: " + err.Error()
			}
			if len(line) < 4 || line[3] != '-' {
				return strings.TrimRight(line, "\r\n")
			}
		}
	}
	if g := read(); !strings.HasPrefix(g, "220") {
		return []string{g[:min(len(g), 9)]}
	}
	io.WriteString(conn, "EHLO guess.test\r\nSTARTTLS\r\n")
	read()
	if g := read(); !strings.HasPrefix(g, "220") {
		return []string{g}
	}
	tc := tls.Client(conn, cfg)
	r = bufio.NewReader(tc)
	conn = tc
	io.WriteString(tc, "EHLO guess.test\r\n")
	read()
	var codes []string
	for range tries {
		io.WriteString(tc, "AUTH PLAIN "+plainAuth("app", "wrong password")+"\r\n")
		g := read()
		codes = append(codes, g[:min(len(g), 9)])
		if !strings.HasPrefix(g, "535") {
			break
		}
	}
	return codes
}

// TestAuthParallelBruteForce: 40 connections from one IP, three wrong
// passwords each, all at once: at most 10 passwords are checked (each
// attempt holds a failure slot before its check), the rest get 421 4.7.0.
func TestAuthParallelBruteForce(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg("", ""))
	local := net.IPv4(127, 0, 8, 3)
	var wg sync.WaitGroup
	var mu sync.Mutex
	replies := map[string]int{}
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes := guessAuth(d.addrs["submission"], d.tlsConfig(), local, 3)
			mu.Lock()
			defer mu.Unlock()
			for _, c := range codes {
				replies[c]++
			}
		}()
	}
	wg.Wait()
	checked := strings.Count(d.stderr.String(), "msg=auth_failed")
	if checked != 10 || replies["535 5.7.8"] != 10 || replies["421 4.7.0"] != 40 {
		t.Errorf("40 connections × 3 guesses: %d passwords checked, replies %v; want exactly 10 checked and answered 535 5.7.8, then 421 4.7.0 on every connection", checked, replies)
	}
	if g := greetingFrom(t, d.addrs["submission"], local); !strings.HasPrefix(g, "421 4.7.0") {
		t.Errorf("connect after the brute force: %q, want 421 4.7.0", g)
	}
}

// TestAuthBlockSparesTrustedListener: ten failed AUTHs block the IP on the
// AUTH listener (421 at connect) but not trusted-network relaying on
// another listener; AUTH there is refused with 421 too.
func TestAuthBlockSparesTrustedListener(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg(authTrusted, ""))
	local := net.IPv4(127, 0, 8, 4)
	var wg sync.WaitGroup
	for range 10 { // in parallel: the delays overlap
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := login(d.addrs["submission"], d.tlsConfig(), local, "app", "wrong"); replyCode(err) != "535 5.7.8" {
				t.Errorf("failure: %s, want 535 5.7.8", replyCode(err))
			}
		}()
	}
	wg.Wait()
	if g := greetingFrom(t, d.addrs["submission"], local); !strings.HasPrefix(g, "421 4.7.0") {
		t.Fatalf("AUTH listener after 10 failures: %q, want 421 4.7.0", g)
	}
	s := rawDial(t, d.addrs["trusted"], local)
	s.starttls(d.tlsConfig())
	s.send("after-block", "250 2.0.0 OK queued as")
	s.cmd("AUTH PLAIN "+plainAuth("app", password), "421 4.7.0")
	d.up.WaitMessages(t, 1, 20*time.Second)
}

// TestAuthInsideTransaction: AUTH after MAIL gets 503 5.5.1 (RFC 4954 §4)
// and changes nothing: the transaction goes on under the listener's policy.
func TestAuthInsideTransaction(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg(authTrusted, ""))
	s := rawDial(t, d.addrs["trusted"], nil)
	s.starttls(d.tlsConfig())
	s.cmd("MAIL FROM:<ceo@example.com>", "250")
	s.cmd("AUTH PLAIN "+plainAuth("app", password), "503 5.5.1")
	s.cmd("RSET", "250")
	s.cmd("AUTH PLAIN "+plainAuth("app", password), "235 2.0.0")
	s.cmd("MAIL FROM:<app@example.com>", "250")
	s.cmd("AUTH PLAIN "+plainAuth("app", password), "503 5.5.1")
}

// TestAuthCleartext: a tls: none listener neither offers nor accepts AUTH
// unless allow_insecure_auth is set, and then it is warned about at start.
func TestAuthCleartext(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg(legacyListener+`  - name: insecure
    address: 127.0.0.1:0
    tls: none
    auth: required
    allow_insecure_auth: true
`, ""))
	s := rawDial(t, d.addrs["legacy"], nil)
	for _, l := range s.ehlo() {
		if strings.Contains(l, "AUTH") {
			t.Errorf("tls: none, auth: none listener offers %q", l)
		}
	}
	s.cmd("AUTH PLAIN "+plainAuth("app", password), "502 5.5.1")

	s = rawDial(t, d.addrs["insecure"], nil)
	if ehlo := strings.Join(s.ehlo(), "\n"); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Errorf("allow_insecure_auth: EHLO %q does not offer AUTH", ehlo)
	}
	s.cmd("AUTH PLAIN "+plainAuth("app", password), "235 2.0.0")
	if !strings.Contains(d.stderr.String(), "listener takes passwords in cleartext") || !strings.Contains(d.stderr.String(), "listener=insecure") {
		t.Errorf("no start warning for the allow_insecure_auth listener:\n%s", d.stderr.String())
	}

	// Without allow_insecure_auth, auth: required on tls: none is a config error.
	cfg := polConfig(d.env, d.up.Port(), `  - name: plain
    address: 127.0.0.1:0
    tls: none
`, "")
	if _, stderr, code := runCmd(t, "", "check-config", "-c", cfg); code == 0 || !strings.Contains(stderr, "allow_insecure_auth: true") {
		t.Errorf("check-config of tls: none + auth: required: exit %d, %s; want an error naming allow_insecure_auth", code, stderr)
	}
}

// TestAuthSyntax: malformed AUTH data is a permanent syntax error, not a
// temporary 454: invalid base64 in the initial response or a continuation
// gets 501 5.5.2; STARTTLS with an argument gets 501.
func TestAuthSyntax(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg("", ""))
	s := rawDial(t, d.addrs["submission"], nil)
	s.cmd("STARTTLS foo", "501 5.5.4")
	s.starttls(d.tlsConfig())
	s.cmd("AUTH PLAIN !!!notbase64", "501 5.5.2")
	s.cmd("AUTH LOGIN", "334")
	s.cmd("@@@", "501 5.5.2")
	s.cmd("AUTH PLAIN "+plainAuth("app", password), "235 2.0.0")
}

// TestAuthUnknownUserTiming: an unknown name costs what the slowest
// configured hash costs (here an argon2id hash with t=4 beside default ones), so
// timing does not tell names apart.
func TestAuthUnknownUserTiming(t *testing.T) {
	t.Parallel()
	// An argon2id hash four times as costly as the default ones (t=4):
	// bcrypt is far slower under the race detector than outside it.
	salt := []byte("0123456789abcdef")
	key := argon2.IDKey([]byte(password), salt, 4, 19*1024, 1, 32)
	b64 := base64.RawStdEncoding
	slow := fmt.Sprintf("$argon2id$v=%d$m=%d,t=4,p=1$%s$%s", argon2.Version, 19*1024, b64.EncodeToString(salt), b64.EncodeToString(key))
	d := launch(t, polCfg("", ""), edited("users:\n", "users:\n  - name: slow\n    password_hash: \""+slow+"\"\n"))
	// Each attempt from its own address, so no failure delay applies.
	attempt := func(i int, user string) time.Duration {
		got, took := authAttempt(d.addrs["submission"], d.tlsConfig(), net.IPv4(127, 0, 8, byte(20+i)), user, "wrong password")
		if got != "535 5.7.8" {
			t.Fatalf("AUTH as %s: %s, want 535 5.7.8", user, got)
		}
		return took
	}
	// The fastest of three each, and up to three rounds: a busy machine
	// only ever adds time, so one round that shows the costs alike is
	// enough. Before the fix an unknown name cost a default argon2id check,
	// a quarter of the slow user's, in every round.
	ip := 0
	for round := 1; ; round++ {
		known, unknown := time.Hour, time.Hour
		for range 3 {
			known = min(known, attempt(ip, "slow"))
			unknown = min(unknown, attempt(ip+1, "nobody"))
			ip += 2
		}
		t.Logf("round %d, wrong password: argon2id t=4 user %v, unknown user %v", round, known, unknown)
		if unknown >= known*6/10 {
			return
		}
		if round == 3 {
			t.Errorf("unknown user answered in %v, an argon2id t=4 user in %v: timing tells them apart", unknown, known)
			return
		}
	}
}

// greetingFrom is what the server says first to a connection from local,
// up to its close (or 3 s).
func greetingFrom(t *testing.T, addr string, local net.IP) string {
	t.Helper()
	s, _ := dialRaw(t, addr, local, "").readToClose(3 * time.Second)
	return s
}
