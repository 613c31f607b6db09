package relay

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"regexp"
	"strings"
	"testing"
	"testing/iotest"
	"time"
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
		if !bytes.Equal(got.Bytes(), in) {
			t.Fatalf("lossy: %q became %q", in, got.Bytes())
		}
	})
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
