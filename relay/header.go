package relay

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"

	"github.com/sluicemail/sluice/policy"
)

// errBareCR is returned by crlfReader for a CR not followed by LF, or a NUL.
var errBareCR = errors.New("relay: bare CR or NUL in message")

// errHeaderTooLarge: one header field exceeds maxFieldBytes, or the header
// section maxHeaderBytes.
var errHeaderTooLarge = errors.New("relay: header section too large")

// errHeaderLine: a header line over maxLineBytes with no whitespace to
// fold it at, or a line without a colon among the header fields.
var errHeaderLine = errors.New("relay: malformed header line")

// Header limits (docs/configuration.md "Limits"). One field may hold 100 KiB
// (Postfix's header_size_limit: long To: lists fit, a field folded over a
// megabyte does not), the section 1 MiB; both are held in memory while the
// header is checked. A line holds at most 998 bytes before its CRLF
// (RFC 5321 §4.5.3.1.6).
const (
	maxFieldBytes  = 100 << 10
	maxHeaderBytes = 1 << 20
	maxLineBytes   = 998
)

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
// (including continuation lines and the final CRLF); colon is the offset of
// the colon in raw ("From : x", obsolete syntax, is the field From).
type field struct {
	name  string
	raw   []byte
	colon int
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
	v := f.raw[f.colon+1:]
	v = bytes.ReplaceAll(v, []byte("\r\n"), nil)
	return strings.TrimSpace(string(v))
}

// readHeader reads the header section from br (whose lines end in CRLF).
// It returns the fields, whether a blank separator line was consumed, and
// the first line(s) of the body when the section ended at a line that is
// neither a field nor a continuation (a client that sent no blank line;
// the caller writes them before the rest). A line without a colon that is
// followed by another field is not the body's start but a malformed
// header: it is refused rather than ending the section early (the fields
// after it would escape the header checks). Each line is read once and
// appended once: the work is linear in the header's size.
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
			if len(f.raw)+len(line) > maxFieldBytes {
				return fields, false, nil, errHeaderTooLarge
			}
			if f.raw, err = appendFolded(f.raw, line); err != nil {
				return fields, false, nil, err
			}
		default:
			name, colon, ok := fieldName(line)
			if !ok || line[len(line)-1] != '\n' {
				return headerEnd(br, fields, line)
			}
			raw, err := appendFolded(nil, line)
			if err != nil {
				return fields, false, nil, err
			}
			fields = append(fields, field{name: name, raw: raw, colon: colon})
		}
	}
}

// headerEnd decides what a line that is not a field means: the body's first
// line (the client sent no blank line), unless a field follows it.
func headerEnd(br *bufio.Reader, fields []field, line []byte) ([]field, bool, []byte, error) {
	first := append([]byte(nil), line...)
	if line[len(line)-1] != '\n' {
		return fields, false, first, nil // the last line, unterminated
	}
	next, err := readLine(br)
	if err != nil {
		return fields, false, nil, err
	}
	if _, _, ok := fieldName(next); ok && len(fields) > 0 {
		return fields, false, nil, errHeaderLine
	}
	return fields, false, append(first, next...), nil
}

// appendFolded appends one header line to dst, folding it at whitespace
// (CRLF before a space or tab) while it is longer than maxLineBytes; a
// line that cannot be folded so is errHeaderLine.
func appendFolded(dst, line []byte) ([]byte, error) {
	for len(line) > maxLineBytes+2 || (len(line) > maxLineBytes && line[len(line)-1] != '\n') {
		i := bytes.LastIndexAny(line[1:maxLineBytes+1], " \t") + 1
		if i <= 0 {
			return dst, errHeaderLine
		}
		dst = append(append(dst, line[:i]...), '\r', '\n')
		line = line[i:]
	}
	return append(dst, line...), nil
}

func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		buf := append([]byte(nil), line...)
		for err == bufio.ErrBufferFull {
			line, err = br.ReadSlice('\n')
			buf = append(buf, line...)
			if len(buf) > maxFieldBytes {
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

// fieldName returns the name of a "Name: value" line (RFC 5322 ftext) and
// the offset of its colon. Whitespace between name and colon is the
// obsolete syntax (RFC 5322 §4.5) and still names the field: "From : x" is
// a From field to every reader that accepts it, so it is checked as one.
func fieldName(line []byte) (string, int, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", 0, false
	}
	name := bytes.TrimRight(line[:i], " \t")
	if len(name) == 0 {
		return "", 0, false
	}
	for _, c := range name {
		if c < 33 || c > 126 {
			return "", 0, false
		}
	}
	return string(name), i, true
}

// maxAddressField bounds a From:, Sender: or Resent- field that is
// parsed: net/mail's list parser is quadratic in the number of addresses,
// and no author list is near 16 KiB.
const maxAddressField = 16 << 10

var errAddressFieldTooLong = errors.New("relay: address field too long")

// addresses parses the addresses of every field called name.
func addresses(fields []field, name string) (addrs []string, present bool, err error) {
	for _, f := range fields {
		if !strings.EqualFold(f.name, name) {
			continue
		}
		present = true
		if len(f.raw) > maxAddressField {
			return nil, true, errAddressFieldTooLong
		}
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

// masquerade rewrites the addresses of From:, Sender: and Return-Path:
// that the policy's masquerade rules match (DESIGN §8.5), keeping display
// names; fields without a match stay byte for byte. It returns the fields
// (a new slice only when something changed) and the header From: as it
// came when it was rewritten.
func masquerade(fields []field, pol *policy.Policy, user string) ([]field, string, error) {
	if !pol.Masquerades() {
		return fields, "", nil
	}
	var out []field
	origFrom := ""
	for i, f := range fields {
		name := ""
		for _, n := range []string{"From", "Sender", "Return-Path"} {
			if strings.EqualFold(f.name, n) {
				name = n
			}
		}
		if name == "" {
			continue
		}
		if len(f.raw) > maxAddressField {
			return nil, "", errAddressFieldTooLong
		}
		var value string
		changed := false
		if name == "Return-Path" {
			a := trimAngle(f.value())
			m, ok := pol.Masquerade(user, a)
			if !ok {
				continue
			}
			value, changed = "<"+m+">", true
		} else {
			list, err := mail.ParseAddressList(f.value())
			if err != nil {
				return nil, "", err
			}
			parts := make([]string, len(list))
			for j, a := range list {
				if m, ok := pol.Masquerade(user, a.Address); ok {
					a.Address, changed = m, true
				}
				parts[j] = a.String()
			}
			value = strings.Join(parts, ", ")
		}
		if !changed {
			continue
		}
		if name == "From" && origFrom == "" {
			origFrom = f.value()
		}
		if out == nil {
			out = slices.Clone(fields)
		}
		raw := name + ": " + value + "\r\n"
		out[i] = field{name: name, raw: []byte(raw), colon: len(name)}
	}
	if out == nil {
		return fields, "", nil
	}
	return out, origFrom, nil
}

func trimAngle(a string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(a), "<"), ">")
}
