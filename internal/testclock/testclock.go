// Package testclock is the settable clock tests hand to code that takes a
// now func (policy, upstream, signing, suppress), safe for concurrent use.
package testclock

import (
	"sync"
	"time"
)

// Clock reads a time that moves only when Advance moves it.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// New returns a clock reading t.
func New(t time.Time) *Clock { return &Clock{t: t} }

// Now reads the clock.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}
