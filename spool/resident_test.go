package spool

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// inPlace commits a first message (into a new file), finishes it so its
// file is free, and commits id into that slot: a message in place.
func inPlace(t *testing.T, s *Spool, body string) (id, slotName string, fresh *Fresh) {
	t.Helper()
	first, f := commitOne(t, s, "Subject: first\r\n\r\nfirst\r\n")
	if err := s.Finish(first, f); err != nil {
		t.Fatal(err)
	}
	id, fresh = commitOne(t, s, body)
	v, ok := s.resident.Load(id)
	if !ok {
		t.Fatalf("%s committed into a free file is not in place", id)
	}
	return id, v.(string), fresh
}

func finishedLines(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, finishedName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	b = bytes.TrimRight(b, "\x00") // the log's allocated rest
	return strings.Fields(strings.ReplaceAll(string(b), " ", "/"))
}

// A message finished in place keeps its slot's name, and the zeros written
// over it are not fsync'd: if a crash loses them, its bytes and trailer are
// back on disk as they were when it was accepted. The finished log, fsync'd
// before Finish returns, is what keeps it from being delivered again.
func TestFinishedInPlaceStaysGone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	id, slotName, fresh := inPlace(t, s, "Subject: in place\r\n\r\ndelivered once\r\n")
	path := filepath.Join(dir, "msg", slotName)
	accepted, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Finish(id, fresh); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); bytes.Contains(b, []byte("delivered once")) {
		t.Error("the finished message's bytes are still in its free file")
	}
	slot := strings.TrimPrefix(slotName, freePrefix)
	if got := finishedLines(t, dir); len(got) != 1 || got[0] != slot+"/"+id {
		t.Errorf("finished log %q, want the one line %s %s", got, slot, id)
	}
	s.Close()
	// The zeros never reached the disk.
	if err := os.WriteFile(path, accepted, 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openAt(t, dir, Options{})
	n := 0
	if err := s2.Recover(func(*Message) { n++ }); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("recovered %d messages, want none: %s was finished", n, id)
	}
	if _, err := s2.Read(id); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read(%s) after recovery: %v, want not found", id, err)
	}
	// Without the line it would be a message again: the premise.
	s2.Close()
	os.Remove(filepath.Join(dir, finishedName))
	os.WriteFile(path, accepted, 0o600)
	s3 := openAt(t, dir, Options{})
	if _, err := s3.Read(id); err != nil {
		t.Fatalf("without the finished log the restored slot is not recovered (%v): the test proves nothing", err)
	}
}

// The finished log is rewritten once it holds finishedRotate lines, keeping
// only the lines whose slot may still hold its finished message: it stays
// small however many messages pass, and the last finished one stays gone.
func TestFinishedLogRotates(t *testing.T) {
	// Not parallel: finishedRotate is the package's.
	defer func(n int) { finishedRotate = n }(finishedRotate)
	finishedRotate = 8
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	var lastID, lastSlot string
	var accepted []byte
	for i := range 100 {
		id, slotName, fresh := inPlace(t, s, "Subject: n\r\n\r\nbody\r\n")
		if i == 99 {
			lastID, lastSlot = id, slotName
			accepted, _ = os.ReadFile(filepath.Join(dir, "msg", slotName))
		}
		if err := s.Finish(id, fresh); err != nil {
			t.Fatal(err)
		}
		if n := len(finishedLines(t, dir)); n > finishedRotate {
			t.Fatalf("after %d messages the finished log has %d lines, want at most %d", i+1, n, finishedRotate)
		}
	}
	lines := finishedLines(t, dir)
	want := strings.TrimPrefix(lastSlot, freePrefix) + "/" + lastID
	if !strings.Contains(strings.Join(lines, " "), want) {
		t.Fatalf("finished log %q lacks the last message's line %s", lines, want)
	}
	if _, err := os.Stat(filepath.Join(dir, finishedName+tmpSuffix)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a rotation left its temporary file (%v)", err)
	}
	s.Close()
	os.WriteFile(filepath.Join(dir, "msg", lastSlot), accepted, 0o600)
	s2 := openAt(t, dir, Options{})
	if _, err := s2.Read(lastID); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the last finished message came back after its zeros were lost: %v", err)
	}
}

// A listing while serve runs (a View) sees the messages in place, and reads
// them by ID; once finished they are gone from it. A state log gives a
// message in place its own name first.
func TestMessagesInPlaceAreListedAndNamed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	body := "Subject: in place\r\n\r\nlisted\r\n"
	id, slotName, fresh := inPlace(t, s, body)
	// `queue show ID`: a View that walked nothing finds it by one scan.
	if m, err := View(dir, Options{}).Read(id); err != nil || m.Env.ID != id {
		t.Errorf("a new View's Read(%s): %v", id, err)
	}
	for _, sp := range []*Spool{s, View(dir, Options{})} {
		ids, err := sp.IDs()
		if err != nil || len(ids) != 1 || ids[0] != id {
			t.Errorf("IDs() = %v, %v; want [%s]", ids, err, id)
		}
		var walked []string
		sp.Walk(func(id string) error { walked = append(walked, id); return nil })
		if len(walked) != 1 || walked[0] != id {
			t.Errorf("Walk gave %v, want [%s]", walked, id)
		}
		m, err := sp.ReadEnvelope(id)
		if err != nil || m.Env.ID != id {
			t.Fatalf("ReadEnvelope(%s): %v", id, err)
		}
		if b := readBody(t, sp, id); b != "P: 1\r\n"+body {
			t.Errorf("Body(%s) = %q", id, b)
		}
	}
	if err := s.Record(id, true, Record{T: "hold"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "msg", id)); err != nil {
		t.Errorf("a message in place with a state log has no name of its own: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "msg", slotName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("its slot's name is still there: %v", err)
	}
	if err := s.Finish(id, fresh); err != nil {
		t.Fatal(err)
	}
	if ids, _ := View(dir, Options{}).IDs(); len(ids) != 0 {
		t.Errorf("after Finish a View lists %v", ids)
	}
	// Finished in place: no longer listed either.
	id2, _, fresh2 := inPlace(t, s, body)
	if ids, _ := View(dir, Options{}).IDs(); len(ids) != 1 || ids[0] != id2 {
		t.Errorf("View lists %v, want [%s]", ids, id2)
	}
	if err := s.Finish(id2, fresh2); err != nil {
		t.Fatal(err)
	}
	if ids, _ := View(dir, Options{}).IDs(); len(ids) != 0 {
		t.Errorf("after Finish in place a View lists %v", ids)
	}
}

// A message in place that will wait (its Fresh closed: a breaker is open,
// or serve stops) gets its own name; and at most maxResident messages are
// in place at once, the rest committed into a slot are named at once.
func TestMessagesInPlaceBounded(t *testing.T) {
	// Not parallel: maxResident is the package's.
	defer func(n int64) { maxResident = n }(maxResident)
	maxResident = 2
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	// Four free files.
	var ids []string
	var fresh []*Fresh
	for range 4 {
		id, f := commitOne(t, s, "Subject: n\r\n\r\nfirst\r\n")
		ids, fresh = append(ids, id), append(fresh, f)
	}
	for i, id := range ids {
		if err := s.Finish(id, fresh[i]); err != nil {
			t.Fatal(err)
		}
	}
	ids, fresh = nil, nil
	syncs := s.flush.n.Load()
	for range 4 {
		id, f := commitOne(t, s, "Subject: n\r\n\r\nsecond\r\n")
		ids, fresh = append(ids, id), append(fresh, f)
	}
	if n := s.flush.n.Load() - syncs; n != 0 {
		t.Errorf("commits into slots made %d directory fsyncs, want none (in place or named, the trailer makes them durable)", n)
	}
	named := func(id string) bool {
		_, err := os.Stat(filepath.Join(dir, "msg", id))
		return err == nil
	}
	for i, id := range ids {
		if want := i >= 2; named(id) != want {
			t.Errorf("message %d of 4 committed into a slot: named %v, want %v (at most 2 in place)", i+1, named(id), want)
		}
	}
	fresh[0].Close()
	if !named(ids[0]) {
		t.Error("a message in place whose Fresh was closed (it waits) has no name of its own")
	}
	// A slot freed by a named message lets the next one stay in place.
	if err := s.Finish(ids[0], nil); err != nil {
		t.Fatal(err)
	}
	id, f := commitOne(t, s, "Subject: n\r\n\r\nthird\r\n")
	defer f.Close()
	if named(id) {
		t.Error("with one message in place of two allowed, the next commit into a slot was named")
	}
	for i := 1; i < 4; i++ {
		fresh[i].Close()
	}
}

// Serve's shutdown closes the spool while deliveries may still end: a
// message finished in place after Close is still recorded, durably.
func TestFinishInPlaceAfterClose(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	id, slotName, fresh := inPlace(t, s, "Subject: late\r\n\r\nfinished after Close\r\n")
	id2, _, fresh2 := inPlace(t, s, "Subject: later\r\n\r\nfinished after Close too\r\n")
	s.Close()
	if err := s.Finish(id, fresh); err != nil {
		t.Fatal(err)
	}
	s.Close() // again: the log opened by that Finish is closed too
	if err := s.Finish(id2, fresh2); err != nil {
		t.Fatal(err)
	}
	s.Close()
	lines := strings.Join(finishedLines(t, dir), " ")
	if !strings.Contains(lines, strings.TrimPrefix(slotName, freePrefix)+"/"+id) || !strings.Contains(lines, "/"+id2) {
		t.Errorf("finished log %q lacks %s and %s", lines, id, id2)
	}
}

// A listing's View found a message in place; if it leaves its slot before
// the View reads it, the View finds it under its name, or not at all once
// it is finished and another message is in its slot: never that one's bytes.
func TestViewFollowsMessageLeavingItsSlot(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	id, _, fresh := inPlace(t, s, "Subject: one\r\n\r\nfirst in the slot\r\n")
	v := View(dir, Options{})
	if ids, _ := v.IDs(); len(ids) != 1 || ids[0] != id {
		t.Fatalf("View lists %v, want [%s]", ids, id)
	}
	fresh.Close() // it waits: named
	if b := readBody(t, v, id); !strings.Contains(b, "first in the slot") {
		t.Errorf("Body(%s) after it was named = %q", id, b)
	}
	if m, err := v.ReadEnvelope(id); err != nil || m.Env.ID != id {
		t.Errorf("ReadEnvelope(%s) after it was named: %v", id, err)
	}

	id2, slot2, fresh2 := inPlace(t, s, "Subject: two\r\n\r\nsecond\r\n")
	v2 := View(dir, Options{})
	v2.IDs()
	if err := s.Finish(id2, fresh2); err != nil {
		t.Fatal(err)
	}
	id3, f3 := commitOne(t, s, "Subject: three\r\n\r\nthird, in the second's slot\r\n")
	defer f3.Close()
	if p := s.residentPath(id3); filepath.Base(p) != slot2 {
		t.Fatalf("the third message is in %q, want the second's slot %s (premise)", p, slot2)
	}
	for name, read := range map[string]func() error{
		"Read":         func() error { _, err := v2.Read(id2); return err },
		"ReadEnvelope": func() error { _, err := v2.ReadEnvelope(id2); return err },
		"Body":         func() error { _, _, err := v2.Body(id2); return err },
	} {
		if err := read(); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s(%s) after it was finished and its slot reused: %v, want not found", name, id2, err)
		}
	}
}

// After a crash left a message in its slot, `sluice queue` acting on the
// files with no daemon (an Open'ed spool that does not recover) adopts it
// first: then it is found by its ID, and can be held or deleted.
func TestAdoptSlotsNamesMessagesLeftInPlace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir, Options{})
	id, _, fresh := inPlace(t, s, "Subject: left\r\n\r\nleft in place by a crash\r\n")
	fresh.f.Close() // a crash: not Close, which would name it
	s2, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Read(id); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("before AdoptSlots a spool that did not recover reads %s: %v (premise)", id, err)
	}
	if err := s2.AdoptSlots(); err != nil {
		t.Fatal(err)
	}
	if b := readBody(t, s2, id); !strings.Contains(b, "left in place by a crash") {
		t.Errorf("after AdoptSlots %s reads %q", id, b)
	}
	if err := s2.Finish(id, nil); err != nil {
		t.Errorf("Finish (queue delete) after AdoptSlots: %v", err)
	}
}
