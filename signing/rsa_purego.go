//go:build !cgo || purego || nolibcrypto

package signing

import (
	"crypto/rsa"
	"errors"
	"sync/atomic"
)

// rsaImplementation names the RSA signer compiled in: this build (without
// cgo, or with the nolibcrypto tag) signs with Go's crypto/rsa. The purego
// tag selects it too, but is the Go standard library's own switch to its
// generic code (no assembly: RSA-2048 signatures took 1,569 µs of CPU
// instead of 796 µs), so the Makefile and the Dockerfile no longer use it.
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
