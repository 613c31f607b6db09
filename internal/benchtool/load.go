package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// client knows how to open an authenticated session with sluice.
type client struct {
	addr, user, password string
	tls                  *tls.Config
}

// dial connects, upgrades with STARTTLS and authenticates with AUTH PLAIN,
// as a submission client does.
func (cl *client) dial() (*smtp.Client, error) {
	conn, err := net.DialTimeout("tcp", cl.addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c, err := smtp.NewClientStartTLS(conn, cl.tls)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("starttls: %w", err)
	}
	c.CommandTimeout = 30 * time.Second
	c.SubmissionTimeout = 30 * time.Second
	if err := c.Auth(sasl.NewPlainClient("", cl.user, cl.password)); err != nil {
		c.Close()
		return nil, fmt.Errorf("auth: %w", err)
	}
	return c, nil
}

// send submits one message and returns the accept latency: from the moment
// the body and final dot are flushed to the 250. go-smtp's client buffers a
// small body until Close, so Close covers exactly that span.
func send(c *smtp.Client, from, to string, body io.Reader) (time.Duration, error) {
	if err := c.Mail(from, nil); err != nil {
		return 0, fmt.Errorf("mail: %w", err)
	}
	if err := c.Rcpt(to, nil); err != nil {
		return 0, fmt.Errorf("rcpt: %w", err)
	}
	w, err := c.Data()
	if err != nil {
		return 0, fmt.Errorf("data: %w", err)
	}
	if _, err := io.Copy(w, body); err != nil {
		w.Close()
		return 0, fmt.Errorf("data: write: %w", err)
	}
	t0 := time.Now()
	if err := w.Close(); err != nil {
		return 0, fmt.Errorf("data: %w", err)
	}
	return time.Since(t0), nil
}

// message builds a message of size bytes (at least its headers and an
// empty body) whose header From: is in the signing domain, so every message
// is DKIM-signed, and whose recipient carries seq. The body is lines of 76
// characters, the last one shortened to hit size exactly.
func message(seq, size int, runID string) []byte {
	h := fmt.Sprintf("From: Bench <bench@%s>\r\nTo: <%s>\r\nSubject: sluice bench %d\r\n"+
		"Date: %s\r\nMessage-ID: <%d.%s@%s>\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: text/plain; charset=us-ascii\r\n\r\n",
		benchDomain, rcptFor(seq), seq, time.Now().Format(time.RFC1123Z), seq, runID, benchDomain)
	b := make([]byte, 0, max(size, len(h)))
	b = append(b, h...)
	for len(b)+len(bodyLine) <= size {
		b = append(b, bodyLine...)
	}
	if rest := size - len(b); rest >= 3 {
		b = append(b, bodyLine[:rest-2]...)
		b = append(b, '\r', '\n')
	}
	return b
}

const bodyLine = "The quick brown fox jumps over the lazy dog, and the relay signs it. 012345\r\n"

// bigBody streams a message of whole lines, about n bytes, without holding
// it: sluice must stream it too (DESIGN §5: < 16 MB growth).
type bigBody struct {
	head  []byte
	lines int64 // full lines left
	off   int   // position in the current line
}

func newBigBody(seq int, n int64, runID string) *bigBody {
	head := message(seq, 0, runID)
	return &bigBody{head: head, lines: max(n-int64(len(head)), 0) / int64(len(bodyLine))}
}

// size is the number of bytes the body will produce.
func (b *bigBody) size() int64 {
	return int64(len(b.head)) + b.lines*int64(len(bodyLine)) - int64(b.off)
}

func (b *bigBody) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if len(b.head) > 0 {
			k := copy(p, b.head)
			b.head, p, total = b.head[k:], p[k:], total+k
			continue
		}
		if b.lines == 0 {
			break
		}
		k := copy(p, bodyLine[b.off:])
		b.off += k
		if b.off == len(bodyLine) {
			b.off = 0
			b.lines--
		}
		p, total = p[k:], total+k
	}
	if total == 0 {
		return 0, io.EOF
	}
	return total, nil
}

// loadResult is what the clients observed.
type loadResult struct {
	accepted []bool // by seq: answered 250
	nAcc     int
	failed   int
	errs     map[string]int // failure text → count (first few kinds)
	lat      []time.Duration
	start    time.Time
	lastAcc  time.Time
	sessions int // connections opened
}

func (r *loadResult) addErr(err error) {
	r.failed++
	if r.errs == nil {
		r.errs = map[string]int{}
	}
	k := err.Error()
	if _, ok := r.errs[k]; ok || len(r.errs) < 5 {
		r.errs[k]++
	}
}

// runLoad drives conns concurrent clients until messages are sent or the
// deadline passes. With reconnect every message gets its own connection,
// STARTTLS and AUTH; otherwise each client logs in once and reuses the
// session (no RSET: go-smtp's client may MAIL again after a 250).
func runLoad(cl *client, conns, messages, size int, reconnect bool, deadline time.Time, runID string) *loadResult {
	res := &loadResult{accepted: make([]bool, messages), start: time.Now()}
	var next atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	from := "bench@" + benchDomain
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := &loadResult{}
			var acc []int
			var c *smtp.Client
			defer func() {
				if c != nil {
					_ = c.Quit()
					c.Close()
				}
			}()
			for time.Now().Before(deadline) {
				seq := int(next.Add(1) - 1)
				if seq >= messages {
					break
				}
				if c == nil {
					var err error
					if c, err = cl.dial(); err != nil {
						local.addErr(fmt.Errorf("connect: %w", err))
						c = nil
						continue
					}
					local.sessions++
				}
				d, err := send(c, from, rcptFor(seq), bytesReader(message(seq, size, runID)))
				if err != nil {
					local.addErr(err)
					// A refused message leaves the session usable, anything
					// else (timeouts, resets) does not: start a new one.
					var se *smtp.SMTPError
					if !errors.As(err, &se) {
						c.Close()
						c = nil
					} else if rerr := c.Reset(); rerr != nil {
						c.Close()
						c = nil
					}
					continue
				}
				local.lat = append(local.lat, d)
				local.lastAcc = time.Now()
				acc = append(acc, seq)
				if reconnect {
					_ = c.Quit()
					c.Close()
					c = nil
				}
			}
			mu.Lock()
			defer mu.Unlock()
			for _, s := range acc {
				res.accepted[s] = true
			}
			res.nAcc += len(acc)
			res.failed += local.failed
			res.sessions += local.sessions
			for k, v := range local.errs {
				if res.errs == nil {
					res.errs = map[string]int{}
				}
				res.errs[k] += v
			}
			res.lat = append(res.lat, local.lat...)
			if local.lastAcc.After(res.lastAcc) {
				res.lastAcc = local.lastAcc
			}
		}()
	}
	wg.Wait()
	return res
}

// percentile returns the nearest-rank percentile p (0–100) of sorted d.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999999) - 1
	rank = min(max(rank, 0), len(sorted)-1)
	return sorted[rank]
}

func sortedCopy(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// openIdle opens n authenticated sessions, at most par handshakes at a time.
func openIdle(cl *client, n, par int, deadline time.Time) ([]*smtp.Client, map[string]int) {
	var mu sync.Mutex
	var out []*smtp.Client
	errs := map[string]int{}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range par {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) && next.Add(1) <= int64(n) {
				c, err := cl.dial()
				mu.Lock()
				if err != nil {
					errs[err.Error()]++
				} else {
					out = append(out, c)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out, errs
}

// closeAll ends sessions politely, several at a time.
func closeAll(cs []*smtp.Client) {
	var wg sync.WaitGroup
	ch := make(chan *smtp.Client)
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				_ = c.Quit()
				c.Close()
			}
		}()
	}
	for _, c := range cs {
		ch <- c
	}
	close(ch)
	wg.Wait()
}

func bytesReader(b []byte) io.Reader { return &sliceReader{b: b} }

// sliceReader is bytes.Reader without the seek machinery.
type sliceReader struct{ b []byte }

func (r *sliceReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// parseSize reads 50MB (10^6), 50MiB (2^20) or plain bytes, as sluice does.
func parseSize(s string) (int64, error) {
	units := []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	for _, u := range units {
		if num, ok := cutSuffix(s, u.suf); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n < 0 {
				return 0, fmt.Errorf("size %q: want e.g. 50MB or 50MiB", s)
			}
			return n * u.m, nil
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want e.g. 50MB or 50MiB", s)
	}
	return n, nil
}

func cutSuffix(s, suf string) (string, bool) {
	if len(s) > len(suf) && s[len(s)-len(suf):] == suf {
		return s[:len(s)-len(suf)], true
	}
	return "", false
}
