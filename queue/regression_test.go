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
	f := q.entries[id].file
	q.mu.Unlock()
	if f == nil {
		t.Fatal("fresh message holds no descriptor; test premise gone")
	}
	if _, err := q.action("delete", []string{id, "--silent"}, false); err != nil {
		t.Fatal(err)
	}
	if q.Len() != 0 {
		t.Fatalf("message still queued after delete")
	}
	q.free.mu.Lock()
	pooled := false
	for _, ff := range q.free.files {
		if ff.f == f {
			pooled = true
		}
	}
	q.free.mu.Unlock()
	if _, err := f.Stat(); err == nil && !pooled {
		t.Fatalf("deleted message %s: its descriptor %d is still open and in no pool (leaked)", id, f.Fd())
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
	f := q.entries[id].file
	q.mu.Unlock()
	q.Close()
	if _, err := f.Stat(); err == nil {
		t.Fatalf("after Close the descriptor of queued message %s is still open", id)
	}
}
