package signing

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/golden"
)

func TestParseKeyPEM(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		file    string
		wantRSA bool
		wantErr string
	}{
		{file: "rsa2048.pkcs1.pem", wantRSA: true},
		{file: "rsa2048.pkcs8.pem", wantRSA: true},
		{file: "ed25519.pkcs8.pem"},
		{file: "ecdsa.pem", wantErr: "no PEM private key"}, // "EC PRIVATE KEY" is not a DKIM key
		{file: "rsa512.pem", wantErr: "too short"},
	} {
		b, err := os.ReadFile(filepath.Join("testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		k, err := ParseKeyPEM(b)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want %q", tc.file, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.file, err)
			continue
		}
		if _, isRSA := k.(*rsa.PrivateKey); isRSA != tc.wantRSA {
			t.Errorf("%s: got %T", tc.file, k)
		}
	}
	// PKCS#1 and PKCS#8 encodings of one key are the same key.
	p1, _ := os.ReadFile("testdata/rsa2048.pkcs1.pem")
	p8, _ := os.ReadFile("testdata/rsa2048.pkcs8.pem")
	k1, _ := ParseKeyPEM(p1)
	k8, _ := ParseKeyPEM(p8)
	if !k1.(*rsa.PrivateKey).Equal(k8) {
		t.Error("PKCS#1 and PKCS#8 files parse to different keys")
	}
	for _, bad := range []string{"", "not pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := ParseKeyPEM([]byte(bad)); err == nil {
			t.Errorf("ParseKeyPEM(%q) accepted", bad)
		}
	}
	// A certificate before the key is skipped.
	ed, _ := os.ReadFile("testdata/ed25519.pkcs8.pem")
	withCert := append([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), ed...)
	if _, err := ParseKeyPEM(withCert); err != nil {
		t.Errorf("key after a certificate: %v", err)
	}
}

func TestGenerateAndMarshal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		algo string
		bits int
	}{{"ed25519", 0}, {"rsa", 1024}, {"RSA", 1024}} {
		k, err := GenerateKey(tc.algo, tc.bits)
		if err != nil {
			t.Fatalf("%s: %v", tc.algo, err)
		}
		pemBytes, err := MarshalKeyPEM(k)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(pemBytes, []byte("-----BEGIN PRIVATE KEY-----\n")) {
			t.Errorf("%s: not PKCS#8:\n%s", tc.algo, pemBytes)
		}
		back, err := ParseKeyPEM(pemBytes)
		if err != nil {
			t.Fatal(err)
		}
		if !back.(interface{ Equal(crypto.PrivateKey) bool }).Equal(k) {
			t.Errorf("%s: key changed through PEM", tc.algo)
		}
		// A generated key signs, and its published record verifies.
		key := Key{Domain: "gen.example", Selector: "k", Signer: k}
		msg := "From: a@gen.example\r\n\r\nhi\r\n"
		requireAllVerify(t, append(sign(t, NewKeyring([]Key{key}), "gen.example", "", msg, 0), msg...), 1, key)
	}
	for _, tc := range []struct {
		algo string
		bits int
	}{{"rsa", 512}, {"rsa", 16384}, {"dsa", 0}, {"ecdsa", 256}} {
		if _, err := GenerateKey(tc.algo, tc.bits); err == nil {
			t.Errorf("GenerateKey(%q, %d) accepted", tc.algo, tc.bits)
		}
	}
}

func TestDefaultRSABits(t *testing.T) {
	if testing.Short() {
		t.Skip("generates an RSA-2048 key")
	}
	t.Parallel()
	k, err := GenerateKey("", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := k.(*rsa.PrivateKey).N.BitLen(); n != 2048 {
		t.Fatalf("default key has %d bits", n)
	}
}

func TestDNSRecordGolden(t *testing.T) {
	t.Parallel()
	rsaKey := testRSA(t)
	ed := testEd25519()
	out := DNSRecord("example.com", "s2026r", rsaKey.Public()) + "\n" +
		DNSRecord("example.com.", "s2026e", ed.Public()) + "\n"
	golden.Check(t, "testdata/dns.golden", []byte(out), *update)

	// The RSA-2048 value (about 410 bytes) needs two strings: 255 + the rest,
	// which concatenate back to the unsplit value.
	rec := DNSRecord("example.com", "s2026r", rsaKey.Public())
	inner := strings.TrimSuffix(strings.TrimPrefix(rec, `s2026r._domainkey.example.com. IN TXT ( "`), `" )`)
	parts := strings.Split(inner, `" "`)
	if len(parts) != 2 || len(parts[0]) != 255 {
		t.Fatalf("split into %d strings, first %d bytes: %s", len(parts), len(parts[0]), rec)
	}
	if strings.Join(parts, "") != TXTValue(rsaKey.Public()) {
		t.Fatal("split strings do not concatenate to TXTValue")
	}
	// Ed25519: the raw 32-byte key (RFC 8463), one short string.
	if got := TXTValue(ed.Public()); got != "v=DKIM1; k=ed25519; p=A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=" {
		t.Fatalf("ed25519 TXT value %q", got)
	}
	if TXTValue(ed) != TXTValue(ed.Public()) {
		t.Error("TXTValue of a private key differs from its public key's")
	}
	if TXTValue("not a key") != "" {
		t.Error("TXTValue of a non-key")
	}
}

func TestLoadKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rsaPEM, _ := os.ReadFile("testdata/rsa2048.pkcs1.pem")
	edPEM, _ := os.ReadFile("testdata/ed25519.pkcs8.pem")
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rsaFile, edFile := write("r.pem", rsaPEM), write("e.pem", edPEM)
	kr, err := LoadKeys([]config.DKIMKey{
		{Domain: "Example.com", Selector: "r", KeyFile: rsaFile},
		{Domain: "example.com", Selector: "e", KeyFile: edFile},
		{Domain: "other.example", Selector: "e", KeyFile: edFile},
	})
	if err != nil {
		t.Fatal(err)
	}
	keys := kr.Keys("EXAMPLE.COM")
	if len(keys) != 2 || keys[0].Selector != "r" || keys[1].Selector != "e" {
		t.Fatalf("keys for example.com: %+v", keys)
	}
	if _, ok := keys[1].Signer.(ed25519.PrivateKey); !ok {
		t.Errorf("second key is %T", keys[1].Signer)
	}
	if !kr.Has("other.example") || kr.Has("example.org") {
		t.Error("Has")
	}

	bad := write("bad.pem", []byte("garbage"))
	_, err = LoadKeys([]config.DKIMKey{
		{Domain: "example.com", Selector: "a", KeyFile: filepath.Join(dir, "missing.pem")},
		{Domain: "example.com", Selector: "b", KeyFile: bad},
		{Domain: "example.com", Selector: "c", KeyFile: edFile},
		{Domain: "EXAMPLE.com", Selector: "C", KeyFile: edFile},
	})
	if err == nil {
		t.Fatal("LoadKeys accepted a missing file, a bad file and a duplicate selector")
	}
	for _, want := range []string{"missing.pem", bad + ": no PEM private key", "selector C is configured twice"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error does not wrap ErrNotExist: %v", err)
	}
}

func TestWriteKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "example.com.ed25519.pem")
	k := testEd25519()
	if err := WriteKeyFile(path, k, false); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if back, err := ParseKeyPEM(b); err != nil || !back.(ed25519.PrivateKey).Equal(k) {
		t.Fatalf("written key does not read back: %v", err)
	}

	_, other, _ := ed25519.GenerateKey(nil)
	err = WriteKeyFile(path, other, false)
	if err == nil || !strings.Contains(err.Error(), "file exists") {
		t.Fatalf("overwrote an existing key: %v", err)
	}
	if b2, _ := os.ReadFile(path); !bytes.Equal(b, b2) {
		t.Fatal("existing key changed")
	}
	if err := WriteKeyFile(path, other, true); err != nil {
		t.Fatal(err)
	}
	b3, _ := os.ReadFile(path)
	if back, _ := ParseKeyPEM(b3); !back.(ed25519.PrivateKey).Equal(other) {
		t.Fatal("overwrite did not replace the key")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temp files left behind: %v", entries)
	}
	if err := WriteKeyFile(filepath.Join(dir, "no", "such", "dir.pem"), k, false); err == nil {
		t.Error("wrote into a missing directory")
	}
}
