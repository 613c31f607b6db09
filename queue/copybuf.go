package queue

import (
	"io"
	"sync"
)

// pooledBody hides the spooled body's own WriteTo (io.MultiReader's, which
// allocates a fresh 32 KiB buffer per call) behind one that copies through a
// pooled buffer: the upstream copies every message with io.Copy, and those
// buffers were half the bytes a relayed message allocated.
type pooledBody struct{ io.ReadCloser }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (p pooledBody) WriteTo(w io.Writer) (int64, error) {
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	return io.CopyBuffer(w, struct{ io.Reader }{p.ReadCloser}, *buf)
}

// openPooled wraps open so that its body copies through a pooled buffer.
func openPooled(open func() (io.ReadCloser, error)) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) {
		rc, err := open()
		if err != nil {
			return nil, err
		}
		return pooledBody{rc}, nil
	}
}
