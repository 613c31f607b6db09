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
	"strconv"
	"strings"
	"time"

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
// starting with a space or tab continues the previous field.
func (s *Signer) endHeader() {
	s.inBody = true
	if len(s.hdr) > 0 && (s.hdr[0] == ' ' || s.hdr[0] == '\t') {
		s.err = ErrFoldedFirstLine
	}
	// One field is built in a buffer and made a string once: appending
	// each continuation line to a string copied the field every time,
	// quadratic in a field folded over many lines (issue 8 item 7).
	var cur []byte
	for _, line := range strings.SplitAfter(string(s.hdr), "\n") {
		line = strings.TrimSuffix(line, "\n")
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			break // the empty line that ends the header
		}
		if cur != nil && line[0] != ' ' && line[0] != '\t' {
			s.fields = append(s.fields, string(cur))
			cur = cur[:0]
		}
		cur = append(append(cur, line...), "\r\n"...)
	}
	if cur != nil {
		s.fields = append(s.fields, string(cur))
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
	t := s.now()
	var out []byte
	for _, key := range s.keys {
		f, err := signField(key, h, s.fields, bh, t)
		if err != nil {
			s.err = fmt.Errorf("signing: sign with %s._domainkey.%s: %w", key.Selector, key.Domain, err)
			return s.err
		}
		out = append(out, f...)
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
	var h []string
	for _, name := range signedHeaders {
		lower := strings.ToLower(name)
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

// signField computes one DKIM-Signature field (RFC 6376 §3.7): the signed
// fields bottom-up per name, then this field itself with an empty b=.
func signField(key Key, h []string, fields []string, bh []byte, t time.Time) (string, error) {
	var algo string
	switch key.Signer.(type) {
	case *rsa.PrivateKey:
		algo = "rsa-sha256"
	case ed25519.PrivateKey:
		algo = "ed25519-sha256"
	default:
		return "", fmt.Errorf("unsupported key type %T", key.Signer)
	}
	unsigned := formatField(algo, key, h, bh, t)

	// Each name in h takes the next instance from the bottom of the header,
	// as verifiers do for a name listed more than once. The instances are
	// grouped by name once: searching the header again for each entry of h
	// was quadratic in a header with thousands of one field (issue 8 item 7).
	d := sha256.New()
	byName := make(map[string][]string)
	for _, f := range fields {
		k := strings.ToLower(fieldName(f))
		byName[k] = append(byName[k], f)
	}
	for _, name := range h {
		k := strings.ToLower(name)
		if l := byName[k]; len(l) > 0 {
			d.Write([]byte(relaxedHeader(l[len(l)-1])))
			byName[k] = l[:len(l)-1]
		}
	}
	d.Write([]byte(strings.TrimRight(relaxedHeader(unsigned+"b=\r\n"), "\r\n")))
	digest := d.Sum(nil)

	// RSA signs the digest with PKCS#1 v1.5; Ed25519 signs the 32-byte
	// digest itself as its message (RFC 8463), hence no hash for it.
	opts := crypto.Hash(0)
	if algo == "rsa-sha256" {
		opts = crypto.SHA256
	}
	sig, err := key.sign(digest, opts)
	if err != nil {
		return "", err
	}
	return unsigned + "b=" + foldBase64(base64.StdEncoding.EncodeToString(sig)) + "\r\n", nil
}

// formatField writes every tag but b's value, folded below 78 columns:
//
//	DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;
//	 s=s2026r; t=1795982125; h=From:From:To:To:Subject:Subject:Date:Date:
//	 Message-ID:Message-ID:...; bh=...;
//	 b=
func formatField(algo string, key Key, h []string, bh []byte, t time.Time) string {
	var b strings.Builder
	line := len("DKIM-Signature:")
	b.WriteString("DKIM-Signature:")
	word := func(w string) {
		if line+1+len(w) > 78 {
			b.WriteString("\r\n")
			line = 0
		}
		b.WriteByte(' ')
		b.WriteString(w)
		line += 1 + len(w)
	}
	word("v=1;")
	word("a=" + algo + ";")
	word("c=relaxed/relaxed;")
	word("d=" + key.Domain + ";")
	word("s=" + key.Selector + ";")
	word("t=" + strconv.FormatInt(t.Unix(), 10) + ";")
	// h= folds after a colon, where RFC 6376 allows whitespace.
	for i, name := range h {
		w := name + ":"
		if i == 0 {
			w = "h=" + w
		}
		if i == len(h)-1 {
			w = strings.TrimSuffix(w, ":") + ";"
		}
		if i > 0 && line+len(w) <= 78 {
			b.WriteString(w)
			line += len(w)
			continue
		}
		word(w)
	}
	word("bh=" + base64.StdEncoding.EncodeToString(bh) + ";")
	b.WriteString("\r\n ")
	return b.String()
}

// foldBase64 breaks the b= value into lines of 72 characters; verifiers
// strip whitespace inside it.
func foldBase64(v string) string {
	var b strings.Builder
	first := 72 - len(" b=")
	for len(v) > first {
		b.WriteString(v[:first])
		b.WriteString("\r\n ")
		v = v[first:]
		first = 72
	}
	b.WriteString(v)
	return b.String()
}
