package signing

import (
	"bytes"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// message2K is a 2 KB message, the size of the load in DESIGN §5.
var message2K = func() []byte {
	var b bytes.Buffer
	b.WriteString(strings.SplitAfter(sampleMessage, "\r\n\r\n")[0])
	line := "The quick brown fox jumps over the lazy dog, twice,  to make a line.\r\n"
	for b.Len() < 2048-len(line) {
		b.WriteString(line)
	}
	return b.Bytes()
}()

func benchSign(b *testing.B, keys []Key, msg []byte) {
	kr := NewKeyring(keys)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		s, err := kr.NewSigner("example.com", "")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := s.Write(msg); err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		if len(s.Header()) == 0 {
			b.Fatal("no signature")
		}
	}
}

func BenchmarkSignRSA2048(b *testing.B) {
	benchSign(b, []Key{{Domain: "example.com", Selector: "r", Signer: testRSA(b)}}, message2K)
}

func BenchmarkSignEd25519(b *testing.B) {
	benchSign(b, []Key{{Domain: "example.com", Selector: "e", Signer: testEd25519()}}, message2K)
}

func BenchmarkSignDual(b *testing.B) {
	benchSign(b, []Key{
		{Domain: "example.com", Selector: "r", Signer: testRSA(b)},
		{Domain: "example.com", Selector: "e", Signer: testEd25519()},
	}, message2K)
}

// big is a 25 MiB message written in 32 KiB chunks, as the relay streams a
// spool file; chunk returns the i-th write.
const bigSize = 25 << 20

func bigChunks() (header []byte, chunk []byte, n int) {
	header = []byte("From: a@example.com\r\nSubject: big\r\nContent-Type: text/plain\r\n\r\n")
	line := []byte("0123456789abcdef 0123456789abcdef 0123456789abcdef 0123456789abc\r\n")
	chunk = bytes.Repeat(line, (32<<10)/len(line))
	return header, chunk, (bigSize - len(header)) / len(chunk)
}

// BenchmarkSign25MiBStreamed reports the bytes a 25 MiB message allocates
// (B/op): a constant of tens of KiB, independent of the message size. For
// comparison, go-msgauth's NewSigner allocates about twice the message.
func BenchmarkSign25MiBStreamed(b *testing.B) {
	kr := NewKeyring([]Key{
		{Domain: "example.com", Selector: "r", Signer: testRSA(b)},
		{Domain: "example.com", Selector: "e", Signer: testEd25519()},
	})
	benchStreamed(b, func() (io.WriteCloser, error) { return kr.NewSigner("example.com", "") })
}

// BenchmarkGoMsgauth25MiBStreamed is the reference the brief measured: one
// go-msgauth streaming signer (RSA only) over the same 25 MiB.
func BenchmarkGoMsgauth25MiBStreamed(b *testing.B) {
	key := testRSA(b)
	benchStreamed(b, func() (io.WriteCloser, error) {
		return dkim.NewSigner(&dkim.SignOptions{
			Domain: "example.com", Selector: "r", Signer: key,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed,
			BodyCanonicalization:   dkim.CanonicalizationRelaxed,
			HeaderKeys:             []string{"From", "Subject"},
		})
	})
}

// benchStreamed writes the big message through a new signer from newSigner
// each round, reporting allocations.
func benchStreamed(b *testing.B, newSigner func() (io.WriteCloser, error)) {
	header, chunk, n := bigChunks()
	b.ReportAllocs()
	b.SetBytes(int64(len(header) + n*len(chunk)))
	for b.Loop() {
		s, err := newSigner()
		if err != nil {
			b.Fatal(err)
		}
		s.Write(header)
		for range n {
			s.Write(chunk)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMemoryDoesNotScaleWithBody checks the streaming promise by heap bytes
// allocated (not time): an 8 MiB body allocates no more than a fixed amount.
// Not parallel, so no other test's allocations are counted.
func TestMemoryDoesNotScaleWithBody(t *testing.T) {
	kr := NewKeyring([]Key{{Domain: "example.com", Selector: "e", Signer: testEd25519()}})
	header, chunk, _ := bigChunks()
	measure := func(chunks int) uint64 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		s, _ := kr.NewSigner("example.com", "")
		s.Write(header)
		for range chunks {
			s.Write(chunk)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		return after.TotalAlloc - before.TotalAlloc
	}
	small, large := measure(1), measure(256) // 32 KiB and 8 MiB bodies
	if large > 256<<10 || large > small+64<<10 {
		t.Fatalf("8 MiB body allocated %d bytes, a 32 KiB body %d: signing holds the body", large, small)
	}
}
