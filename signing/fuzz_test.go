package signing

import (
	"bytes"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// FuzzSigner: whatever the message, signing either fails with one of the
// errors a message can cause (header block too large, folded first line) or produces a signature that
// go-msgauth's independent verifier accepts for the same bytes.
func FuzzSigner(f *testing.F) {
	f.Add([]byte(sampleMessage))
	f.Add([]byte("From: a@example.com\r\n\r\n"))
	f.Add([]byte("From: a@example.com\nSubject: lf only\n\nbody\n.\n"))
	f.Add([]byte("From: a@example.com\r\nSubject:  folded\r\n\t  line \r\n\r\n  lead\t \r\n\r\n\r\n"))
	f.Add([]byte("from:a@example.com\r\nFROM: b@example.com\r\nsubject:x\r\n\r\nbare\rcr\r\n"))
	f.Add([]byte("From: no blank line"))
	f.Add([]byte("\r\nbody without header\r\n"))
	f.Add([]byte(" leading continuation\r\nFrom: x\r\n\r\n"))
	key := Key{Domain: "example.com", Selector: "f", Signer: testEd25519()}
	kr := NewKeyring([]Key{key})
	opts := &dkim.VerifyOptions{LookupTXT: lookup(key), MaxVerifications: 1}
	f.Fuzz(func(t *testing.T, msg []byte) {
		s, err := kr.NewSigner("example.com", "")
		if err != nil {
			t.Fatal(err)
		}
		// Two writes split at an arbitrary point exercise the header scanner.
		cut := len(msg) / 3
		_, err1 := s.Write(msg[:cut])
		_, err2 := s.Write(msg[cut:])
		err = s.Close()
		if err1 != nil || err2 != nil || err != nil {
			if err == ErrHeaderTooLarge || err == ErrFoldedFirstLine {
				return
			}
			t.Fatalf("signing failed: %v %v %v", err1, err2, err)
		}
		sig := s.Header()
		if !bytes.HasPrefix(sig, []byte("DKIM-Signature: ")) || !bytes.HasSuffix(sig, []byte("\r\n")) {
			t.Fatalf("malformed field %q", sig)
		}
		signed := append(append([]byte(nil), sig...), msg...)
		if !hasHeaderEnd(msg) {
			// Signed as a header-only message: verify it with its blank line.
			if len(msg) > 0 && msg[len(msg)-1] != '\n' {
				signed = append(signed, "\r\n"...)
			}
			signed = append(signed, "\r\n"...)
		}
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed), opts)
		if err != nil && err != dkim.ErrTooManySignatures {
			t.Fatalf("verify: %v", err)
		}
		if len(vs) == 0 || vs[0].Err != nil || vs[0].Domain != "example.com" {
			t.Fatalf("own signature does not verify: %+v\n%q", vs, signed)
		}
	})
}

// hasHeaderEnd reports whether msg has the empty line that ends a header,
// read line by line as a verifier reads it (LF ends a line, one CR before
// it belongs to the ending).
func hasHeaderEnd(msg []byte) bool {
	lines := strings.Split(string(msg), "\n")
	for _, l := range lines[:len(lines)-1] { // the last piece has no LF
		if l == "" || l == "\r" {
			return true
		}
	}
	return false
}

// FuzzAppendRelaxedHeader: the allocation-free canonicalizer gives
// relaxedHeader's bytes for any field, from a string or from bytes, and
// sameName agrees with comparing strings.ToLower of both names (lowerEqual).
func FuzzAppendRelaxedHeader(f *testing.F) {
	for _, s := range []string{"From: a@b.c\r\n", " SUBJECT :\tx  y\r\n z \r\n", "no colon", "Fr\xc3\xa9m: x\r\n",
		"\x0bX-A\x0c: \xff\xfe\r\n", "K\xe2\x84\xaa: kelvin\r\n", ":", "a:b:c", "\u017fender: long s\r\n"} {
		f.Add(s, "From")
	}
	f.Fuzz(func(t *testing.T, field, name string) {
		want := relaxedHeader(field)
		if got := string(appendRelaxedHeader([]byte("x"), field)); got != "x"+want {
			t.Fatalf("appendRelaxedHeader(%q) = %q, want %q", field, got[1:], want)
		}
		if got := string(appendRelaxedHeader(nil, []byte(field))); got != want {
			t.Fatalf("appendRelaxedHeader([]byte(%q)) = %q, want %q", field, got, want)
		}
		if got, want := sameName(field, name), lowerEqual(field, name); got != want {
			t.Fatalf("sameName(%q, %q) = %v, want %v", field, name, got, want)
		}
	})
}
