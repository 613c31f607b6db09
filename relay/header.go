package relay

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"strings"
)

// errBareCR is returned by crlfReader for a CR not followed by LF, or a NUL.
var errBareCR = errors.New("relay: bare CR or NUL in message")

// errHeaderTooLarge: the header section exceeds maxHeaderBytes.
var errHeaderTooLarge = errors.New("relay: header section too large")

const maxHeaderBytes = 1 << 20

// crlfReader normalises line endings of DATA (DESIGN §1): a bare LF becomes
// CRLF (legacy senders and printers emit them; Postfix does the same), and a
// bare CR or a NUL byte is an error, so that no input can make an upstream
// see a line end, or an end of data, the client did not send.
type crlfReader struct {
	r      io.Reader
	in     []byte
	out    []byte
	pend   []byte
	prevCR bool
	err    error
	n      int64 // bytes read from r
}

func newCRLFReader(r io.Reader) *crlfReader {
	return &crlfReader{r: r, in: make([]byte, 32<<10), out: make([]byte, 0, 64<<10)}
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.pend) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		n, err := c.r.Read(c.in)
		c.n += int64(n)
		out, terr := c.transform(c.out[:0], c.in[:n])
		c.out, c.pend = out, out
		switch {
		case terr != nil:
			c.err, c.pend = terr, nil
		case err == io.EOF && c.prevCR:
			c.err = errBareCR
		case err != nil:
			c.err = err
		}
	}
	n := copy(p, c.pend)
	c.pend = c.pend[n:]
	return n, nil
}

func (c *crlfReader) transform(dst, src []byte) ([]byte, error) {
	for len(src) > 0 {
		if c.prevCR {
			if src[0] != '\n' {
				return dst, errBareCR
			}
			dst = append(dst, '\r', '\n')
			c.prevCR = false
			src = src[1:]
			continue
		}
		i := bytes.IndexAny(src, "\r\n\x00")
		if i < 0 {
			return append(dst, src...), nil
		}
		dst = append(dst, src[:i]...)
		switch src[i] {
		case '\r':
			c.prevCR = true
		case '\n':
			dst = append(dst, '\r', '\n')
		default:
			return dst, errBareCR
		}
		src = src[i+1:]
	}
	return dst, nil
}

// field is one header field as received: its name and its raw bytes
// (including continuation lines and the final CRLF).
type field struct {
	name string
	raw  []byte
}

// headerValue returns the value of the first field called name, "" when absent.
func headerValue(fields []field, name string) string {
	for _, f := range fields {
		if strings.EqualFold(f.name, name) {
			return f.value()
		}
	}
	return ""
}

// decodeSubject decodes RFC 2047 words for the journal; undecodable text
// is kept as it came.
func decodeSubject(s string) string {
	if d, err := subjectDecoder.DecodeHeader(s); err == nil {
		return d
	}
	return s
}

var subjectDecoder = &mime.WordDecoder{}

// value returns the unfolded value of the field.
func (f field) value() string {
	v := f.raw[len(f.name)+1:]
	v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	return strings.TrimSpace(string(v))
}

// readHeader reads the header section from br (whose lines end in CRLF).
// It returns the fields, whether a blank separator line was consumed, and
// the first line of the body when the section ended at a line that is
// neither a field nor a continuation (the caller writes it before the rest).
// Each line is read once, with no look-ahead: this runs for every message.
func readHeader(br *bufio.Reader) (fields []field, sep bool, first []byte, err error) {
	total := 0
	for {
		line, err := readLine(br)
		if err != nil {
			return fields, false, nil, err
		}
		if len(line) == 0 { // end of data
			return fields, false, nil, nil
		}
		total += len(line)
		if total > maxHeaderBytes {
			return fields, false, nil, errHeaderTooLarge
		}
		switch {
		case len(line) == 2 && line[0] == '\r' && line[1] == '\n': // the blank line
			return fields, true, nil, nil
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			f := &fields[len(fields)-1]
			f.raw = append(f.raw, line...)
		default:
			name, ok := fieldName(line)
			if !ok || line[len(line)-1] != '\n' {
				return fields, false, append([]byte(nil), line...), nil
			}
			fields = append(fields, field{name: name, raw: append([]byte(nil), line...)})
		}
	}
}

func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		buf := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull {
			line, err = br.ReadSlice('\n')
			buf = append(buf, line...)
			if len(buf) > maxHeaderBytes {
				return nil, errHeaderTooLarge
			}
		}
		line = buf
	}
	if err == io.EOF {
		err = nil
	}
	return line, err
}

// fieldName returns the name of a "Name: value" line (RFC 5322 ftext).
func fieldName(line []byte) (string, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", false
	}
	for _, c := range line[:i] {
		if c < 33 || c > 126 {
			return "", false
		}
	}
	return string(line[:i]), true
}

// addresses parses the addresses of every field called name.
func addresses(fields []field, name string) (addrs []string, present bool, err error) {
	for _, f := range fields {
		if !strings.EqualFold(f.name, name) {
			continue
		}
		present = true
		list, perr := mail.ParseAddressList(f.value())
		if perr != nil {
			return nil, true, perr
		}
		for _, a := range list {
			addrs = append(addrs, a.Address)
		}
	}
	return addrs, present, nil
}

func has(fields []field, name string) bool {
	for _, f := range fields {
		if strings.EqualFold(f.name, name) {
			return true
		}
	}
	return false
}

// domainOf returns the lower-cased domain of an address ("" if none).
func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return strings.ToLower(addr[i+1:])
	}
	return ""
}
