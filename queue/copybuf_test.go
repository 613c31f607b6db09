package queue

import (
	"bytes"
	"io"
	"math"
	"runtime"
	"strings"
	"testing"
)

// TestPooledBodyCopies: the wrapper copies every byte of a multi-part body
// and allocates no copy buffer of its own once the pool is warm.
func TestPooledBodyCopies(t *testing.T) {
	body := strings.Repeat("0123456789abcdef\r\n", 10000)
	open := openPooled(func() (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(strings.NewReader("DKIM-Signature: x\r\n"), strings.NewReader(body))), nil
	})
	var out bytes.Buffer
	out.Grow(len(body) + 100)
	copyOnce := func() {
		out.Reset()
		rc, err := open()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(&onlyWriter{&out}, rc); err != nil {
			t.Fatal(err)
		}
	}
	copyOnce()
	if out.String() != "DKIM-Signature: x\r\n"+body {
		t.Fatalf("copied %d bytes, want %d", out.Len(), len(body)+19)
	}
	// Averaged over many copies, so a stray allocation elsewhere in the
	// process cannot fail it: without the pool each copy costs 32 KiB.
	// The least of several trials: goroutines left by other tests only add
	// allocations, so the minimum is this copy's own cost.
	const runs = 50
	per := math.Inf(1)
	for range 5 {
		before := heapBytes()
		for range runs {
			copyOnce()
		}
		per = min(per, (heapBytes()-before)/runs)
	}
	if per > 8<<10 {
		t.Errorf("one copy allocated %.0f bytes: the 32 KiB buffer is not pooled", per)
	}
}

// onlyWriter hides bytes.Buffer's ReadFrom, as the upstream's writer has none.
type onlyWriter struct{ w io.Writer }

func (o *onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

func heapBytes() float64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.TotalAlloc)
}
