package relay

import (
	"bufio"
	"bytes"
	"crypto"
	"io"
	"net"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/sluicemail/sluice/signing"
)

// FuzzCRLF: the normaliser's output never holds a bare CR or LF; it fails
// exactly when the input has a bare CR or a NUL; otherwise it only turns
// bare LFs into CRLF.
func FuzzCRLF(f *testing.F) {
	for _, s := range []string{"a\r\nb\n", "\r", "x\r\r\n", "\n\n", "a\x00", "\r\n.\r\n", ""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := io.ReadAll(newCRLFReader(iotest.OneByteReader(bytes.NewReader(in))))
		bad := bytes.IndexByte(in, 0) >= 0 || regexp.MustCompile(`\r([^\n]|$)`).Match(in)
		if bad != (err != nil) {
			t.Fatalf("input %q: err = %v, want error: %v", in, err, bad)
		}
		if err != nil {
			return
		}
		want := bytes.ReplaceAll(bytes.ReplaceAll(in, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
		if !bytes.Equal(out, want) {
			t.Fatalf("input %q: got %q, want %q", in, out, want)
		}
	})
}

// FuzzHeader: reading the header section loses nothing: the fields' raw
// bytes, the separator and the rest are the input again.
func FuzzHeader(f *testing.F) {
	for _, s := range []string{"From: a@b\r\nSubject: x\r\n y\r\n\r\nbody\r\n", "no header\r\n", " folded\r\n\r\n", "A:\r\n\r\n", "X: y"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		// The relay reads headers only from normalised input.
		in, err := io.ReadAll(newCRLFReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		br := bufio.NewReaderSize(bytes.NewReader(in), 4096)
		fields, sep, first, err := readHeader(br)
		if err != nil {
			return
		}
		var got bytes.Buffer
		for _, fl := range fields {
			if !strings.EqualFold(string(fl.raw[:len(fl.name)]), fl.name) {
				t.Fatalf("field %q does not start with its name %q", fl.raw, fl.name)
			}
			got.Write(fl.raw)
		}
		if sep {
			got.WriteString("\r\n")
		}
		got.Write(first)
		rest, _ := io.ReadAll(br)
		got.Write(rest)
		// Long header lines are folded (a CRLF before a space): the same
		// bytes once line breaks are ignored, and no header line too long.
		unfold := func(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), nil) }
		if !bytes.Equal(unfold(got.Bytes()), unfold(in)) {
			t.Fatalf("lossy: %q became %q", in, got.Bytes())
		}
		for _, fl := range fields {
			for _, line := range bytes.Split(fl.raw, []byte("\r\n")) {
				if len(line) > maxLineBytes {
					t.Fatalf("header line of %d bytes left unfolded: %.60q", len(line), line)
				}
			}
		}
	})
}

// FuzzHeaderLinear: reading and checking the header section costs time
// linear in its size: a header made of the fuzzed line repeated 16 times as
// often is processed at no less than a fifth of the bytes per millisecond (a
// quadratic step would make it a sixteenth; the wide gap keeps the race
// detector's noise from passing for a slope, and timing the thread's CPU
// rather than the clock keeps a busy machine's out). Issue 8
// found one field folded over 85,000 lines costing 11 s.
func FuzzHeaderLinear(f *testing.F) {
	for _, s := range []string{" (c)\r\n", " a@example.com,\r\n", "X-A: b\r\n", "\t=?utf-8?q?x?=\r\n", "Resent-From: <a@b.c>\r\n"} {
		f.Add([]byte(s))
	}
	keys := signing.NewKeyring([]signing.Key{{Domain: "example.com", Selector: "e1", Signer: mustEd25519(f)}})
	f.Fuzz(func(t *testing.T, unit []byte) {
		if len(unit) == 0 || len(unit) > 200 || !bytes.HasSuffix(unit, []byte("\r\n")) || bytes.Count(unit, []byte("\n")) != 1 || bytes.ContainsAny(unit[:len(unit)-2], "\r\n\x00") {
			return
		}
		rate := func(n int) float64 {
			in := bytes.Repeat(unit, n)
			in = append(append([]byte("To: r@example.org\r\nSubject: x\r\nFrom: a@example.com\r\n"), in...), "\r\nbody\r\n"...)
			// The thread's CPU time, not the clock's: on a loaded machine
			// (make test runs packages side by side) the time a thread
			// waits for a CPU once made a linear unit measure 6× slower.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			best := time.Duration(1<<63 - 1)
			for range 5 { // the fastest of five: a busy moment is not a slope
				t0 := threadCPU(t)
				processHeader(t, keys, in)
				best = min(best, threadCPU(t)-t0)
			}
			// Bytes per millisecond from the duration itself: whole
			// milliseconds would round a 1 ms run to 0 or 2.
			return float64(len(in)) / (float64(max(best, time.Microsecond)) / float64(time.Millisecond))
		}
		// Within one field's limit, so a folded field is processed whole.
		n := max(16, (maxFieldBytes-200)/len(unit))
		// Measured again, up to three rounds, before it counts: a quadratic
		// step is a sixteenth every time, a busy host's pause is not (once,
		// in a loaded make test, a linear unit measured a sixth).
		var small, large float64
		for range 3 {
			if small, large = rate(n/16), rate(n); large >= small/5 {
				return
			}
		}
		t.Fatalf("unit %q: %.0f bytes/ms at %d lines, %.0f at %d: not linear", unit, small, n/16, large, n)
	})
}

// threadCPU is the CPU time the calling thread has used, to the
// nanosecond (clock_gettime(CLOCK_THREAD_CPUTIME_ID); getrusage's figure
// moves in scheduler ticks, too coarse for the short runs).
func threadCPU(t *testing.T) time.Duration {
	const clockThreadCPUTime = 3 // CLOCK_THREAD_CPUTIME_ID, Linux
	var ts syscall.Timespec
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		t.Fatalf("clock_gettime: %v", errno)
	}
	return time.Duration(ts.Nano())
}

// processHeader runs what DATA does with a header section: read it, parse
// the address fields, and feed it to a DKIM signer.
func processHeader(t *testing.T, keys *signing.Keyring, in []byte) {
	br := bufio.NewReader(bytes.NewReader(in))
	fields, _, _, err := readHeader(br)
	if err != nil {
		return
	}
	for _, name := range []string{"From", "Sender", "Resent-From", "Resent-Sender"} {
		addresses(fields, name)
	}
	s, err := keys.NewSigner("example.com", "")
	if err != nil || s == nil {
		t.Fatalf("signer: %v", err)
	}
	for _, fl := range fields {
		s.Write(fl.raw)
	}
	s.Write([]byte("\r\nbody\r\n"))
	s.Close()
}

func mustEd25519(f *testing.F) crypto.Signer {
	k, err := signing.GenerateKey("ed25519", 0)
	if err != nil {
		f.Fatal(err)
	}
	return k
}

var replyLine = regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)

// FuzzSession feeds a whole plaintext session of raw lines to a real
// relay (network-trusted listener, so MAIL/RCPT/DATA are reachable). Every
// line it answers must be a well-formed reply, never go-smtp's generic
// internal error or a permanent 5.0.0 carrying internal text, and the
// connection must end or idle within the deadline.
func FuzzSession(f *testing.F) {
	seeds := []string{
		"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nFrom: a@example.com\r\n\r\nhi\r\n.\r\nQUIT\r\n",
		"EHLO x\r\nMAIL FROM:<a@example.com> SIZE=99999999999\r\nQUIT\r\n",
		"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 5 LAST\r\nab\rcdQUIT\r\n",
		"EHLO x\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\nAUTH LOGIN\r\n*\r\nQUIT\r\n",
		"HELO\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nDATA\r\n\n.\n\r\n.\r\n",
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	relay := startRelayFor(f, relayOpts{listeners: legacyListeners})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", relay.addr("legacy"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		go func() { c.Write(in); c.Write([]byte("\r\n.\r\nQUIT\r\n")) }()
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			if !replyLine.MatchString(line) {
				t.Fatalf("malformed reply line %q", line)
			}
			if strings.Contains(line, "Internal server error") || strings.HasPrefix(line, "554 5.0.0") {
				t.Fatalf("internal error leaked to the client: %q", line)
			}
		}
	})
}

// FuzzLineFolder: body lines over 998 bytes are broken, nothing else
// changes (the input is the output without the added CRLFs), valid UTF-8
// stays valid on every line, and how the input is split into writes does
// not matter.
func FuzzLineFolder(f *testing.F) {
	f.Add([]byte(strings.Repeat("a", 2500)+"\r\n"+strings.Repeat("é", 700)), uint16(7))
	f.Add([]byte(strings.Repeat("x", 998)+"\r\n"+strings.Repeat("y", 999)), uint16(1000))
	f.Add([]byte(strings.Repeat("€", 400)+"\r\n"), uint16(3))
	f.Fuzz(func(t *testing.T, in []byte, chunk uint16) {
		in, err := io.ReadAll(newCRLFReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		in = append(in, "\r\n"...)
		var out bytes.Buffer
		fl := &lineFolder{w: &out}
		for c, rest := max(1, int(chunk)), in; len(rest) > 0; {
			k := min(c, len(rest))
			fl.Write(rest[:k])
			rest = rest[k:]
		}
		var whole bytes.Buffer
		(&lineFolder{w: &whole}).Write(in)
		if !bytes.Equal(out.Bytes(), whole.Bytes()) {
			t.Fatalf("chunked writes differ from one write")
		}
		lines := bytes.Split(bytes.TrimSuffix(out.Bytes(), []byte("\r\n")), []byte("\r\n"))
		var joined []byte
		for _, l := range lines {
			if len(l) > maxLineBytes {
				t.Fatalf("line of %d bytes", len(l))
			}
			if utf8.Valid(in) && !utf8.Valid(l) {
				t.Fatalf("a character was split: %q", l)
			}
			joined = append(joined, l...)
		}
		if want := bytes.ReplaceAll(in, []byte("\r\n"), nil); !bytes.Equal(joined, want) {
			t.Fatalf("content changed")
		}
		if fl.folds != len(lines)-bytes.Count(in, []byte("\r\n")) {
			t.Fatalf("%d folds counted, %d made", fl.folds, len(lines)-bytes.Count(in, []byte("\r\n")))
		}
	})
}
