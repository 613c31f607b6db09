package queue

import (
	"testing"
)

// A message committed by this process keeps its draft's descriptor until its
// first attempt (the first-attempt shortcut); these tests check that no path
// leaks it.

// withFresh opens a queue whose workers are not started, so the message it
// enqueues stays before its first attempt, holding its descriptor.
func withFresh(t *testing.T) (*Queue, string, *entry) {
	t.Helper()
	opts, _ := testOptions(t, t.TempDir(), &fakeUpstream{})
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
	q.mu.Lock()
	e := q.entries[qidOf(id)]
	q.mu.Unlock()
	if e.fresh == nil {
		q.Close()
		t.Fatal("fresh message holds no descriptor; test premise gone")
	}
	return q, id, e
}

// TestDeleteFreshMessageClosesItsDescriptor: deleted before its first
// attempt (e.g. held at once, or the workers are busy), a message's
// descriptor must be closed or handed to the free pool, not leaked.
func TestDeleteFreshMessageClosesItsDescriptor(t *testing.T) {
	t.Parallel()
	q, id, _ := withFresh(t)
	defer q.Close()
	if _, err := q.action(Request{Action: ActionDelete, ID: id, Silent: true}, false); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 0 {
		t.Fatalf("message still queued after delete")
	}
	// spool.TestFinishHandsFreshDescriptorToPool checks the descriptor itself.
	if n := q.spool.FreeFiles(); n != 1 {
		t.Fatalf("deleted message %s: %d free files pooled, want its file (with its descriptor)", id, n)
	}
}

// TestCloseClosesFreshDescriptors: Close must not leave the
// descriptors of messages not yet attempted open.
func TestCloseClosesFreshDescriptors(t *testing.T) {
	t.Parallel()
	q, id, e := withFresh(t)
	q.Close()
	if e.fresh != nil {
		t.Fatalf("after Close queued message %s still holds its descriptor", id)
	}
}
