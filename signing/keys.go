package signing

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sluicemail/sluice/config"
)

// Key is one signing key for one domain and selector. Signer is an
// *rsa.PrivateKey or an ed25519.PrivateKey.
type Key struct {
	Domain, Selector string
	Signer           crypto.Signer

	native *nativeRSA // the key in libcrypto, if loaded there (rsa.go)
}

// Keyring holds every configured key, grouped by domain (case-insensitive),
// in configuration order. It is immutable after construction: a reload
// builds a new Keyring, so signers in flight keep the keys they started with.
type Keyring struct {
	// Now is the clock for the t= tag; nil means time.Now.
	Now func() time.Time

	byDomain map[string][]Key
}

// Key-size bounds. Receivers ignore RSA keys below 1024 bits (RFC 8301);
// above 8192 bits signing costs seconds per message and buys nothing.
const (
	minRSABits     = 1024
	maxRSABits     = 8192
	defaultRSABits = 2048
)

// NewKeyring groups keys by domain. Keys keep their order, which matters:
// the ses profile signs with the domain's first RSA key.
func NewKeyring(keys []Key) *Keyring {
	k := &Keyring{byDomain: make(map[string][]Key)}
	keys = append([]Key(nil), keys...)
	loadNative(keys)
	for _, key := range keys {
		d := normDomain(key.Domain)
		k.byDomain[d] = append(k.byDomain[d], key)
	}
	return k
}

// LoadKeys reads every key file named in the configuration. Errors name the
// file; a duplicate domain+selector pair or a weak RSA key is an error too.
// Managed entries are skipped: LoadKeyring adds their active keys.
func LoadKeys(keys []config.DKIMKey) (*Keyring, error) {
	var errs []error
	seen := make(map[string]bool)
	loaded := make([]Key, 0, len(keys))
	for _, ck := range keys {
		if ck.Managed {
			continue
		}
		if ck.Domain == "" || ck.Selector == "" {
			errs = append(errs, fmt.Errorf("signing: key %s: domain and selector are required", ck.KeyFile))
			continue
		}
		id := strings.ToLower(ck.Selector) + "._domainkey." + normDomain(ck.Domain)
		if seen[id] {
			errs = append(errs, fmt.Errorf("signing: key %s: selector %s is configured twice for %s", ck.KeyFile, ck.Selector, ck.Domain))
			continue
		}
		seen[id] = true
		b, err := os.ReadFile(ck.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("signing: read key: %w", err))
			continue
		}
		s, err := ParseKeyPEM(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("signing: key %s: %w", ck.KeyFile, err))
			continue
		}
		loaded = append(loaded, Key{Domain: strings.TrimSuffix(ck.Domain, "."), Selector: ck.Selector, Signer: s})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return NewKeyring(loaded), nil
}

// Has reports whether any key is configured for domain (case-insensitive).
func (k *Keyring) Has(domain string) bool {
	return k != nil && len(k.byDomain[normDomain(domain)]) > 0
}

// Keys returns the keys configured for domain in configuration order (nil if none).
func (k *Keyring) Keys(domain string) []Key {
	if k == nil {
		return nil
	}
	return append([]Key(nil), k.byDomain[normDomain(domain)]...)
}

func normDomain(d string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
}

// GenerateKey makes a new signing key: algo "rsa" (also "") with bits
// (0 means 2048, at least 1024) or "ed25519" (bits is ignored).
func GenerateKey(algo string, bits int) (crypto.Signer, error) {
	switch strings.ToLower(algo) {
	case "", "rsa":
		if bits == 0 {
			bits = defaultRSABits
		}
		if bits < minRSABits || bits > maxRSABits {
			return nil, fmt.Errorf("signing: rsa key size %d: must be between %d and %d bits", bits, minRSABits, maxRSABits)
		}
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			return nil, fmt.Errorf("signing: generate rsa key: %w", err)
		}
		return k, nil
	case "ed25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("signing: generate ed25519 key: %w", err)
		}
		return k, nil
	default:
		return nil, fmt.Errorf("signing: unknown key algorithm %q (want rsa or ed25519)", algo)
	}
}

// MarshalKeyPEM encodes a key as a PKCS#8 "PRIVATE KEY" PEM block, the
// format every current tool (openssl, opendkim-genkey -b with openssl 3) reads.
func MarshalKeyPEM(k crypto.Signer) ([]byte, error) {
	if err := checkKey(k); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("signing: marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParseKeyPEM reads the first private key in PEM data: PKCS#1 ("RSA PRIVATE
// KEY") or PKCS#8 ("PRIVATE KEY") holding RSA or Ed25519. Other blocks before
// it (a certificate, "EC PARAMETERS") are skipped; encrypted keys are refused.
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	rest := b
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("no PEM private key found")
		}
		if _, enc := block.Headers["Proc-Type"]; enc {
			return nil, errors.New("encrypted PEM keys are not supported")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("encrypted PEM keys are not supported")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", strings.ToLower(block.Type), err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T", key)
		}
		if err := checkKey(s); err != nil {
			return nil, err
		}
		return s, nil
	}
}

// checkKey accepts only what DKIM verifiers accept: RSA of at least 1024
// bits and Ed25519 (RFC 8463).
func checkKey(k crypto.Signer) error {
	switch key := k.(type) {
	case *rsa.PrivateKey:
		if n := key.N.BitLen(); n < minRSABits {
			return fmt.Errorf("rsa key of %d bits is too short (minimum %d)", n, minRSABits)
		}
		return nil
	case ed25519.PrivateKey:
		if len(key) != ed25519.PrivateKeySize {
			return fmt.Errorf("ed25519 key has %d bytes, want %d", len(key), ed25519.PrivateKeySize)
		}
		return nil
	case nil:
		return errors.New("no key")
	default:
		return fmt.Errorf("unsupported key type %T (want rsa or ed25519)", k)
	}
}

// TXTValue is the unsplit DNS TXT value publishing pub: "v=DKIM1; k=rsa;
// p=<base64 PKIX>" or "v=DKIM1; k=ed25519; p=<base64 of the raw 32 bytes>"
// (RFC 8463). pub may also be the private key itself. It returns "" for a key
// type DKIM does not support.
func TXTValue(pub crypto.PublicKey) string {
	if s, ok := pub.(crypto.Signer); ok {
		pub = s.Public()
	}
	switch p := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(p)
		if err != nil {
			return ""
		}
		return "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PublicKey:
		return "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(p)
	default:
		return ""
	}
}

// txtChunk is the longest character-string a TXT record holds (RFC 1035 §3.3).
const txtChunk = 255

// DNSRecord is the zone-file line publishing pub for selector and domain:
//
//	SELECTOR._domainkey.DOMAIN. IN TXT ( "v=DKIM1; k=rsa; p=…" "…" )
//
// with the value split into quoted strings of at most 255 bytes, which
// resolvers concatenate. The value never contains quotes or backslashes.
func DNSRecord(domain, selector string, pub crypto.PublicKey) string {
	v := TXTValue(pub)
	var b strings.Builder
	b.WriteString(selector)
	b.WriteString("._domainkey.")
	b.WriteString(strings.TrimSuffix(domain, "."))
	b.WriteString(". IN TXT (")
	for len(v) > 0 {
		n := min(len(v), txtChunk)
		b.WriteString(` "`)
		b.WriteString(v[:n])
		b.WriteString(`"`)
		v = v[n:]
	}
	b.WriteString(" )")
	return b.String()
}

// writeTemp writes data to a new temp file (mode 0600) beside path and
// fsyncs it, for the caller to move onto path and then remove the temp name
// (a failure removes it here). what names the file in errors ("key " or "").
func writeTemp(path, what string, data []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return "", fmt.Errorf("signing: write %s%s: %w", what, path, err)
	}
	fail := func(op string, err error) (string, error) {
		f.Close()
		os.Remove(f.Name())
		return "", fmt.Errorf("signing: %s %s%s: %w", op, what, path, err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail("write", err)
	}
	if _, err := f.Write(data); err != nil {
		return fail("write", err)
	}
	if err := f.Sync(); err != nil {
		return fail("fsync", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("signing: write %s%s: %w", what, path, err)
	}
	return f.Name(), nil
}

// WriteKeyFile writes key as PKCS#8 PEM to path with mode 0600: a temp file
// in the same directory, fsync'd, then moved into place, so a crash leaves
// either no key or a whole one. An existing file is kept (error) unless
// overwrite is set; without overwrite the move is a hard link, which fails
// atomically when path exists, so two concurrent keygens cannot both win.
func WriteKeyFile(path string, key crypto.Signer, overwrite bool) error {
	data, err := MarshalKeyPEM(key)
	if err != nil {
		return err
	}
	tmp, err := writeTemp(path, "key ", data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp) // after link or rename this only removes the temp name
	dir := filepath.Dir(path)
	if overwrite {
		err = os.Rename(tmp, path)
	} else {
		err = os.Link(tmp, path)
	}
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("signing: write key %s: file exists (refusing to overwrite a key)", path)
		}
		return fmt.Errorf("signing: write key %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			return fmt.Errorf("signing: fsync directory %s: %w", dir, err)
		}
	}
	return nil
}
