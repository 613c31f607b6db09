package queue

import (
	"testing"
)

// TestDeleteFreshMessageClosesItsDescriptor: a message committed by
// this process keeps its draft's descriptor until its first attempt. Deleted
// before that attempt (e.g. held at once, or the workers are busy), the
// descriptor must be closed or handed to the free pool, not leaked.
func TestDeleteFreshMessageClosesItsDescriptor(t *testing.T) {
	t.Parallel()
	opts, _ := testOptions(t, t.TempDir(), &fakeUpstream{})
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	// Run is not started: the message stays before its first attempt.
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
	q.mu.Lock()
	fresh := q.entries[qidOf(id)].fresh
	q.mu.Unlock()
	if fresh == nil {
		t.Fatal("fresh message holds no descriptor; test premise gone")
	}
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
		t.Fatal("fresh message holds no descriptor; test premise gone")
	}
	q.Close()
	if e.fresh != nil {
		t.Fatalf("after Close queued message %s still holds its descriptor", id)
	}
}
