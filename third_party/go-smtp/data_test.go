package smtp

import (
	"bufio"
	"bytes"
	"io"
	"testing"
	"testing/iotest"
)

// oldDataReader is dataReader.Read as it was before it read from bufio's
// buffer in chunks (sluice, issue 14): byte by byte with ReadByte. Kept to
// compare the two.
type oldDataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64
}

func (r *oldDataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}
	for n < len(b) && r.state != stateEOF {
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.r.UnreadByte()
			c = '\r'
			r.state = stateCR
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			r.state = stateData
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	if r.limited {
		r.n -= int64(n)
	}
	return
}

type readResult struct {
	n   int
	out string
	err error
}

// session reads a DATA body as the server does: the session reads with
// the given buffer sizes (cycled) until an error, then the server drains
// with no limit; it returns every Read's result and what is left unread
// after the body.
func session(r io.Reader, setUnlimited func(), br *bufio.Reader, sizes []int) (reads []readResult, rest string) {
	buf := make([]byte, 4096)
	drained := false
	for i := 0; len(reads) < 10000; i++ {
		size := 1 + sizes[i%len(sizes)]%len(buf)
		n, err := r.Read(buf[:size])
		reads = append(reads, readResult{n, string(buf[:n]), err})
		if err != nil {
			if drained || err == io.ErrUnexpectedEOF {
				break
			}
			if err == io.EOF {
				break
			}
			setUnlimited()
			drained = true
		}
	}
	b, _ := io.ReadAll(br)
	return reads, string(b)
}

// compareReaders runs the old and the new reader over the same input, read
// through a bufio.Reader of bufSize over src(input), with the same Read
// sizes, and fails on any difference.
func compareReaders(t *testing.T, input []byte, limit int64, bufSize int, src func(io.Reader) io.Reader, sizes []int) {
	t.Helper()
	if len(sizes) == 0 {
		sizes = []int{4095}
	}
	obr := bufio.NewReaderSize(src(bytes.NewReader(input)), bufSize)
	old := &oldDataReader{r: obr, limited: limit > 0, n: limit}
	oreads, orest := session(old, func() { old.limited = false }, obr, sizes)
	nbr := bufio.NewReaderSize(src(bytes.NewReader(input)), bufSize)
	nw := &dataReader{r: nbr, limited: limit > 0, n: limit}
	nreads, nrest := session(nw, func() { nw.limited = false }, nbr, sizes)
	if len(oreads) != len(nreads) {
		t.Fatalf("input %q limit %d buf %d sizes %v: %d reads, old %d:\nold %v\nnew %v", input, limit, bufSize, sizes, len(nreads), len(oreads), oreads, nreads)
	}
	for i := range oreads {
		if oreads[i] != nreads[i] {
			t.Fatalf("input %q limit %d buf %d sizes %v: read %d = %+v, old %+v", input, limit, bufSize, sizes, i, nreads[i], oreads[i])
		}
	}
	if orest != nrest {
		t.Fatalf("input %q: left unread %q, old %q", input, nrest, orest)
	}
}

var dataCorpus = []string{
	"",
	".\r\n",
	"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n",
	"..leading dot\r\n..\r\n.\r\nNEXT\r\n",
	".\rX\r\n.\r\n",
	".\r.\r\n.\r\n",
	"bare\nlf\n.\n.\r\n",
	"a\r\r\n.\r\n\r\n.\r\n",
	"\r\n.\r\n",
	"no end",
	"line\r\n.",
	"x\r\n.\r",
	"long " + string(bytes.Repeat([]byte("y"), 3000)) + "\r\n.\r\nRSET\r\n",
}

// TestDataReaderMatchesByteWise: the corpus read every way through both
// readers gives the same bytes, errors and leftover.
func TestDataReaderMatchesByteWise(t *testing.T) {
	srcs := []func(io.Reader) io.Reader{
		func(r io.Reader) io.Reader { return r },
		iotest.OneByteReader,
		iotest.HalfReader,
	}
	for _, in := range dataCorpus {
		for _, limit := range []int64{0, 1, 5, 100, 1 << 20} {
			for _, bufSize := range []int{16, 4096} {
				for _, src := range srcs {
					for _, sizes := range [][]int{{4095}, {0}, {2, 6, 0}} {
						compareReaders(t, []byte(in), limit, bufSize, src, sizes)
					}
				}
			}
		}
	}
}

// TestDataReaderUnstuffs: a few exact outputs.
func TestDataReaderUnstuffs(t *testing.T) {
	for _, c := range []struct{ in, out, rest string }{
		{"a\r\n..b\r\n.\r\nQUIT\r\n", "a\r\n.b\r\n", "QUIT\r\n"},
		{".\rX\r\n.\r\n", "\rX\r\n", ""},
		{"a\n.\n.\r\n.\r\n", "a\n.\n.\r\n", ""}, // a bare LF ends no line
	} {
		br := bufio.NewReader(bytes.NewReader([]byte(c.in)))
		out, err := io.ReadAll(&dataReader{r: br})
		rest, _ := io.ReadAll(br)
		if string(out) != c.out || err != nil || string(rest) != c.rest {
			t.Errorf("%q: read %q, %v, left %q; want %q, nil, %q", c.in, out, err, rest, c.out, c.rest)
		}
	}
	br := bufio.NewReader(bytes.NewReader([]byte("0123456789\r\n.\r\n")))
	if _, err := io.ReadAll(&dataReader{r: br, limited: true, n: 5}); err != ErrDataTooLarge {
		t.Errorf("over the limit: %v, want ErrDataTooLarge", err)
	}
}

// FuzzDataReader: for any input, limit, buffer and Read sizes the new
// reader returns what the byte-wise one did, Read by Read, and leaves the
// same bytes unread.
func FuzzDataReader(f *testing.F) {
	for i, in := range dataCorpus {
		f.Add([]byte(in), uint16(i*7), uint8(i), uint8(i%3), []byte{byte(i), 3, 200})
	}
	f.Fuzz(func(t *testing.T, input []byte, limit uint16, bufSize uint8, srcKind uint8, sizes []byte) {
		src := []func(io.Reader) io.Reader{
			func(r io.Reader) io.Reader { return r },
			iotest.OneByteReader,
			iotest.HalfReader,
		}[srcKind%3]
		var sz []int
		for _, s := range sizes {
			sz = append(sz, int(s))
		}
		compareReaders(t, input, int64(limit), 16+int(bufSize), src, sz)
	})
}

// BenchmarkDataReader reads a 2 KB message of 78-byte lines through the
// chunked reader and the byte-wise one, as the session does (32 KiB reads).
func BenchmarkDataReader(b *testing.B) {
	var msg []byte
	for len(msg) < 2048 {
		msg = append(msg, bytes.Repeat([]byte("x"), 76)...)
		msg = append(msg, "\r\n"...)
	}
	msg = append(msg, ".\r\n"...)
	buf := make([]byte, 32<<10)
	src := bytes.NewReader(msg)
	br := bufio.NewReaderSize(src, 4096)
	for _, c := range []struct {
		name string
		r    func() io.Reader
	}{
		{"chunked", func() io.Reader { return &dataReader{r: br} }},
		{"bytewise", func() io.Reader { return &oldDataReader{r: br} }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			for i := 0; i < b.N; i++ {
				src.Reset(msg)
				br.Reset(src)
				r := c.r()
				for {
					if _, err := r.Read(buf); err != nil {
						break
					}
				}
			}
		})
	}
}
