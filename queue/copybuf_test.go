package queue

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// TestPooledBodyCopies: the wrapper copies every byte of a multi-part body
// through a pooled buffer: the writer is handed pieces of the same buffer
// copy after copy. Without the pool each copy gets a fresh 32 KiB buffer
// (io.MultiReader's WriteTo). The buffer's address is this copy's own
// evidence: an allocation count is the whole process's, and other tests'
// goroutines made it flaky.
func TestPooledBodyCopies(t *testing.T) {
	body := strings.Repeat("0123456789abcdef\r\n", 10000)
	open := openPooled(func() (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(strings.NewReader("DKIM-Signature: x\r\n"), strings.NewReader(body))), nil
	})
	bufs := map[*byte]bool{}
	const runs = 50
	for range runs {
		var out bytes.Buffer
		w := &onlyWriter{w: &out, seen: bufs}
		rc, err := open()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, rc); err != nil {
			t.Fatal(err)
		}
		if out.String() != "DKIM-Signature: x\r\n"+body {
			t.Fatalf("copied %d bytes, want %d", out.Len(), len(body)+19)
		}
	}
	// A collection may empty the pool now and then, and under -race
	// sync.Pool drops a quarter of what is put back on purpose: measured,
	// 1–6 buffers (11–18 under -race) with the pool, 50 without.
	if len(bufs) > runs/2 {
		t.Errorf("%d copies wrote from %d different buffers: the 32 KiB buffer is not pooled", runs, len(bufs))
	}
}

// onlyWriter hides bytes.Buffer's ReadFrom, as the upstream's writer has
// none, and notes the buffer each Write is handed (its first byte's address).
type onlyWriter struct {
	w    io.Writer
	seen map[*byte]bool
}

func (o *onlyWriter) Write(p []byte) (int, error) {
	if o.seen != nil && len(p) > 0 {
		o.seen[&p[0]] = true
	}
	return o.w.Write(p)
}
