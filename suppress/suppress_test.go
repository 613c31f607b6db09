package suppress

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testclock"
	"github.com/sluicemail/sluice/internal/testredis"
)

func TestNamesAddress(t *testing.T) {
	for status, want := range map[string]bool{
		"5.1.1": true, "5.1.2": true, "5.1.3": true, "5.1.6": true, "5.1.10": true, "5.1.0": true,
		"5.2.1": true,
		"5.1.7": false, "5.1.8": false, // the sender's address, not the recipient's
		"5.2.2": false, "5.7.1": false, "5.0.0": false, "5.4.4": false,
		"4.1.1": false, "4.2.1": false, "2.0.0": false,
		"": false, "5.1": false, "5.x.1": false, " 5.1.1 ": true,
	} {
		if got := NamesAddress(status); got != want {
			t.Errorf("NamesAddress(%q) = %v, want %v", status, got, want)
		}
	}
}

func TestDescribe(t *testing.T) {
	at := time.Date(2026, 12, 4, 23, 59, 0, 0, time.UTC)
	for kind, want := range map[string]string{
		KindBounce:    "suppressed after a hard bounce on 2026-12-04",
		KindComplaint: "suppressed after a complaint on 2026-12-04",
		KindManual:    "suppressed by an administrator on 2026-12-04",
	} {
		if got := (Entry{Kind: kind, Added: at}).Describe(); got != want {
			t.Errorf("%s: %q, want %q", kind, got, want)
		}
	}
}

func newClock() *testclock.Clock { return testclock.New(time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)) }

// openFile opens the FileStore at path on c, or ends the test.
func openFile(t *testing.T, path string, sync bool, c *testclock.Clock) *FileStore {
	t.Helper()
	s, err := OpenFile(path, sync, c.Now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// testStore runs the Store contract against s (whose clock c controls,
// when it is a FileStore; Redis keeps its own time, so expiry is checked
// there with a real, short TTL).
func testStore(t *testing.T, s Store, expire func(d time.Duration)) {
	ctx := context.Background()
	if _, ok, err := s.Get(ctx, "supp:a@x"); ok || err != nil {
		t.Fatalf("Get on empty: %v %v", ok, err)
	}
	if err := s.Put(ctx, "supp:a@x", []byte(`{"v":1}`), time.Hour); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := s.Get(ctx, "supp:a@x"); !ok || string(v) != `{"v":1}` {
		t.Fatalf("Get after Put: %q %v", v, ok)
	}
	if ok, err := s.PutNX(ctx, "claim:k", []byte("1"), time.Hour); !ok || err != nil {
		t.Fatalf("first PutNX: %v %v", ok, err)
	}
	if ok, _ := s.PutNX(ctx, "claim:k", []byte("1"), time.Hour); ok {
		t.Fatal("second PutNX succeeded")
	}
	s.Put(ctx, "supp:b@x", []byte("b"), time.Hour)
	s.Put(ctx, "msg:1", []byte("m"), time.Hour)
	var keys []string
	s.Scan(ctx, "supp:", func(k string, _ []byte) { keys = append(keys, k) })
	if len(keys) != 2 {
		t.Fatalf("Scan supp: %v", keys)
	}
	if ok, _ := s.Delete(ctx, "supp:b@x"); !ok {
		t.Fatal("Delete of a present key said absent")
	}
	if ok, _ := s.Delete(ctx, "supp:b@x"); ok {
		t.Fatal("Delete of an absent key said present")
	}
	s.Put(ctx, "supp:short@x", []byte("s"), 1500*time.Millisecond)
	expire(2 * time.Second)
	if _, ok, _ := s.Get(ctx, "supp:short@x"); ok {
		t.Fatal("entry alive after its TTL")
	}
	if ok, _ := s.PutNX(ctx, "claim:short", []byte("1"), 1500*time.Millisecond); !ok {
		t.Fatal("PutNX of a fresh key failed")
	}
	expire(2 * time.Second)
	if ok, _ := s.PutNX(ctx, "claim:short", []byte("1"), time.Hour); !ok {
		t.Fatal("PutNX after the claim expired failed")
	}
}

func TestFileStore(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "s.log")
	s := openFile(t, path, true, c)
	testStore(t, s, c.Advance)

	// A second opener (an offline command under a running daemon) is refused.
	if _, err := OpenFile(path, true, c.Now); !errors.Is(err, ErrLocked) {
		t.Fatalf("second OpenFile: %v, want ErrLocked", err)
	}
	s.Close()

	// Replayed: what was live stays, what was deleted or expired does not;
	// a torn last line (a crash mid-append) is ignored.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"op":"put","k":"supp:torn@x","v":"`)
	f.Close()
	s = openFile(t, path, true, c)
	ctx := context.Background()
	if v, ok, _ := s.Get(ctx, "supp:a@x"); !ok || string(v) != `{"v":1}` {
		t.Fatalf("after replay: %q %v", v, ok)
	}
	for _, k := range []string{"supp:b@x", "supp:short@x", "supp:torn@x"} {
		if _, ok, _ := s.Get(ctx, k); ok {
			t.Errorf("%s alive after replay", k)
		}
	}
	// Compaction keeps the live entries and shrinks the file.
	for i := range 3000 {
		s.Put(ctx, "supp:churn@x", []byte(strings.Repeat("x", i%10)), time.Hour)
	}
	s.Close()
	st, _ := os.Stat(path)
	if st.Size() > 200<<10 {
		t.Errorf("log is %d bytes after 3000 rewrites of one key: not compacted", st.Size())
	}
	s = openFile(t, path, true, c)
	defer s.Close()
	for _, k := range []string{"supp:a@x", "supp:churn@x", "claim:k"} {
		if _, ok, _ := s.Get(ctx, k); !ok {
			t.Errorf("%s lost by compaction", k)
		}
	}
	// Writes after a compaction land in the new file.
	s.Put(ctx, "supp:after@x", []byte("1"), time.Hour)
	s.Close()
	s2 := openFile(t, path, true, c)
	defer s2.Close()
	if _, ok, _ := s2.Get(ctx, "supp:after@x"); !ok {
		t.Error("a write after compaction was lost")
	}
}

// TestFileStoreForgets: entries that expire leave memory and, through a
// compaction, the log, even when every key is written once (the index).
func TestFileStoreForgets(t *testing.T) {
	c := newClock()
	path := filepath.Join(t.TempDir(), "s.log")
	s := openFile(t, path, false, c)
	defer s.Close()
	ctx := context.Background()
	for i := range 20000 {
		s.Put(ctx, "msg:"+strconv.Itoa(i), []byte("x"), time.Hour)
		if i%1000 == 999 {
			c.Advance(30 * time.Minute) // an hour later, the first half of each hour is gone
		}
	}
	s.mu.Lock()
	n := len(s.m)
	s.mu.Unlock()
	if n > 4000 {
		t.Errorf("%d entries in memory with a 1h TTL and 1000 writes per 30 minutes; expired ones are kept", n)
	}
	st, _ := os.Stat(path)
	if st.Size() > 20000*40/2 {
		t.Errorf("log is %d bytes: never compacted", st.Size())
	}
}

func TestRedisStore(t *testing.T) {
	r := testredis.Start(t)
	s, err := OpenRedis(r.URL, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	testStore(t, s, time.Sleep) // Redis expires keys by its own clock
}

func TestListAndIndex(t *testing.T) {
	c := newClock()
	s := openFile(t, filepath.Join(t.TempDir(), "s.log"), true, c)
	defer s.Close()
	ctx := context.Background()
	l := NewList(s, 30*24*time.Hour, nil, c.Now)
	if l.Bounced(ctx, "a@x.org", "4.1.1", "451 later", "up") {
		t.Fatal("a 4.1.1 suppressed")
	}
	if !l.Bounced(ctx, "<A@X.org>", "5.1.1", "550 5.1.1 unknown", "up") {
		t.Fatal("a 5.1.1 did not suppress")
	}
	e, ok := l.Check(ctx, "a@x.ORG")
	if !ok || e.Kind != KindBounce || e.Source != "up" || !e.Expires.Equal(c.Now().Add(30*24*time.Hour)) {
		t.Fatalf("Check: %+v %v", e, ok)
	}
	if _, err := l.Add(ctx, Entry{Address: "not an address"}); err == nil {
		t.Fatal("Add of a non-address succeeded")
	}
	c.Advance(31 * 24 * time.Hour)
	if _, ok := l.Check(ctx, "a@x.org"); ok {
		t.Fatal("entry alive after suppression.ttl")
	}

	ix := NewIndex(s, time.Hour, nil)
	ix.Put(ctx, Message{QueueID: "Q1", MessageID: "<m1@example.com>", Sender: "s@example.com", Recipients: []string{"R@x.org"}})
	if m, ok := ix.Lookup(ctx, "m1@example.com"); !ok || m.QueueID != "Q1" {
		t.Fatalf("Lookup without brackets: %+v %v", m, ok)
	}
	if m, ok := ix.Latest(ctx, "r@X.org"); !ok || m.QueueID != "Q1" {
		t.Fatalf("Latest: %+v %v", m, ok)
	}
	if ok, _ := ix.Claim(ctx, "bounce/m1/r"); !ok {
		t.Fatal("first claim failed")
	}
	if ok, _ := ix.Claim(ctx, "bounce/m1/r"); ok {
		t.Fatal("second claim succeeded")
	}
}
