package spool

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func openTemp(t *testing.T, o Options) *Spool {
	t.Helper()
	return openAt(t, t.TempDir(), o)
}

// openAt opens and recovers the spool in dir (closed at the end of the test;
// closing it sooner is fine).
func openAt(t *testing.T, dir string, o Options) *Spool {
	t.Helper()
	s, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	if err := s.Recover(func(*Message) {}); err != nil {
		t.Fatal(err)
	}
	return s
}

// readBody returns what delivery would send of message id: prefix and bytes.
func readBody(t *testing.T, s *Spool, id string) string {
	t.Helper()
	rc, _, err := s.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func commitOne(t *testing.T, s *Spool, body string) (string, *Fresh) {
	t.Helper()
	d, err := s.Begin()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, body)
	fresh, err := d.Commit(&Envelope{From: "a@example.com", To: []string{"b@example.org"}}, []byte("P: 1\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return d.ID, fresh
}

// openFailingSim opens a spool on a simulated disk; fail() makes its fsyncs
// fail with EIO from then on.
func openFailingSim(t *testing.T) (s *Spool, d *simDisk, fail func()) {
	t.Helper()
	d = newSimDisk()
	s, err := openSim(d)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, d, func() {
		d.mu.Lock()
		d.failOps = map[string]error{"sync": syscall.EIO}
		d.mu.Unlock()
	}
}

// TestProbeSeesFailingFsync: /readyz must report a disk whose fsync fails.
func TestProbeSeesFailingFsync(t *testing.T) {
	t.Parallel()
	s, d, fail := openFailingSim(t)
	if err := s.Probe(); err != nil {
		t.Fatalf("Probe on a good disk: %v", err)
	}
	fail()
	if err := s.Probe(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Probe with failing fsync = %v, want EIO", err)
	}
	if names := d.names(spoolRoot + "/msg"); len(names) != 0 {
		t.Errorf("probe left %v", names)
	}
}

// TestCommitFailsOnFailingFsync: a commit whose fsync fails answers an
// error (the relay's 451) and leaves no message behind.
func TestCommitFailsOnFailingFsync(t *testing.T) {
	t.Parallel()
	s, d, fail := openFailingSim(t)
	fail()
	dr, err := s.Begin()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(dr, "Subject: x\r\n\r\nx\r\n")
	if _, err := dr.Commit(&Envelope{To: []string{"b@x"}}, nil); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Commit = %v, want EIO", err)
	}
	if names := d.names(spoolRoot + "/msg"); len(names) != 0 {
		t.Errorf("failed commit left %v", names)
	}
}

func TestWriteAfterCloseFails(t *testing.T) {
	t.Parallel()
	s := openTemp(t, Options{})
	d, err := s.Begin()
	if err != nil {
		t.Fatal(err)
	}
	d.f.Close() // the disk goes away under the draft
	io.WriteString(d, strings.Repeat("x", 64<<10))
	if _, err := d.Commit(&Envelope{From: "a@b", To: []string{"c@d"}}, nil); err == nil {
		t.Fatal("Commit succeeded on a closed file")
	}
	if ids, _ := s.IDs(); len(ids) != 0 {
		t.Errorf("a failed commit left %v", ids)
	}
}

// TestShorterMessageKeepsFileLength: a message written over a free file a
// little longer than it pads its trailer, so the file keeps its length (its
// fsync then writes no inode); the padded trailer reads back, in full and
// without its prefix (recovery's path), and the body is the new message's.
func TestShorterMessageKeepsFileLength(t *testing.T) {
	t.Parallel()
	s := openTemp(t, Options{})
	id, fresh := commitOne(t, s, strings.Repeat("a long message line\r\n", 100))
	f1 := fresh.f
	if err := s.Finish(id, fresh); err != nil {
		t.Fatal(err)
	}
	id2, fresh2 := commitOne(t, s, "short\r\n")
	defer fresh2.Close()
	if fresh2.f != f1 {
		t.Fatal("the next draft did not reuse the free file")
	}
	if st, err := fresh2.f.Stat(); err != nil || st.Size() != fresh.size || fresh2.size != fresh.size {
		t.Errorf("reused file: %v %v, Fresh size %d; want the old %d bytes", st, err, fresh2.size, fresh.size)
	}
	m, err := s.Read(id2)
	if err != nil {
		t.Fatal(err)
	}
	if m.Env.ID != id2 || string(m.Prefix) != "P: 1\r\n" || m.MsgLen != int64(len("short\r\n")) {
		t.Errorf("read back %+v, prefix %q, length %d", m.Env, m.Prefix, m.MsgLen)
	}
	f, err := os.Open(s.residentPath(id2))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if env, n, _, err := readEnvelope(f); err != nil || env.ID != id2 || n != int64(len("short\r\n")) {
		t.Errorf("readEnvelope: %+v %d %v", env, n, err)
	}
	if b := readBody(t, s, id2); b != "P: 1\r\nshort\r\n" {
		t.Errorf("reused file reads %q", b)
	}
}

// TestFinishHandsFreshDescriptorToPool: a message finished before its first
// attempt gives its descriptor to the free pool (not leaked, not closed
// twice) with its blocks (at most keepBlocks), its content overwritten with
// zeros (a delivered message does not outlive its delivery); the next draft
// writes over it, and a message much shorter (by more than maxPaddedTrailer)
// cuts the old rest off. A file above keepBlocks is emptied.
func TestFinishHandsFreshDescriptorToPool(t *testing.T) {
	t.Parallel()
	s := openTemp(t, Options{})
	id, fresh := commitOne(t, s, strings.Repeat("a long message line\r\n", 1000))
	f := fresh.f
	if err := s.Finish(id, fresh); err != nil {
		t.Fatal(err)
	}
	if fresh.f != nil {
		t.Error("Fresh still holds the descriptor after Finish")
	}
	if len(s.free.files) != 1 || s.free.files[0].f != f {
		t.Fatalf("pool = %+v, want the message's descriptor", s.free.files)
	}
	if st, err := f.Stat(); err != nil || st.Size() != fresh.size || s.free.files[0].size != fresh.size || s.free.kept != fresh.size {
		t.Errorf("free file: %v %v, pooled size %d, kept %d; want its %d bytes kept", st, err, s.free.files[0].size, s.free.kept, fresh.size)
	}
	if b, err := os.ReadFile(s.path(s.free.files[0].name)); err != nil || len(b) != int(fresh.size) || bytes.Count(b, []byte{0}) != len(b) {
		t.Errorf("free file holds %q (%v), want %d zeros", b, err, fresh.size)
	}
	id2, fresh2 := commitOne(t, s, "short\r\n")
	defer fresh2.Close()
	if fresh2.f != f {
		t.Error("the next draft did not reuse the free file")
	}
	if st, err := f.Stat(); err != nil || st.Size() != fresh2.size || fresh2.size >= fresh.size {
		t.Errorf("reused file: %v %v; want %d bytes, the old content cut", st, err, fresh2.size)
	}
	if b := readBody(t, s, id2); b != "P: 1\r\nshort\r\n" {
		t.Errorf("reused file reads %q", b)
	}
	if _, err := s.Read(id); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("finished message still readable: %v", err)
	}
	big, freshBig := commitOne(t, s, strings.Repeat("x", keepBlocks)+"\r\n")
	fb := freshBig.f
	if err := s.Finish(big, freshBig); err != nil {
		t.Fatal(err)
	}
	if st, err := fb.Stat(); err != nil || st.Size() != 0 {
		t.Errorf("free file of %d bytes not emptied: %v %v", freshBig.size, st, err)
	}
}

// TestFreePoolBounded: above MaxFree, finished files are unlinked; free
// files hold at most keepBlocks bytes; a restart takes back at most MaxFree
// of them, emptied, and removes the rest.
func TestFreePoolBounded(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, Options{MaxFree: 2})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	var fr []*Fresh
	for range 5 {
		id, f := commitOne(t, s, strings.Repeat("x", 10000)+"\r\n")
		ids, fr = append(ids, id), append(fr, f)
	}
	for i, id := range ids {
		if err := s.Finish(id, fr[i]); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	check := func(when string, maxSize int64) {
		des, _ := os.ReadDir(filepath.Join(dir, "msg"))
		if len(des) != 2 {
			t.Errorf("%s: %d files, want 2 free ones", when, len(des))
		}
		for _, de := range des {
			fi, _ := de.Info()
			if !strings.HasPrefix(de.Name(), freePrefix) || fi.Size() > maxSize {
				t.Errorf("%s: %s, %d bytes", when, de.Name(), fi.Size())
			}
		}
	}
	check("after finishing 5", keepBlocks)
	// Free files left with content and above the bound (older versions, a
	// crash before the truncation) are emptied or removed at recovery.
	for i := range 3 {
		os.WriteFile(filepath.Join(dir, "msg", freePrefix+"0123456789ABCDE"+string(rune('A'+i))), bytes.Repeat([]byte("y"), 5000), 0o600)
	}
	s2, err := Open(dir, Options{MaxFree: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Recover(func(m *Message) { t.Errorf("free file recovered as message %s", m.ID) }); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	check("after a restart", 0)
}

// FuzzStateLog: whatever bytes a state log holds (torn appends, garbage),
// reading it never fails on content, and the records it yields survive
// being written and read again unchanged.
func FuzzStateLog(f *testing.F) {
	f.Add([]byte(`{"t":"attempt","at":"2026-03-01T09:30:00Z","n":1,"next":"2026-03-01T09:31:00Z"}` + "\n" + `{"t":"rcpt","at":"2026-03-01T09:30:01Z","rcpt":"a@b","state":"bounced","status":"5.1.1","diag":"550"}` + "\n" + `{"t":"ho`))
	f.Add([]byte("\n\n{}\nnot json\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		recs := parseRecords(data)
		b, err := encodeRecords(recs)
		if err != nil {
			t.Fatal(err)
		}
		again := parseRecords(b)
		x, _ := json.Marshal(recs)
		y, _ := json.Marshal(again)
		if !bytes.Equal(x, y) {
			t.Errorf("round trip changed records:\n%s\n%s", x, y)
		}
		_ = Fold(again)
	})
}

// TestWalkReadsInBlocks: Walk returns every message ID once, across the
// 1,024-name blocks it reads the directory in, and nothing else.
func TestWalkReadsInBlocks(t *testing.T) {
	t.Parallel()
	s := openTemp(t, Options{})
	want := map[string]bool{}
	for i := range 2500 {
		id := NewID(time.Unix(int64(i), 0))
		want[id] = true
		if err := os.WriteFile(filepath.Join(s.Dir(), id), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 { // logs, drafts and free files are not messages
			os.WriteFile(filepath.Join(s.Dir(), id+stateSuffix), nil, 0o600)
			os.WriteFile(filepath.Join(s.Dir(), freePrefix+id), nil, 0o600)
		}
	}
	got := map[string]int{}
	if err := s.Walk(func(id string) error { got[id]++; return nil }); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Errorf("Walk gave %d IDs, want %d", len(got), len(want))
	}
	for id, n := range got {
		if !want[id] || n != 1 {
			t.Errorf("Walk gave %s %d times (a message: %v)", id, n, want[id])
		}
	}
}

// TestFreePoolKeepsBoundedBytes: the pool keeps at most maxKept bytes in
// files pooled with their blocks; taking one gives its bytes back.
func TestFreePoolKeepsBoundedBytes(t *testing.T) {
	t.Parallel()
	p := &freePool{max: 1 << 20}
	n := 0
	for p.reserve(keepBlocks) {
		if !p.put(freeFile{name: strconv.Itoa(n), size: keepBlocks}) {
			t.Fatal("put refused below max")
		}
		n++
	}
	if int64(n)*keepBlocks != maxKept || p.kept != maxKept {
		t.Fatalf("%d files of %d bytes kept (%d), want %d bytes", n, keepBlocks, p.kept, maxKept)
	}
	if ff := p.take(); ff.size != keepBlocks || p.kept != maxKept-keepBlocks || !p.reserve(keepBlocks) {
		t.Errorf("after take: kept %d, want room for one more", p.kept)
	}
	p.release(keepBlocks)
	if p.kept != maxKept-keepBlocks {
		t.Errorf("after release: kept %d", p.kept)
	}
}

// removeCounter counts the removes of state logs.
type removeCounter struct {
	FS
	mu   sync.Mutex
	logs int
}

func (c *removeCounter) Remove(name string) error {
	if strings.HasSuffix(name, stateSuffix) {
		c.mu.Lock()
		c.logs++
		c.mu.Unlock()
	}
	return c.FS.Remove(name)
}

func (c *removeCounter) n() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.logs
}

// TestFinishSkipsAbsentLog: a message committed by this process and
// finished without any Record has no state log, so Finish removes none; a
// message that got a Record (an attempt's outcome, a control action while
// still fresh, or its Fresh closed and so out of sight) has its log removed.
func TestFinishSkipsAbsentLog(t *testing.T) {
	t.Parallel()
	c := &removeCounter{FS: OS}
	s := openTemp(t, Options{FS: c})
	before := c.n()

	id, fresh := commitOne(t, s, "one\r\n")
	a, err := s.Attempt(id, fresh, Record{N: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Finish(); err != nil {
		t.Fatal(err)
	}
	id, fresh = commitOne(t, s, "two\r\n")
	if err := s.Finish(id, fresh); err != nil {
		t.Fatal(err)
	}
	if n := c.n() - before; n != 0 {
		t.Errorf("%d state logs removed for messages that never had one", n)
	}

	logged := func(name string, id string) {
		t.Helper()
		if _, err := os.Stat(s.path(id + stateSuffix)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: state log left after Finish: %v", name, err)
		}
	}
	// A control action while the message is fresh, then its first attempt.
	id, fresh = commitOne(t, s, "three\r\n")
	if err := s.Record(id, true, Record{T: "hold"}); err != nil {
		t.Fatal(err)
	}
	a, err = s.Attempt(id, fresh, Record{N: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Finish(); err != nil {
		t.Fatal(err)
	}
	logged("record while fresh", id)
	// The first attempt's outcome recorded, then finished by a later one.
	id, fresh = commitOne(t, s, "four\r\n")
	a, err = s.Attempt(id, fresh, Record{N: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Record(Record{T: "rcpt"}); err != nil {
		t.Fatal(err)
	}
	a.Close()
	a, err = s.Attempt(id, nil, Record{N: 2})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Finish(); err != nil {
		t.Fatal(err)
	}
	logged("deferred, then delivered", id)
	// A fresh message that waits (its Fresh closed): Finish removes
	// whatever may be there.
	id, fresh = commitOne(t, s, "five\r\n")
	fresh.Close()
	n := c.n()
	if err := s.Finish(id, nil); err != nil {
		t.Fatal(err)
	}
	if c.n() != n+1 {
		t.Error("Finish of a message whose Fresh was closed did not remove its log")
	}
	empty := true
	s.unlogged.Range(func(any, any) bool { empty = false; return false })
	if !empty {
		t.Error("IDs left in the unlogged set after every message finished")
	}
}
