package upstream

import (
	"bufio"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
)

// pipeServer is a scripted upstream that offers PIPELINING and answers
// nothing of a transaction until DATA has arrived: a client that waits for
// MAIL's reply before sending RCPT never gets one (the read times out). It
// answers the commands in order from replies (MAIL, each RCPT, DATA), then
// reads the body to the dot, answers it, and repeats per transaction.
// It reports each transaction's commands on got.
func pipeServer(t *testing.T, replies []string, got chan<- []string) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		r := bufio.NewReader(c)
		c.Write([]byte("220 pipe.test ESMTP\r\n"))
		if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "EHLO") {
			return
		}
		c.Write([]byte("250-pipe.test\r\n250-PIPELINING\r\n250 SIZE 100000\r\n"))
		for {
			var cmds []string
			for {
				// Nothing is answered until DATA: a short deadline proves it
				// came in the same write as MAIL and RCPT.
				c.SetReadDeadline(time.Now().Add(time.Second))
				l, err := r.ReadString('\n')
				if err != nil {
					got <- append(cmds, "read: "+err.Error())
					return
				}
				l = strings.TrimRight(l, "\r\n")
				if strings.HasPrefix(l, "EHLO") { // again after RSET (go-smtp's client)
					c.Write([]byte("250-pipe.test\r\n250-PIPELINING\r\n250 SIZE 100000\r\n"))
					continue
				}
				if l == "QUIT" || l == "RSET" {
					c.Write([]byte("250 2.0.0 bye\r\n"))
					if l == "QUIT" {
						return
					}
					continue
				}
				cmds = append(cmds, l)
				if l == "DATA" {
					break
				}
			}
			c.Write([]byte(strings.Join(replies, "\r\n") + "\r\n"))
			if !strings.HasPrefix(replies[len(replies)-1], "354") {
				got <- cmds
				continue
			}
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					got <- append(cmds, "read body: "+err.Error())
					return
				}
				if l == ".\r\n" {
					break
				}
			}
			c.Write([]byte("250 2.0.0 queued\r\n"))
			got <- cmds
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

func pipeUpstream(port int) config.Upstream {
	return config.Upstream{Name: "pipe", Host: "127.0.0.1", Ports: []int{port}, TLS: config.TLSNone,
		Priority: 10, Timeout: 2 * time.Second, ConnectTimeout: 2 * time.Second}
}

// TestPipelinedTransaction: with PIPELINING offered, MAIL, every RCPT and
// DATA go in one write; the replies are matched to them in order, so one
// refused recipient fails alone and the others are delivered.
func TestPipelinedTransaction(t *testing.T) {
	t.Parallel()
	got := make(chan []string, 4)
	port := pipeServer(t, []string{"250 2.1.0 ok", "250 2.1.5 ok", "550 5.1.1 no such user", "250 2.1.5 ok", "354 go ahead"}, got)
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{pipeUpstream(port)}})
	m := msg("p1", body, "a@example.org", "b@example.org", "c@example.org")
	r := d.Deliver(context.Background(), m)
	cmds := <-got
	want := []string{"MAIL FROM:<sender@example.com> BODY=8BITMIME SIZE=" + itoa(len(body)), "RCPT TO:<a@example.org>", "RCPT TO:<b@example.org>", "RCPT TO:<c@example.org>", "DATA"}
	if strings.Join(cmds, "|") != strings.Join(want, "|") && strings.Join(cmds, "|") != strings.Join(append([]string{strings.Replace(want[0], " BODY=8BITMIME", "", 1)}, want[1:]...), "|") {
		t.Fatalf("server saw %q before answering, want %q", cmds, want)
	}
	var e *Error
	if r.Errs[0] != nil || r.Errs[2] != nil || !errors.As(r.Errs[1], &e) || e.Code != 550 || e.Stage != StageRcpt || e.Temporary() {
		t.Fatalf("results %v; want only b@ refused with 550 at RCPT", r.Errs)
	}
}

// TestPipelinedEveryRecipientRefused: every RCPT refused, DATA refused
// (503): no body is sent, each recipient gets its reply, and the connection
// stays usable for the next message.
func TestPipelinedEveryRecipientRefused(t *testing.T) {
	t.Parallel()
	got := make(chan []string, 4)
	port := pipeServer(t, []string{"250 2.1.0 ok", "450 4.2.1 try later", "503 5.5.1 no valid recipients"}, got)
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{pipeUpstream(port)}})
	r := d.Deliver(context.Background(), msg("p2", body))
	if cmds := <-got; len(cmds) != 3 || cmds[2] != "DATA" {
		t.Fatalf("server saw %q", cmds)
	}
	var e *Error
	if !errors.As(r.Errs[0], &e) || e.Code != 450 || e.Stage != StageRcpt || !e.Temporary() {
		t.Fatalf("result %v; want the RCPT's 450", r.Errs[0])
	}
	// The same connection carries the next transaction.
	d.Deliver(context.Background(), msg("p3", body))
	if cmds := <-got; len(cmds) != 3 || !strings.HasPrefix(cmds[0], "MAIL FROM:") {
		t.Fatalf("second transaction: server saw %q", cmds)
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
