package signing

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"errors"
)

// RSAImplementation names what makes this binary's RSA signatures:
// "openssl (OpenSSL 3.0.x …)" when built with cgo against libcrypto (the
// default where its headers are installed), "go (crypto/rsa)" in a pure-Go
// build (CGO_ENABLED=0 or -tags nolibcrypto). Both make the same bytes: PKCS#1
// v1.5 is deterministic. Ed25519 is always Go's.
func RSAImplementation() string { return rsaImplementation }

// loadNative gives each RSA key of keys its libcrypto copy, where this
// build has one. A key libcrypto refuses (a FIPS provider refusing RSA-1024,
// say) keeps signing in Go.
func loadNative(keys []Key) {
	for i := range keys {
		if rk, ok := keys[i].Signer.(*rsa.PrivateKey); ok {
			if n, err := newNativeRSA(rk); err == nil {
				keys[i].native = n
			}
		}
	}
}

// sign signs a DKIM digest: RSA through libcrypto when the key is loaded
// there, otherwise (and for Ed25519, and after Close) with the Go key.
func (k Key) sign(digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if k.native != nil && opts == crypto.SHA256 {
		sig, err := k.native.sign(digest)
		if !errors.Is(err, errClosed) {
			return sig, err
		}
	}
	return k.Signer.Sign(rand.Reader, digest, opts)
}

// Close frees the keys' libcrypto copies once the signatures in flight have
// finished; signers made from the Keyring before or after sign in Go from
// then on. Without Close the copies are freed when the garbage collector
// finds the Keyring (and every signer using it) unreachable.
func (k *Keyring) Close() {
	if k == nil {
		return
	}
	for _, keys := range k.byDomain {
		for _, key := range keys {
			if key.native != nil {
				key.native.close()
			}
		}
	}
}

// errClosed is returned by a native key after Close.
var errClosed = errors.New("libcrypto: key closed")
