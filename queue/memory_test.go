package queue

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"
)

// TestEntryStaysSmall: the scheduler's record of a queued message is what a
// million of them cost (with a map slot and a heap pointer, ~130 bytes
// each; docs/queue.md). A field that grows it must be worth it.
func TestEntryStaysSmall(t *testing.T) {
	if n := unsafe.Sizeof(entry{}); n > 80 {
		t.Errorf("entry is %d bytes, want at most 80 (one 80-byte size class)", n)
	}
	var s rcptSet
	for _, i := range []int{0, 5, 63, 64, 200} {
		s.set(i)
	}
	for i := range 210 {
		want := i == 0 || i == 5 || i == 63 || i == 64 || i == 200
		if s.done(i) != want {
			t.Errorf("recipient %d done = %v, want %v", i, s.done(i), want)
		}
	}
}

// gatedUpstream is a fakeUpstream behind breakers that are all open until
// open is set; it counts the availability questions: for every upstream
// (route nil) and for a message's own route.
type gatedUpstream struct {
	fakeUpstream
	mu                sync.Mutex
	open              bool
	at                time.Time
	anyCalls, rtCalls int
}

func (g *gatedUpstream) Available(route []string, _ bool) (bool, time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if route == nil {
		g.anyCalls++
	} else {
		g.rtCalls++
	}
	return g.open, g.at
}

func (g *gatedUpstream) counts() (anyCalls, rtCalls int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.anyCalls, g.rtCalls
}

// TestRecoveredWaitForBreakersUnread: while no upstream can take a
// delivery, a recovered message that falls due goes back to wait for the
// first breaker without its envelope being read (its route is not even
// asked about) and without a record; once a breaker lets deliveries
// through it is delivered.
func TestRecoveredWaitForBreakersUnread(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	g := &gatedUpstream{at: time.Now().Add(time.Hour)}
	opts, _ := testOptions(t, dir, g)
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}, Route: []string{"fake"}}, "", testMsg)
	q.Close()

	q2 := running(t, opts)
	waitFor(t, "the recovered message taken and put back", func() bool {
		anyCalls, _ := g.counts()
		q2.mu.Lock()
		defer q2.mu.Unlock()
		e := q2.entries[qidOf(id)]
		return anyCalls > 0 && e != nil && !e.inflight && e.index >= 0
	})
	q2.mu.Lock()
	e := q2.entries[qidOf(id)]
	env, next := e.env, time.Unix(0, e.next)
	q2.mu.Unlock()
	if _, rt := g.counts(); rt != 0 || env != nil {
		t.Errorf("waiting message: route asked %d times, envelope in memory: %v; want neither", rt, env != nil)
	}
	if !next.Equal(g.at) {
		t.Errorf("due again at %v, want the breaker's %v", next, g.at)
	}
	if n := len(g.deliveries()); n != 0 {
		t.Fatalf("%d deliveries with every breaker open", n)
	}
	// Made due by its schedule, it waits without a record: a million
	// waiting out an outage would each create a state log.
	if _, err := os.Stat(filepath.Join(dir, "msg", id+".st")); !os.IsNotExist(err) {
		t.Errorf("waiting for the breaker wrote a state log (%v)", err)
	}

	g.mu.Lock()
	g.open = true
	g.mu.Unlock()
	if _, err := q2.action(Request{Action: ActionRetry, ID: id}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "delivery once a breaker lets it through", func() bool { return len(g.deliveries()) == 1 && q2.Len() == 0 })
	if _, rt := g.counts(); rt == 0 {
		t.Error("delivered without asking about the message's route")
	}
}
