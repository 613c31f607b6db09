package upstream

import (
	"context"
	"sync"
	"time"
)

// pool bounds one upstream's connections (max_connections) and keeps the
// idle ones for reuse. A delivery holds a slot from acquire to done; a
// connection is either in use by the slot's holder or idle in the pool.
type pool struct {
	slots chan struct{}

	mu       sync.Mutex
	idle     []*client // most recently used last
	inFlight int
}

func newPool(maxConns int) *pool {
	return &pool{slots: make(chan struct{}, max(maxConns, 1))}
}

// acquire waits for a free slot or ctx.
func (p *pool) acquire(ctx context.Context) error {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.inFlight++
	return nil
}

// done gives back the slot acquire took.
func (p *pool) done() {
	p.mu.Lock()
	p.inFlight--
	p.mu.Unlock()
	<-p.slots
}

func (p *pool) busy() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inFlight
}

// take returns the most recently used idle connection not older than cut,
// or nil; older ones it finds are closed (QUIT).
func (p *pool) take(cut time.Time) *client {
	for {
		cl := p.pop()
		if cl == nil || cl.lastUsed.After(cut) {
			return cl
		}
		cl.quit()
	}
}

func (p *pool) pop() *client {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.idle)
	if n == 0 {
		return nil
	}
	cl := p.idle[n-1]
	p.idle = p.idle[:n-1]
	return cl
}

func (p *pool) put(cl *client) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.idle = append(p.idle, cl)
}

// reap closes the idle connections last used before cut.
func (p *pool) reap(cut time.Time) {
	for _, cl := range p.split(cut) {
		cl.quit()
	}
}

// split removes and returns the idle connections last used before cut.
func (p *pool) split(cut time.Time) []*client {
	p.mu.Lock()
	defer p.mu.Unlock()
	var old []*client
	keep := p.idle[:0]
	for _, cl := range p.idle {
		if cl.lastUsed.Before(cut) {
			old = append(old, cl)
		} else {
			keep = append(keep, cl)
		}
	}
	clear(p.idle[len(keep):])
	p.idle = keep
	return old
}

// drain removes and returns every idle connection.
func (p *pool) drain() []*client {
	p.mu.Lock()
	defer p.mu.Unlock()
	idle := p.idle
	p.idle = nil
	return idle
}
