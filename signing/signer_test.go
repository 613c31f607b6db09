package signing

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluicemail/sluice/internal/golden"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// fixedClock is the t= of golden signatures: 2026-11-29 12:00:00 UTC.
func fixedClock() time.Time { return time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC) }

// testEd25519 is a fixed key so signatures are reproducible (Ed25519 is deterministic).
func testEd25519() ed25519.PrivateKey {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	return ed25519.NewKeyFromSeed(seed)
}

func testRSA(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	b, err := os.ReadFile("testdata/rsa2048.pkcs1.pem")
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParseKeyPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return k.(*rsa.PrivateKey)
}

// sampleMessage is a typical transactional message: a multipart body with a
// dot line, a line that is only a dot, trailing whitespace and empty lines.
const sampleMessage = "Received: from app1 (app1 [10.0.0.5]) by relay.example.com\r\n" +
	"From: Billing <billing@example.com>\r\n" +
	"To: Alice <alice@example.net>,\r\n\tBob <bob@example.net>\r\n" +
	"Subject: Your invoice  #1234\r\n" +
	"Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n" +
	"Message-ID: <inv-1234@example.com>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"X-Mailer: billing 2.1\r\n" +
	"List-Unsubscribe: <https://example.com/u/1234>\r\n" +
	"\r\n" +
	"Hello Alice,\r\n" +
	"\r\n" +
	"..a line that SMTP dot-stuffs\r\n" +
	".\r\n" +
	"trailing space   \r\n" +
	"\ttabbed  text\r\n" +
	"\r\n\r\n"

// sign runs msg through a signer in chunks of size chunk (0: one write)
// and returns the signature fields.
func sign(t testing.TB, kr *Keyring, domain, profile, msg string, chunk int) []byte {
	t.Helper()
	s, err := kr.NewSigner(domain, profile)
	if err != nil {
		t.Fatal(err)
	}
	if s == nil {
		t.Fatalf("no signer for %s", domain)
	}
	b := []byte(msg)
	if chunk <= 0 {
		chunk = len(b) + 1
	}
	for len(b) > 0 {
		n := min(chunk, len(b))
		if _, err := s.Write(b[:n]); err != nil {
			t.Fatal(err)
		}
		b = b[n:]
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return s.Header()
}

// lookup is a DNS stub serving each key's TXTValue.
func lookup(keys ...Key) func(string) ([]string, error) {
	txt := make(map[string]string)
	for _, k := range keys {
		txt[strings.ToLower(k.Selector+"._domainkey."+k.Domain)] = TXTValue(k.Signer.Public())
	}
	return func(name string) ([]string, error) {
		if v, ok := txt[strings.ToLower(name)]; ok {
			return []string{v}, nil
		}
		return nil, &dkimNotFound{name}
	}
}

type dkimNotFound struct{ name string }

func (e *dkimNotFound) Error() string { return "no such record: " + e.name }

func verify(t testing.TB, msg []byte, keys ...Key) []*dkim.Verification {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: lookup(keys...)})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return vs
}

func requireAllVerify(t *testing.T, msg []byte, want int, keys ...Key) []*dkim.Verification {
	t.Helper()
	vs := verify(t, msg, keys...)
	if len(vs) != want {
		t.Fatalf("got %d signatures, want %d:\n%s", len(vs), want, msg)
	}
	for _, v := range vs {
		if v.Err != nil {
			t.Fatalf("signature d=%s does not verify: %v\n%s", v.Domain, v.Err, msg)
		}
	}
	return vs
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	rsaKey := Key{Domain: "example.com", Selector: "s2026r", Signer: testRSA(t)}
	edKey := Key{Domain: "example.com", Selector: "s2026e", Signer: testEd25519()}
	for _, tc := range []struct {
		name string
		keys []Key
		algs []string
	}{
		{"rsa", []Key{rsaKey}, []string{"rsa-sha256"}},
		{"ed25519", []Key{edKey}, []string{"ed25519-sha256"}},
		{"dual", []Key{rsaKey, edKey}, []string{"rsa-sha256", "ed25519-sha256"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			kr := NewKeyring(tc.keys)
			for _, chunk := range []int{0, 1, 7, 4096} {
				sig := sign(t, kr, "Example.COM", "", sampleMessage, chunk)
				if got := bytes.Count(sig, []byte("DKIM-Signature:")); got != len(tc.keys) {
					t.Fatalf("chunk %d: %d DKIM-Signature fields, want %d:\n%s", chunk, got, len(tc.keys), sig)
				}
				for _, a := range tc.algs {
					if !bytes.Contains(sig, []byte("a="+a+";")) {
						t.Errorf("chunk %d: no a=%s in\n%s", chunk, a, sig)
					}
				}
				for _, line := range strings.Split(strings.TrimSuffix(string(sig), "\r\n"), "\r\n") {
					if len(line) > 78 {
						t.Errorf("line longer than 78 columns: %q", line)
					}
				}
				vs := requireAllVerify(t, append(sig, sampleMessage...), len(tc.keys), tc.keys...)
				for _, v := range vs {
					if v.Domain != "example.com" {
						t.Errorf("d=%s, want example.com", v.Domain)
					}
				}
			}
		})
	}
}

// Writing in any chunking gives the same bytes: the header scanner must
// find the blank line wherever the writes split it.
func TestChunkingIsInvisible(t *testing.T) {
	t.Parallel()
	kr := NewKeyring([]Key{{Domain: "example.com", Selector: "e", Signer: testEd25519()}})
	kr.Now = fixedClock
	want := sign(t, kr, "example.com", "", sampleMessage, 0)
	for chunk := 1; chunk < 40; chunk++ {
		if got := sign(t, kr, "example.com", "", sampleMessage, chunk); !bytes.Equal(got, want) {
			t.Fatalf("chunk %d:\n%s\nwant\n%s", chunk, got, want)
		}
	}
}

func TestHeaderList(t *testing.T) {
	t.Parallel()
	key := Key{Domain: "example.com", Selector: "e", Signer: testEd25519()}
	kr := NewKeyring([]Key{key})
	msg := "Return-Path: <bounce@example.com>\r\n" + sampleMessage
	msg = strings.Replace(msg, "\r\n\r\n", "\r\nCc: carol@example.net\r\nDKIM-Signature: v=1; old\r\nX-Campaign: 7\r\n\r\n", 1)
	vs := verify(t, append(sign(t, kr, "example.com", "", msg, 0), msg...), key)
	var got []string
	for _, v := range vs {
		if v.Domain == "example.com" && v.Err == nil {
			got = v.HeaderKeys
		}
	}
	want := []string{
		"From", "From", "To", "To", "Cc", "Subject", "Subject", "Date", "Date",
		"Message-ID", "Message-ID", "Reply-To", "Content-Type", "Content-Type",
		"MIME-Version", "MIME-Version", "List-Unsubscribe",
	}
	if strings.Join(got, ":") != strings.Join(want, ":") {
		t.Fatalf("h=%s\nwant %s", strings.Join(got, ":"), strings.Join(want, ":"))
	}
}

func TestTamperingBreaksSignature(t *testing.T) {
	t.Parallel()
	rsaKey := Key{Domain: "example.com", Selector: "r", Signer: testRSA(t)}
	edKey := Key{Domain: "example.com", Selector: "e", Signer: testEd25519()}
	kr := NewKeyring([]Key{rsaKey, edKey})
	sig := string(sign(t, kr, "example.com", "", sampleMessage, 0))
	for _, tc := range []struct {
		name     string
		edit     func(string) string
		verifies bool
	}{
		{"untouched", func(m string) string { return m }, true},
		{"unsigned header added", func(m string) string { return "X-Spam-Score: 0\r\n" + m }, true},
		{"trace header added", func(m string) string { return "Received: from relay by mx\r\n" + m }, true},
		{"body changed", func(m string) string { return strings.Replace(m, "Hello Alice", "Hello Mallory", 1) }, false},
		{"body line added", func(m string) string { return strings.TrimSuffix(m, "\r\n\r\n") + "\r\nP.S. wire money\r\n" }, false},
		{"signed header changed", func(m string) string { return strings.Replace(m, "#1234", "#9999", 1) }, false},
		{"second From prepended", func(m string) string { return "From: ceo@example.com\r\n" + m }, false},
		{"second Subject prepended", func(m string) string { return "Subject: urgent\r\n" + m }, false},
		{"absent Reply-To added", func(m string) string { return "Reply-To: phish@evil.test\r\n" + m }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			msg := []byte(sig + tc.edit(sampleMessage))
			vs := verify(t, msg, rsaKey, edKey)
			if len(vs) != 2 {
				t.Fatalf("%d signatures, want 2", len(vs))
			}
			for _, v := range vs {
				if ok := v.Err == nil; ok != tc.verifies {
					t.Errorf("verifies=%v (err %v), want %v", ok, v.Err, tc.verifies)
				}
			}
		})
	}
}

// SES replaces Message-ID and Date and refuses a second signature.
func TestProfileSES(t *testing.T) {
	t.Parallel()
	edKey := Key{Domain: "example.com", Selector: "e", Signer: testEd25519()}
	rsaKey := Key{Domain: "example.com", Selector: "r", Signer: testRSA(t)}
	sesRewrite := func(m string) string {
		m = strings.Replace(m, "Message-ID: <inv-1234@example.com>", "Message-ID: <0102019a-1234@eu-west-1.amazonses.com>", 1)
		return strings.Replace(m, "Date: Sun, 29 Nov 2026 12:00:00 +0000", "Date: Sun, 29 Nov 2026 12:00:03 +0000", 1)
	}

	// Ed25519 first in the config: ses still picks the RSA key.
	kr := NewKeyring([]Key{edKey, rsaKey})
	sig := sign(t, kr, "example.com", ProfileSES, sampleMessage, 0)
	if n := bytes.Count(sig, []byte("DKIM-Signature:")); n != 1 {
		t.Fatalf("ses: %d signatures, want 1:\n%s", n, sig)
	}
	if !bytes.Contains(sig, []byte("a=rsa-sha256;")) || !bytes.Contains(sig, []byte("s=r;")) {
		t.Fatalf("ses did not sign with the first RSA key:\n%s", sig)
	}
	vs := requireAllVerify(t, append(sig, sesRewrite(sampleMessage)...), 1, rsaKey)
	for _, h := range vs[0].HeaderKeys {
		if strings.EqualFold(h, "Message-ID") || strings.EqualFold(h, "Date") {
			t.Errorf("ses signature lists %s in h=", h)
		}
	}

	// The control: a generic signature breaks under the same rewrite.
	gen := sign(t, kr, "example.com", ProfileGeneric, sampleMessage, 0)
	for _, v := range verify(t, append(gen, sesRewrite(sampleMessage)...), edKey, rsaKey) {
		if v.Err == nil {
			t.Errorf("generic signature survived the SES rewrite")
		}
	}

	// Only Ed25519 configured: ses signs with it rather than not at all.
	edOnly := NewKeyring([]Key{edKey, {Domain: "example.com", Selector: "e2", Signer: testEd25519()}})
	sig = sign(t, edOnly, "example.com", ProfileSES, sampleMessage, 0)
	if n := bytes.Count(sig, []byte("DKIM-Signature:")); n != 1 || !bytes.Contains(sig, []byte("s=e;")) {
		t.Fatalf("ses with ed25519 keys only:\n%s", sig)
	}
}

func TestOtherProfilesSignLikeGeneric(t *testing.T) {
	t.Parallel()
	kr := NewKeyring([]Key{
		{Domain: "example.com", Selector: "e", Signer: testEd25519()},
		{Domain: "example.com", Selector: "r", Signer: testRSA(t)},
	})
	kr.Now = fixedClock
	want := sign(t, kr, "example.com", ProfileGeneric, sampleMessage, 0)
	for _, p := range []string{"", ProfileSendGrid, ProfilePostmark, ProfileMailgun} {
		if got := sign(t, kr, "example.com", p, sampleMessage, 0); !bytes.Equal(got, want) {
			t.Errorf("profile %q signs differently from generic:\n%s", p, got)
		}
	}
	if _, err := kr.NewSigner("example.com", "mandrill"); err == nil {
		t.Error("unknown profile accepted")
	}
}

func TestNoKeyForDomain(t *testing.T) {
	t.Parallel()
	kr := NewKeyring([]Key{{Domain: "Example.com", Selector: "e", Signer: testEd25519()}})
	for _, d := range []string{"example.net", "sub.example.com", ""} {
		s, err := kr.NewSigner(d, "")
		if s != nil || err != nil {
			t.Errorf("NewSigner(%q) = %v, %v; want nil, nil", d, s, err)
		}
		if kr.Has(d) {
			t.Errorf("Has(%q) = true", d)
		}
	}
	if !kr.Has("EXAMPLE.COM") || !kr.Has("example.com.") {
		t.Error("Has is not case-insensitive")
	}
	var nilRing *Keyring
	if s, err := nilRing.NewSigner("example.com", ""); s != nil || err != nil {
		t.Errorf("nil keyring: %v, %v", s, err)
	}
}

func TestBlankLineRuns(t *testing.T) {
	t.Parallel()
	key := Key{Domain: "example.com", Selector: "e", Signer: testEd25519()}
	kr := NewKeyring([]Key{key})
	head := "From: a@example.com\r\nSubject: blanks\r\n\r\n"
	many := strings.Repeat("\r\n", 100_000) // longer than the 64 KiB pending buffer
	for name, body := range map[string]string{
		"inside":           "top" + many + "bottom\r\n",
		"trailing":         "top\r\n" + many,
		"inside+trailing":  "a" + many + "b" + many,
		"only blank lines": many,
		"lone LFs":         "top" + strings.Repeat("\n", 70_000) + "x\n",
		"empty":            "",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			msg := head + body
			requireAllVerify(t, append(sign(t, kr, "example.com", "", msg, 32<<10), msg...), 1, key)
		})
	}
	// Trailing blank lines are not signed: the spilled run must roll back.
	a := sign(t, kr, "example.com", "", head+"x\r\n", 0)
	b := sign(t, kr, "example.com", "", head+"x\r\n"+many, 0)
	if bh(a) != bh(b) {
		t.Errorf("trailing blank lines changed the body hash: %s vs %s", bh(a), bh(b))
	}
}

func bh(sig []byte) string {
	_, v, _ := strings.Cut(string(sig), "bh=")
	v, _, _ = strings.Cut(v, ";")
	return v
}

// A message without the blank line is a header-only message: its body is
// empty, exactly as if the blank line were there.
func TestHeaderOnlyMessage(t *testing.T) {
	t.Parallel()
	key := Key{Domain: "example.com", Selector: "e", Signer: testEd25519()}
	kr := NewKeyring([]Key{key})
	kr.Now = fixedClock
	h := "From: a@example.com\r\nSubject: no body\r\n"
	sig := sign(t, kr, "example.com", "", h, 0)
	if !bytes.Equal(sig, sign(t, kr, "example.com", "", h+"\r\n", 0)) {
		t.Fatal("header-only message signs differently from one with an empty body")
	}
	requireAllVerify(t, append(sig, h+"\r\n"...), 1, key)
}

func TestHeaderTooLarge(t *testing.T) {
	t.Parallel()
	kr := NewKeyring([]Key{{Domain: "example.com", Selector: "e", Signer: testEd25519()}})
	s, err := kr.NewSigner("example.com", "")
	if err != nil {
		t.Fatal(err)
	}
	line := []byte("X-Filler: " + strings.Repeat("a", 1000) + "\r\n")
	var werr error
	for i := 0; i < 2000 && werr == nil; i++ {
		_, werr = s.Write(line)
	}
	if werr != ErrHeaderTooLarge {
		t.Fatalf("Write error %v, want ErrHeaderTooLarge", werr)
	}
	if err := s.Close(); err != ErrHeaderTooLarge {
		t.Fatalf("Close error %v", err)
	}
	if s.Header() != nil {
		t.Fatal("Header() after a failed signature")
	}
	// A large body is fine: only the header block is bounded.
	s, _ = kr.NewSigner("example.com", "")
	s.Write([]byte("From: a@example.com\r\n\r\n"))
	for range 2000 {
		if _, err := s.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestGoldenSignature(t *testing.T) {
	t.Parallel()
	kr := NewKeyring([]Key{{Domain: "example.com", Selector: "s2026e", Signer: testEd25519()}})
	kr.Now = fixedClock
	golden.Check(t, "testdata/signature-ed25519.golden", sign(t, kr, "example.com", "", sampleMessage, 0), *update)
	kr.Now = fixedClock
	golden.Check(t, "testdata/signature-ed25519-ses.golden", sign(t, kr, "example.com", ProfileSES, sampleMessage, 0), *update)
}

var _ crypto.Signer = ed25519.PrivateKey(nil)

func TestFoldedFirstLineRefused(t *testing.T) {
	t.Parallel()
	kr := NewKeyring([]Key{{Domain: "example.com", Selector: "e", Signer: testEd25519()}})
	for _, msg := range []string{" folded\r\nFrom: a@example.com\r\n\r\nbody\r\n", "\tfolded"} {
		s, _ := kr.NewSigner("example.com", "")
		s.Write([]byte(msg))
		if err := s.Close(); err != ErrFoldedFirstLine {
			t.Errorf("%q: Close() = %v, want ErrFoldedFirstLine", msg, err)
		}
	}
}
