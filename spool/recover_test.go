package spool

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestRecoverKeepsStateLogs: recovery reads a message's state log when its
// snapshot lists one, and when a log was written after the snapshot (a
// control action on a message not yet recovered); only orphan logs go.
func TestRecoverKeepsStateLogs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	held, f1 := commitOne(t, s, "held\r\n")
	later, f2 := commitOne(t, s, "later\r\n")
	plain, f3 := commitOne(t, s, "plain\r\n")
	f1.Close()
	f2.Close()
	f3.Close()
	if err := s.Record(held, true, Record{T: "hold", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	orphan := NewID(time.Now().Add(time.Hour)) + stateSuffix
	if err := os.WriteFile(s.path(orphan), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s2, sn := reopenScanned(t, dir)
	// After the snapshot: a hold on a message it lists without a log.
	if err := s2.Record(later, true, Record{T: "hold", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	var got []string
	heldSeen := map[string]bool{}
	if err := sn.Recover(func(m *Message) bool {
		got = append(got, m.ID)
		heldSeen[m.ID] = m.State().Held
		if m.Prefix != nil {
			t.Errorf("%s: recovery read the DKIM prefix", m.ID)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if want := []string{held, later, plain}; !slices.Equal(got, want) {
		t.Errorf("recovered %v, want %v (oldest first)", got, want)
	}
	if !heldSeen[held] || !heldSeen[later] || heldSeen[plain] {
		t.Errorf("held = %v, want %s and %s held only", heldSeen, held, later)
	}
	if _, err := os.Stat(s2.path(held + stateSuffix)); err != nil {
		t.Errorf("state log of a queued message removed: %v", err)
	}
	if _, err := os.Stat(s2.path(orphan)); !os.IsNotExist(err) {
		t.Errorf("orphan log %s kept (%v)", orphan, err)
	}
}

// reopenScanned opens the spool in dir again, as a restart does, and takes
// its snapshot; the spool is closed when the test ends.
func reopenScanned(t *testing.T, dir string) (*Spool, *Snapshot) {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	sn, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	return s, sn
}

// TestRecoverTracksLogsAhead: a log made during recovery is looked for
// beside a message recovery has not reached yet (a hold on it is kept), not
// beside one it handed out (its attempt's log): a log made anywhere used to
// send every later read to look for one, a failed open per message.
func TestRecoverTracksLogsAhead(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	var ids []string
	for range 3 {
		id, f := commitOne(t, s, "x\r\n")
		f.Close()
		ids = append(ids, id)
	}
	s.Close()
	s2, sn := reopenScanned(t, dir)
	held := map[string]bool{}
	err := sn.Recover(func(m *Message) bool {
		held[m.ID] = m.State().Held
		if m.ID == ids[0] {
			if err := s2.Record(ids[0], true, Record{T: "attempt", N: 1, At: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if err := s2.Record(ids[2], true, Record{T: "hold", At: time.Now()}); err != nil {
				t.Fatal(err)
			}
			s2.newLogs.mu.Lock()
			if s2.newLogs.ids[ids[0]] || !s2.newLogs.ids[ids[2]] {
				t.Errorf("tracked: %v; want %s only (not yet reached)", s2.newLogs.ids, ids[2])
			}
			s2.newLogs.mu.Unlock()
		}
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 3 || held[ids[0]] || held[ids[1]] || !held[ids[2]] {
		t.Errorf("held = %v, want %s held only", held, ids[2])
	}
	if s2.newLogs.ids != nil {
		t.Error("still tracking new logs after recovery")
	}
}

// TestRecoverManyInBlocks: more messages than the readers may read ahead,
// every one recovered exactly once and in ID order.
func TestRecoverManyInBlocks(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	var want []string
	for range recoverChunk*(recoverAhead+2) + recoverChunk/2 {
		id, f := commitOne(t, s, "x\r\n")
		f.Close()
		want = append(want, id)
	}
	s.Close()
	slices.Sort(want)
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	var got []string
	if err := s2.Recover(func(m *Message) { got = append(got, m.ID) }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("recovered %d messages, want %d in ID order", len(got), len(want))
	}
}

// FuzzWithoutPrefix: cutting the prefix off a trailer never changes the
// envelope decoded from it, whatever the envelope's strings hold.
func FuzzWithoutPrefix(f *testing.F) {
	f.Add("a@example.com", "b@example.org", []byte("DKIM-Signature: v=1\r\n"))
	f.Add(`x","prefix":"AAAA"}`, `"},"prefix":"QQ=="}`, []byte{})
	f.Add("", `,"prefix":"`, []byte(nil))
	f.Fuzz(func(t *testing.T, from, to string, prefix []byte) {
		env := &Envelope{ID: "0123456789ABCDEF", From: from, To: []string{to}, Received: time.Unix(1, 2).UTC()}
		tail, err := encodeTail(env, prefix, 0, "", 0, 0)
		if err != nil {
			t.Fatalf("encodeTail: %v", err) // json.Marshal of strings and bytes cannot fail
		}
		tr := tail[:len(tail)-footerSize]
		var want, got struct {
			Env *Envelope `json:"env"`
		}
		if err := json.Unmarshal(tr, &want); err != nil {
			t.Fatal(err)
		}
		cut, n := withoutPrefix(append([]byte(nil), tr...))
		if err := json.Unmarshal(cut, &got); err != nil {
			t.Fatalf("%q cut to %q: %v", tr, cut, err)
		}
		if !reflect.DeepEqual(got.Env, want.Env) {
			t.Fatalf("envelope %+v after the cut, want %+v", got.Env, want.Env)
		}
		if len(prefix) > 0 && len(cut) == len(tr) {
			t.Fatalf("prefix not cut from %q", tr)
		}
		if n != len(prefix) {
			t.Fatalf("prefix of %d bytes cut as %d", len(prefix), n)
		}
	})
}

// A message committed over a free file is durable at the file's fsync: no
// directory fsync before Commit returns, and no rename (resident.go). After
// a crash, recovery finds it under the free name by its trailer (this very
// slot) and its CRC, and gives it its ID; with one byte of it not on disk it
// is not a message (never acknowledged) but a free file again.
func TestSlotCommitRecoveredWithoutItsRename(t *testing.T) {
	for _, torn := range []bool{false, true} {
		dir := t.TempDir()
		s := openAt(t, dir, Options{})
		old, fresh := commitOne(t, s, "Subject: old\r\n\r\nold body\r\n")
		if err := s.Finish(old, fresh); err != nil {
			t.Fatal(err)
		}
		before := s.flush.n.Load()
		id, fresh := commitOne(t, s, "Subject: new\r\n\r\nnew body, in the old one's file\r\n")
		fresh.f.Close() // a crash: not Close, which names a message that waits
		if n := s.flush.n.Load() - before; n != 0 {
			t.Fatalf("a commit into a free file made %d directory fsyncs, want none", n)
		}
		s.Close()
		// It stays in place, under the free file's name.
		msgDir := filepath.Join(dir, "msg")
		if _, err := os.Stat(filepath.Join(msgDir, id)); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("a message committed into a free file has its own name (%v), want it in place", err)
		}
		if torn {
			f, _ := os.OpenFile(filepath.Join(msgDir, freePrefix+old), os.O_RDWR, 0)
			f.WriteAt([]byte("X"), 20)
			f.Close()
		}
		s2, err := Open(dir, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		if err := s2.Recover(func(m *Message) { got = append(got, m.ID) }); err != nil {
			t.Fatal(err)
		}
		if torn {
			if len(got) != 0 || s2.FreeFiles() != 1 {
				t.Errorf("torn: recovered %v with %d free files, want nothing and the file free", got, s2.FreeFiles())
			}
		} else {
			rc, _, err := s2.Body(id)
			if err != nil || len(got) != 1 || got[0] != id {
				t.Fatalf("recovered %v (%v), want %s", got, err, id)
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			if want := "P: 1\r\nSubject: new\r\n\r\nnew body, in the old one's file\r\n"; string(b) != want {
				t.Errorf("recovered bytes %q, want %q", b, want)
			}
		}
		s2.Close()
	}
}
