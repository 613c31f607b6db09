package signing

import (
	"encoding"
	"hash"
	"strings"
	"sync"
	"unicode/utf8"
)

// This file is DKIM relaxed canonicalization (RFC 6376 §3.4.2, §3.4.4).
// It deliberately reproduces go-msgauth v0.7.0's canonicalizer byte for byte
// (its verifier is the reference our tests and fuzz target check against),
// including its handling of input the relay never passes on: a lone LF counts
// as CRLF and a lone CR is treated like a line-break character.

// relaxedHeader canonicalizes one header field (name, colon, value and its
// continuation lines, each ending in CRLF): lower-case name, unfolded value
// with whitespace runs collapsed and trimmed, then CRLF.
func relaxedHeader(field string) string {
	k, v, ok := strings.Cut(field, ":")
	if !ok {
		return strings.TrimSpace(strings.ToLower(field)) + ":\r\n"
	}
	k = strings.TrimSpace(strings.ToLower(k))
	v = strings.Join(strings.FieldsFunc(v, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\n' || r == '\r'
	}), " ")
	return k + ":" + v + "\r\n"
}

// appendRelaxedHeader appends relaxedHeader(field) to dst without the
// allocations of its string steps (a signed message canonicalizes every
// signed field and its own DKIM-Signature field). For a name that is all
// ASCII, ToLower and TrimSpace work byte by byte, and the value's
// separators are ASCII bytes that never occur inside a multi-byte UTF-8
// sequence, so the bytes are the same (FuzzAppendRelaxedHeader checks it);
// any other name takes relaxedHeader itself.
func appendRelaxedHeader[S ~string | ~[]byte](dst []byte, field S) []byte {
	colon := len(field)
	for i := range len(field) {
		if field[i] == ':' {
			colon = i
			break
		}
	}
	name := field[:colon]
	for i := range len(name) {
		if name[i] >= utf8.RuneSelf {
			return append(dst, relaxedHeader(string(field))...)
		}
	}
	for len(name) > 0 && asciiSpace(name[0]) {
		name = name[1:]
	}
	for len(name) > 0 && asciiSpace(name[len(name)-1]) {
		name = name[:len(name)-1]
	}
	for i := range len(name) {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	dst = append(dst, ':')
	gap, started := false, false
	for i := colon + 1; i < len(field); i++ {
		switch c := field[i]; c {
		case ' ', '\t', '\r', '\n':
			gap = true
		default:
			if gap && started {
				dst = append(dst, ' ')
			}
			gap, started = false, true
			dst = append(dst, c)
		}
	}
	return append(dst, '\r', '\n')
}

// asciiSpace is strings.TrimSpace's set within ASCII.
func asciiSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// fieldName is the name part of a header field as verifiers compare it.
func fieldName(field string) string {
	k, _, _ := strings.Cut(field, ":")
	return strings.TrimSpace(k)
}

// maxPending bounds the run of line breaks relaxedBody buffers. Trailing
// empty lines are not signed, so a run of line breaks can only be hashed
// once something else follows it; a longer run is hashed speculatively and
// the hash state from before it is kept to roll back to at the end. So a
// body of 25 MiB of empty lines costs 64 KiB, not 25 MiB.
const maxPending = 64 << 10

// relaxedBody hashes a body in relaxed canonical form as it streams through:
// whitespace runs become one space, whitespace at line ends is dropped, and
// empty lines at the end are dropped (a non-empty body ends with one CRLF).
type relaxedBody struct {
	h        hash.Hash
	prevCR   bool   // the last byte seen was CR (for the lone-LF fix)
	wsp      bool   // whitespace seen and not yet written
	written  bool   // some content was hashed
	pending  []byte // line breaks not yet hashed
	spilled  bool   // pending overflowed: it is in the hash, snapshot is the state before it
	snapshot []byte
	out      []byte // batches bytes for h
}

// outBufs recycles relaxedBody's batch buffer: one per signed message was a
// seventh of the bytes a relayed message allocated.
var outBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

func newRelaxedBody(h hash.Hash) *relaxedBody {
	return &relaxedBody{h: h, out: (*outBufs.Get().(*[]byte))[:0]}
}

func (c *relaxedBody) Write(p []byte) (int, error) {
	for _, ch := range p {
		switch ch {
		case ' ', '\t':
			c.wsp = true
			c.prevCR = false
		case '\r':
			c.lineBreak('\r')
			c.prevCR = true
		case '\n':
			if !c.prevCR {
				c.lineBreak('\r')
			}
			c.lineBreak('\n')
			c.prevCR = false
		default:
			if c.spilled {
				c.spilled = false
			} else if len(c.pending) > 0 {
				c.out = append(c.out, c.pending...)
				c.pending = c.pending[:0]
			}
			if c.wsp {
				c.out = append(c.out, ' ')
				c.wsp = false
			}
			c.out = append(c.out, ch)
			c.written = true
			c.prevCR = false
			if len(c.out) >= cap(c.out)-2 {
				c.flush()
			}
		}
	}
	return len(p), nil
}

func (c *relaxedBody) lineBreak(ch byte) {
	c.wsp = false
	if c.spilled {
		c.out = append(c.out, ch)
		if len(c.out) >= cap(c.out)-2 {
			c.flush()
		}
		return
	}
	if len(c.pending) < maxPending {
		c.pending = append(c.pending, ch)
		return
	}
	// Spill: remember the hash state before the run, then hash the run.
	c.flush()
	snap, err := c.h.(encoding.BinaryAppender).AppendBinary(c.snapshot[:0])
	if err != nil {
		// sha256 always marshals; keep buffering rather than lose bytes.
		c.pending = append(c.pending, ch)
		return
	}
	c.snapshot = snap
	c.spilled = true
	c.out = append(c.out, c.pending...)
	c.out = append(c.out, ch)
	c.pending = c.pending[:0]
}

func (c *relaxedBody) flush() {
	if len(c.out) > 0 {
		c.h.Write(c.out)
		c.out = c.out[:0]
	}
}

// Sum finishes the body: trailing line breaks are discarded and a body
// with content ends in exactly one CRLF.
func (c *relaxedBody) Sum() ([]byte, error) {
	c.flush()
	if c.spilled {
		if err := c.h.(encoding.BinaryUnmarshaler).UnmarshalBinary(c.snapshot); err != nil {
			return nil, err
		}
		c.spilled = false
	}
	c.pending = c.pending[:0]
	if c.written {
		c.h.Write([]byte("\r\n"))
	}
	if cap(c.out) == 4<<10 { // flushed above: give the batch buffer back
		out := c.out[:0]
		outBufs.Put(&out)
		c.out = nil
	}
	return c.h.Sum(nil), nil
}
