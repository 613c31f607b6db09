package signing

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Record is a parsed DKIM key record (RFC 6376 §3.6.1): its tags in order,
// names lowercased, values with surrounding whitespace removed.
type Record struct {
	Tags []Tag
}

// Tag is one tag=value pair of a record.
type Tag struct{ Name, Value string }

// Get returns the value of tag name and whether it is present.
func (r Record) Get(name string) (string, bool) {
	for _, t := range r.Tags {
		if t.Name == name {
			return t.Value, true
		}
	}
	return "", false
}

// String formats the record as "n=v; n=v".
func (r Record) String() string {
	parts := make([]string, len(r.Tags))
	for i, t := range r.Tags {
		parts[i] = t.Name + "=" + t.Value
	}
	return strings.Join(parts, "; ")
}

// ParseRecord reads a tag-list (RFC 6376 §3.2): "name=value" pairs separated
// by ";", whitespace around names and values ignored, a trailing ";"
// allowed. A duplicate tag, an empty or malformed name, or a v= that is not
// DKIM1 (or not the first tag) makes it unparsable.
func ParseRecord(txt string) (Record, error) {
	var r Record
	seen := map[string]bool{}
	parts := strings.Split(txt, ";")
	for i, p := range parts {
		if strings.TrimSpace(p) == "" {
			if i == len(parts)-1 {
				break // a trailing ";" is allowed
			}
			return Record{}, errors.New("empty tag")
		}
		name, value, ok := strings.Cut(p, "=")
		if !ok {
			return Record{}, fmt.Errorf("tag %q has no '='", strings.TrimSpace(p))
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if !validTagName(name) {
			return Record{}, fmt.Errorf("bad tag name %q", name)
		}
		if seen[name] {
			return Record{}, fmt.Errorf("tag %s appears twice", name)
		}
		seen[name] = true
		value = strings.TrimSpace(value)
		if strings.ContainsAny(value, "=\x00") && name != "p" && name != "n" {
			// Values other than base64 keys and notes never hold '='.
			return Record{}, fmt.Errorf("tag %s: bad value %q", name, value)
		}
		r.Tags = append(r.Tags, Tag{name, value})
	}
	if v, ok := r.Get("v"); ok && (v != "DKIM1" || r.Tags[0].Name != "v") {
		return Record{}, fmt.Errorf("v=%s: want v=DKIM1 as the first tag", v)
	}
	return r, nil
}

func validTagName(s string) bool {
	if s == "" || !(s[0] >= 'a' && s[0] <= 'z') {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// DNS states of a key's record, as `sluice dkim status` and doctor print them.
const (
	DNSOK       = "ok"       // the record publishes exactly this key
	DNSMissing  = "missing"  // no record at the name
	DNSMismatch = "mismatch" // a record, but another key, a revoked or an unparsable one
	DNSError    = "error"    // DNS did not answer
)

// RecordName is the DNS name of a key's record: SELECTOR._domainkey.DOMAIN.
func RecordName(domain, selector string) string {
	return selector + "._domainkey." + strings.TrimSuffix(domain, ".")
}

// CheckRecord says whether the TXT records found at a key's name publish
// pub, and if not, why (for an operator). Records that are not key records
// at all (no p= tag) are ignored unless nothing else is there. Several key
// records are a mismatch even when one is right: a verifier may pick any.
func CheckRecord(txts []string, pub crypto.PublicKey) (state, detail string) {
	if s, ok := pub.(crypto.Signer); ok {
		pub = s.Public()
	}
	if len(txts) == 0 {
		return DNSMissing, "no TXT record"
	}
	var keyRecs []Record
	var firstErr error
	for _, t := range txts {
		r, err := ParseRecord(t)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if _, ok := r.Get("p"); ok {
			keyRecs = append(keyRecs, r)
		}
	}
	switch {
	case len(keyRecs) == 0 && firstErr != nil:
		return DNSMismatch, "unparsable record: " + firstErr.Error()
	case len(keyRecs) == 0:
		return DNSMismatch, "no DKIM key record (no p= tag)"
	case len(keyRecs) > 1:
		return DNSMismatch, fmt.Sprintf("%d DKIM key records at one name (verifiers may pick any): keep one", len(keyRecs))
	}
	if err := matchKey(keyRecs[0], pub); err != nil {
		return DNSMismatch, err.Error()
	}
	return DNSOK, "publishes the key"
}

// matchKey checks one key record against pub: k=, h=, s= allow DKIM email
// signing with sha256, and p= is the same public key.
func matchKey(r Record, pub crypto.PublicKey) error {
	k, _ := r.Get("k")
	if k == "" {
		k = "rsa"
	}
	if h, ok := r.Get("h"); ok && !listHas(h, "sha256") {
		return fmt.Errorf("h=%s does not allow sha256", h)
	}
	if s, ok := r.Get("s"); ok && !listHas(s, "email") && !listHas(s, "*") {
		return fmt.Errorf("s=%s does not allow email", s)
	}
	p, _ := r.Get("p")
	p = strings.Map(func(c rune) rune {
		if c == ' ' || c == '\t' || c == '\r' || c == '\n' {
			return -1
		}
		return c
	}, p)
	if p == "" {
		return errors.New("the key is revoked (empty p=)")
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return fmt.Errorf("p= is not base64: %v", err)
	}
	switch want := pub.(type) {
	case *rsa.PublicKey:
		if !strings.EqualFold(k, "rsa") {
			return fmt.Errorf("k=%s, want k=rsa", k)
		}
		var got *rsa.PublicKey
		if pk, err := x509.ParsePKIXPublicKey(der); err == nil {
			got, _ = pk.(*rsa.PublicKey)
		} else if pk, err := x509.ParsePKCS1PublicKey(der); err == nil {
			got = pk
		}
		if got == nil {
			return errors.New("p= is not an RSA public key")
		}
		if !got.Equal(want) {
			return errors.New("p= publishes a different RSA key")
		}
	case ed25519.PublicKey:
		if !strings.EqualFold(k, "ed25519") {
			return fmt.Errorf("k=%s, want k=ed25519", k)
		}
		if !bytes.Equal(der, want) {
			return errors.New("p= publishes a different Ed25519 key")
		}
	default:
		return fmt.Errorf("unsupported key type %T", pub)
	}
	return nil
}

func listHas(list, item string) bool {
	for _, x := range strings.Split(list, ":") {
		if strings.EqualFold(strings.TrimSpace(x), item) {
			return true
		}
	}
	return false
}
