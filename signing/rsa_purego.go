//go:build !cgo || purego

package signing

import (
	"crypto/rsa"
	"errors"
	"sync/atomic"
)

// rsaImplementation names the RSA signer compiled in: this build (without
// cgo, or with the purego tag) signs with Go's crypto/rsa.
const rsaImplementation = "go (crypto/rsa)"

// nativeRSA is never made in this build: every key signs in Go.
type nativeRSA struct{}

func newNativeRSA(*rsa.PrivateKey) (*nativeRSA, error) {
	return nil, errors.New("built without libcrypto")
}

func (*nativeRSA) sign([]byte) ([]byte, error) { return nil, errClosed }

func (*nativeRSA) close() {}

// liveNative counts keys held in libcrypto: none in this build.
var liveNative atomic.Int64
