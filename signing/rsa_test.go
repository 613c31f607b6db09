package signing

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/golden"
)

// native reports whether this build signs RSA through libcrypto; the tests
// that compare the two paths need it (a pure-Go build runs the rest).
func native(t *testing.T) {
	t.Helper()
	if !strings.HasPrefix(RSAImplementation(), "openssl") {
		t.Skipf("RSA signer is %s", RSAImplementation())
	}
}

// TestNativeRSAMatchesGo signs random digests with libcrypto and with
// crypto/rsa: PKCS#1 v1.5 is deterministic, so every signature must be the
// same bytes, for every key size DKIM allows that we make.
func TestNativeRSAMatchesGo(t *testing.T) {
	native(t)
	t.Parallel()
	keys := []*rsa.PrivateKey{testRSA(t)}
	for _, bits := range []int{1024, 3072} {
		k, err := GenerateKey("rsa", bits)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.(*rsa.PrivateKey))
	}
	for _, k := range keys {
		n, err := newNativeRSA(k)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 50 {
			digest := make([]byte, 32)
			rand.Read(digest)
			got, err := n.sign(digest)
			if err != nil {
				t.Fatal(err)
			}
			want, err := rsa.SignPKCS1v15(nil, k, crypto.SHA256, digest)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%d-bit key, digest %d: libcrypto and crypto/rsa signatures differ", k.N.BitLen(), i)
			}
		}
		n.close()
	}
}

// TestNativeAndGoSignMessagesAlike signs whole messages through a Keyring
// with libcrypto and through one whose native keys are closed (the Go path),
// and checks that the fields are identical and verify with go-msgauth.
func TestNativeAndGoSignMessagesAlike(t *testing.T) {
	native(t)
	t.Parallel()
	keys := []Key{
		{Domain: "example.com", Selector: "r", Signer: testRSA(t)},
		{Domain: "example.com", Selector: "e", Signer: testEd25519()},
	}
	fast := NewKeyring(keys)
	fast.Now = fixedClock
	slow := NewKeyring(keys)
	slow.Now = fixedClock
	slow.Close()
	if fast.byDomain["example.com"][0].native == nil {
		t.Fatal("the RSA key was not loaded into libcrypto")
	}
	for _, profile := range []string{"", ProfileSES} {
		a := sign(t, fast, "example.com", profile, sampleMessage, 7)
		b := sign(t, slow, "example.com", profile, sampleMessage, 0)
		if !bytes.Equal(a, b) {
			t.Fatalf("profile %q: libcrypto and Go signatures differ:\n%s\n%s", profile, a, b)
		}
		want := 2
		if profile == ProfileSES {
			want = 1
		}
		requireAllVerify(t, append(a, sampleMessage...), want, keys...)
	}
}

// TestGoldenSignatureRSA pins the RSA signature's bytes; a pure-Go build
// (CGO_ENABLED=0 go test) checks the same file, so both builds agree.
func TestGoldenSignatureRSA(t *testing.T) {
	t.Parallel()
	kr := NewKeyring([]Key{{Domain: "example.com", Selector: "s2026r", Signer: testRSA(t)}})
	kr.Now = fixedClock
	golden.Check(t, "testdata/signature-rsa.golden", sign(t, kr, "example.com", "", sampleMessage, 0), *update)
}

// TestNativeConcurrentAndClose signs from many goroutines at once (more
// than the pool holds), closes the Keyring half-way, and checks that every
// signature verifies: signers in flight finish, later ones fall back to Go.
func TestNativeConcurrentAndClose(t *testing.T) {
	native(t)
	t.Parallel()
	key := Key{Domain: "example.com", Selector: "r", Signer: testRSA(t)}
	kr := NewKeyring([]Key{key})
	kr.Now = fixedClock
	want := sign(t, kr, "example.com", "", sampleMessage, 0)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := range 16 {
		wg.Go(func() {
			for i := range 20 {
				if g == 0 && i == 10 {
					kr.Close()
				}
				s, err := kr.NewSigner("example.com", "")
				if err != nil {
					errs <- err.Error()
					return
				}
				s.Write([]byte(sampleMessage))
				if err := s.Close(); err != nil {
					errs <- err.Error()
					return
				}
				if !bytes.Equal(s.Header(), want) {
					errs <- "signature differs"
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	requireAllVerify(t, append(want, sampleMessage...), 1, key)
}

// TestNativeKeyFreed checks both ways libcrypto's copies are freed: Close,
// and the cleanup when a Keyring becomes unreachable. Not parallel: it
// counts every live native key in the package.
func TestNativeKeyFreed(t *testing.T) {
	native(t)
	key := Key{Domain: "example.com", Selector: "r", Signer: testRSA(t)}
	base := liveNative.Load()
	kr := NewKeyring([]Key{key, {Domain: "example.org", Selector: "r", Signer: key.Signer}})
	if got := liveNative.Load() - base; got != 2 {
		t.Fatalf("%d keys loaded, want 2", got)
	}
	kr.Close()
	kr.Close() // twice is harmless
	if got := liveNative.Load() - base; got != 0 {
		t.Fatalf("%d keys live after Close, want 0", got)
	}

	func() {
		kr := NewKeyring([]Key{key})
		kr.Now = fixedClock
		sign(t, kr, "example.com", "", sampleMessage, 0)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for liveNative.Load() != base {
		if time.Now().After(deadline) {
			t.Fatalf("%d keys still live after the Keyring became unreachable", liveNative.Load()-base)
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
}

// TestNativeRejectsBadDigest: the binding signs SHA-256 digests only.
func TestNativeRejectsBadDigest(t *testing.T) {
	native(t)
	t.Parallel()
	n, err := newNativeRSA(testRSA(t))
	if err != nil {
		t.Fatal(err)
	}
	defer n.close()
	if _, err := n.sign(make([]byte, 20)); err == nil {
		t.Fatal("a 20-byte digest was signed")
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := n.sign(d[:]); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkRSA2048Digest compares one signature on each path; cpu-µs/op
// (the process's CPU time) is the steadier figure on a shared machine.
func BenchmarkRSA2048Digest(b *testing.B) {
	k := testRSA(b)
	d := sha256.Sum256([]byte("x"))
	b.Run("go", func(b *testing.B) {
		defer cpuPerOp(b)()
		for b.Loop() {
			rsa.SignPKCS1v15(nil, k, crypto.SHA256, d[:])
		}
	})
	n, err := newNativeRSA(k)
	if err != nil {
		b.Skip(err)
	}
	defer n.close()
	b.Run("openssl", func(b *testing.B) {
		defer cpuPerOp(b)()
		for b.Loop() {
			if _, err := n.sign(d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// cpuPerOp reports the process's user+system CPU time per iteration.
func cpuPerOp(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.ReportMetric(float64(cpu()-start)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
	}
}
