// Package signing DKIM-signs accepted messages, once, at acceptance and after
// policy header edits, so every retry resends identical bytes. It holds the
// keys per domain (RSA and Ed25519, several selectors), streams the message
// through one relaxed body hash shared by all of the domain's keys, and
// returns the DKIM-Signature fields the queue stores as the message's prefix.
// It also generates keys and prints their DNS records (`sluice dkim`).
package signing

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluicemail/sluice/config"
)

// Provider profiles: what an upstream is known to rewrite, which decides
// what may be signed for messages routed to it (docs/dkim.md has the why).
// They are config's names; policy picks the strictest for a route.
const (
	ProfileGeneric  = config.ProfileGeneric
	ProfileSES      = config.ProfileSES
	ProfileSendGrid = config.ProfileSendGrid
	ProfilePostmark = config.ProfilePostmark
	ProfileMailgun  = config.ProfileMailgun
)

// signedHeaders are the fields put in h= when present, in this order: the
// ones a reader sees and the ones that change how the body is rendered or
// handled (MIME, list unsubscribe, feedback loops). Trace and transport
// fields (Received, Return-Path), other signatures and X-* fields are never
// signed: relays add or rewrite them legitimately.
var signedHeaders = []string{
	"From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To",
	"In-Reply-To", "References", "Content-Type", "Content-Transfer-Encoding",
	"MIME-Version", "Sender", "List-Unsubscribe", "List-Unsubscribe-Post",
	"Feedback-ID",
}

// signedLower is signedHeaders lower-cased, once.
var signedLower = func() []string {
	l := make([]string, len(signedHeaders))
	for i, n := range signedHeaders {
		l[i] = strings.ToLower(n)
	}
	return l
}()

// oversigned fields are listed once more than they occur (once when absent),
// so a field of that name added later breaks the signature: nobody can slip a
// second From: or Subject: above the signed one.
var oversigned = map[string]bool{
	"from": true, "to": true, "subject": true, "date": true,
	"message-id": true, "reply-to": true, "content-type": true, "mime-version": true,
}

// maxHeaderBlock bounds the header block a Signer buffers (h= can only be
// built once every field is known); the body is never buffered.
const maxHeaderBlock = 1 << 20

// ErrHeaderTooLarge is returned by Write when the header block exceeds 1 MiB.
var ErrHeaderTooLarge = errors.New("signing: header block larger than 1 MiB")

// ErrFoldedFirstLine is returned when the message's first line starts with
// a space or tab: prepended to it, the DKIM-Signature field would swallow
// that line as its own continuation, and no signature could verify.
var ErrFoldedFirstLine = errors.New("signing: message starts with a folded (continuation) line")

// Signer signs one message for one domain. Write the whole message to it
// (header, blank line, body, CRLF line endings), Close it, then prepend
// Header(). It is not safe for concurrent use.
type Signer struct {
	keys    []Key
	profile string
	now     func() time.Time

	hdr    []byte   // the header block while it is being read
	lineAt int      // start of the current header line in hdr
	fields []string // header fields, each with its CRLF-terminated lines
	inBody bool
	body   *relaxedBody
	err    error
	closed bool
	signed []byte
}

// NewSigner starts a signature for a message whose From: domain is domain,
// with every key of that domain (generic and the provider profiles) or the
// first RSA key only (ses). It returns nil, nil when no key matches, so the
// caller relays the message unsigned or refuses it (require_dkim).
func (k *Keyring) NewSigner(domain, profile string) (*Signer, error) {
	if !config.ValidProfile(profile) {
		return nil, fmt.Errorf("signing: unknown profile %q", profile)
	}
	if profile == "" {
		profile = ProfileGeneric
	}
	keys := k.Keys(domain)
	if len(keys) == 0 {
		return nil, nil
	}
	for _, key := range keys {
		if err := checkKey(key.Signer); err != nil {
			return nil, fmt.Errorf("signing: key %s._domainkey.%s: %w", key.Selector, key.Domain, err)
		}
	}
	if profile == ProfileSES {
		// SES accepts DKIM-Signature at most once per message: sign once,
		// with the kind of key every receiver can verify (RSA) when there is one.
		keys = keys[:1]
		for _, key := range k.Keys(domain) {
			if _, ok := key.Signer.(*rsa.PrivateKey); ok {
				keys = []Key{key}
				break
			}
		}
	}
	now := k.Now
	if now == nil {
		now = time.Now
	}
	return &Signer{
		keys:    keys,
		profile: profile,
		now:     now,
		body:    newRelaxedBody(sha256.New()),
	}, nil
}

// Write consumes the next bytes of the message. Only the header block is
// buffered (up to 1 MiB); body bytes are hashed and dropped.
func (s *Signer) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.closed {
		return 0, errors.New("signing: write after close")
	}
	n := len(p)
	if !s.inBody {
		i := s.scanHeader(p)
		if s.err != nil {
			return 0, s.err
		}
		p = p[i:]
	}
	if len(p) > 0 {
		s.body.Write(p)
	}
	return n, nil
}

// scanHeader appends p to the header block up to the empty line that ends
// it and returns how many bytes of p it consumed. Lines end at LF; one CR
// before the LF belongs to the line ending (as a verifier reads them).
func (s *Signer) scanHeader(p []byte) int {
	base := len(s.hdr) // offset of p[0] in the header block
	at := func(i int) byte {
		if i < base {
			return s.hdr[i]
		}
		return p[i-base]
	}
	for off := 0; ; {
		j := bytes.IndexByte(p[off:], '\n')
		if j < 0 {
			break
		}
		lf := base + off + j // offset of this LF in the header block
		if lf == s.lineAt || (lf == s.lineAt+1 && at(s.lineAt) == '\r') {
			if lf+1 > maxHeaderBlock {
				s.err = ErrHeaderTooLarge
				return 0
			}
			s.hdr = append(s.hdr, p[:off+j+1]...)
			s.endHeader()
			if s.err != nil {
				return 0
			}
			return off + j + 1
		}
		s.lineAt = lf + 1
		off += j + 1
	}
	if base+len(p) > maxHeaderBlock {
		s.err = ErrHeaderTooLarge
		return 0
	}
	s.hdr = append(s.hdr, p...)
	return len(p)
}

// endHeader splits the header block into fields and releases it. A line
// starting with a space or tab continues the previous field. Every line
// ends in CRLF in the fields, which share one string: a field built line
// by line, or a string per field, was a tenth of a signed message's
// allocations (and appending to a string copied a field folded over many
// lines once per line, quadratic: issue 8 item 7).
func (s *Signer) endHeader() {
	s.inBody = true
	if len(s.hdr) > 0 && (s.hdr[0] == ' ' || s.hdr[0] == '\t') {
		s.err = ErrFoldedFirstLine
	}
	buf := make([]byte, 0, len(s.hdr)+32)
	var ends []int // where each field ends in buf
	for rest := s.hdr; len(rest) > 0; {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // the empty line that ends the header
		}
		if len(buf) > 0 && line[0] != ' ' && line[0] != '\t' {
			ends = append(ends, len(buf))
		}
		buf = append(append(buf, line...), '\r', '\n')
	}
	if len(buf) > 0 {
		ends = append(ends, len(buf))
	}
	all, start := string(buf), 0
	s.fields = make([]string, 0, len(ends))
	for _, end := range ends {
		s.fields = append(s.fields, all[start:end])
		start = end
	}
	s.hdr = nil
}

// Close finishes the body hash and makes one signature per key. A message
// without the blank line that ends its header is signed as a header-only
// message (empty body).
func (s *Signer) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.err != nil {
		return s.err
	}
	if !s.inBody {
		if len(s.hdr) > 0 && s.hdr[len(s.hdr)-1] != '\n' {
			s.hdr = append(s.hdr, "\r\n"...)
		}
		s.hdr = append(s.hdr, "\r\n"...)
		s.endHeader()
		if s.err != nil {
			return s.err
		}
	}
	bh, err := s.body.Sum()
	if err != nil {
		s.err = fmt.Errorf("signing: body hash: %w", err)
		return s.err
	}
	h := s.headerList()
	signed := canonicalFields(h, s.fields)
	t := s.now()
	out := make([]byte, 0, 512*len(s.keys))
	for _, key := range s.keys {
		if out, err = appendSignField(out, key, h, signed, bh, t); err != nil {
			s.err = fmt.Errorf("signing: sign with %s._domainkey.%s: %w", key.Selector, key.Domain, err)
			return s.err
		}
	}
	s.signed = out
	return nil
}

// Selectors returns the selectors this signer signs with (for the journal).
func (s *Signer) Selectors() []string {
	out := make([]string, len(s.keys))
	for i, k := range s.keys {
		out[i] = k.Selector
	}
	return out
}

// Header returns every DKIM-Signature field ("DKIM-Signature: …\r\n"), one
// per key, to prepend to the message; nil before a successful Close.
func (s *Signer) Header() []byte {
	return s.signed
}

// headerList is h=: each signable field as many times as it occurs, plus
// once more for the oversigned ones. ses replaces Message-ID and Date with
// its own, so for it they are left out entirely.
func (s *Signer) headerList() []string {
	h := make([]string, 0, len(s.fields)+len(oversigned))
	for i, name := range signedHeaders {
		lower := signedLower[i]
		if s.profile == ProfileSES && (lower == "message-id" || lower == "date") {
			continue
		}
		// Names compare as verifiers compare them (strings.EqualFold).
		n := 0
		for _, f := range s.fields {
			if strings.EqualFold(fieldName(f), name) {
				n++
			}
		}
		if oversigned[lower] {
			n++
		}
		for range n {
			h = append(h, name)
		}
	}
	return h
}

// canonicalFields is what every key's signature hashes first (RFC 6376
// §3.7): the fields h names, in h's order, each name taking the next
// instance from the bottom of the header, as verifiers do for a name
// listed more than once, in relaxed form. It is the same for every key,
// so it is made once per message. Each distinct name keeps a cursor that
// only moves up the header, so a header with thousands of one field costs
// one pass per name, not one per entry of h (issue 8 item 7).
func canonicalFields(h []string, fields []string) []byte {
	n := 0
	for _, f := range fields {
		n += len(f) // the relaxed form is never longer
	}
	out := make([]byte, 0, n)
	type cursor struct {
		name string
		next int // the field to look at next, going up
	}
	cursors := make([]cursor, 0, len(signedHeaders))
	for _, name := range h {
		i := slices.IndexFunc(cursors, func(c cursor) bool { return sameName(c.name, name) })
		if i < 0 {
			cursors = append(cursors, cursor{name, len(fields) - 1})
			i = len(cursors) - 1
		}
		c := &cursors[i]
		for c.next >= 0 && !sameName(fieldName(fields[c.next]), name) {
			c.next--
		}
		if c.next >= 0 {
			out = appendRelaxedHeader(out, fields[c.next])
			c.next--
		}
	}
	return out
}

// sameName reports whether two field names are the same once lower-cased
// (strings.ToLower, as relaxed canonicalization lower-cases them). For
// ASCII names that is strings.EqualFold, which makes no copies.
func sameName(a, b string) bool {
	if isASCII(a) && isASCII(b) {
		return strings.EqualFold(a, b)
	}
	return lowerEqual(a, b)
}

// lowerEqual compares the names lower-cased, as the grouping by
// strings.ToLower always did. strings.EqualFold is not the same outside
// ASCII: it folds "ſ" (U+017F) to "s", which ToLower leaves alone.
func lowerEqual(a, b string) bool {
	la, lb := strings.ToLower(a), strings.ToLower(b)
	return la == lb
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// appendSignField appends one DKIM-Signature field to dst: the hash of the
// signed fields (canonicalFields) and of this field itself with an empty
// b=, signed with key.
func appendSignField(dst []byte, key Key, h []string, signed, bh []byte, t time.Time) ([]byte, error) {
	var algo string
	switch key.Signer.(type) {
	case *rsa.PrivateKey:
		algo = "rsa-sha256"
	case ed25519.PrivateKey:
		algo = "ed25519-sha256"
	default:
		return dst, fmt.Errorf("unsupported key type %T", key.Signer)
	}
	start := len(dst)
	dst = appendFormatField(dst, algo, key, h, bh, t)
	dst = append(dst, "b=\r\n"...)
	own := appendRelaxedHeader(make([]byte, 0, len(dst)-start), dst[start:])
	dst = dst[:len(dst)-2] // keep "b=", drop its CRLF
	d := sha256.New()
	d.Write(signed)
	d.Write(bytes.TrimRight(own, "\r\n"))
	digest := d.Sum(make([]byte, 0, sha256.Size))

	// RSA signs the digest with PKCS#1 v1.5; Ed25519 signs the 32-byte
	// digest itself as its message (RFC 8463), hence no hash for it.
	opts := crypto.Hash(0)
	if algo == "rsa-sha256" {
		opts = crypto.SHA256
	}
	sig, err := key.sign(digest, opts)
	if err != nil {
		return dst[:start], err
	}
	// b= in lines of 72 characters; verifiers strip whitespace inside it.
	b64 := base64.StdEncoding.AppendEncode(make([]byte, 0, base64.StdEncoding.EncodedLen(len(sig))), sig)
	for first := 72 - len(" b="); len(b64) > first; first = 72 {
		dst = append(append(dst, b64[:first]...), "\r\n "...)
		b64 = b64[first:]
	}
	return append(append(dst, b64...), '\r', '\n'), nil
}

// appendFormatField appends every tag but b's value, folded below 78
// columns:
//
//	DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;
//	 s=s2026r; t=1795982125; h=From:From:To:To:Subject:Subject:Date:Date:
//	 Message-ID:Message-ID:...; bh=...;
//	 b=
func appendFormatField(b []byte, algo string, key Key, h []string, bh []byte, t time.Time) []byte {
	const head = "DKIM-Signature:"
	b = append(b, head...)
	line := len(head)
	// word appends a space and the parts, on a new line if they would
	// reach past column 78. The names of h= after the first go on without
	// a space while they fit (h= folds after a colon, where RFC 6376
	// allows whitespace).
	word := func(parts ...string) {
		n := 0
		for _, p := range parts {
			n += len(p)
		}
		if line+1+n > 78 {
			b = append(b, "\r\n"...)
			line = 0
		}
		b = append(b, ' ')
		for _, p := range parts {
			b = append(b, p...)
		}
		line += 1 + n
	}
	var num [20]byte
	word("v=1;")
	word("a=", algo, ";")
	word("c=relaxed/relaxed;")
	word("d=", key.Domain, ";")
	word("s=", key.Selector, ";")
	word("t=", string(strconv.AppendInt(num[:0], t.Unix(), 10)), ";")
	for i, name := range h {
		pre, post := "", ":"
		if i == 0 {
			pre = "h="
		}
		if i == len(h)-1 {
			post = ";"
		}
		if n := len(pre) + len(name) + len(post); i > 0 && line+n <= 78 {
			b = append(append(append(b, pre...), name...), post...)
			line += n
			continue
		}
		word(pre, name, post)
	}
	word("bh=", base64.StdEncoding.EncodeToString(bh), ";")
	return append(b, "\r\n "...)
}
