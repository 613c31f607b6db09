package spool

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

const srcRoot = "/dead"

func openSimAt(d *simDisk, root string) (*Spool, error) {
	return Open(root, Options{FS: d, Logger: slog.New(slog.DiscardHandler), Now: tick(), MaxFree: 4})
}

// importFixture builds a dead instance's spool on d (three messages to
// deliver — one with a log of two attempts and a delivered recipient, one
// held — and one already finished), and this instance's spool with one
// message of its own. It returns the bodies of the messages to adopt.
func importFixture(t *testing.T, d *simDisk) (want map[string][]byte, own string) {
	t.Helper()
	src, err := openSimAt(d, srcRoot)
	if err != nil {
		t.Fatal(err)
	}
	src.Recover(func(*Message) {})
	w := newWorld()
	m1 := w.commit(src, "DKIM: a\r\n", "Subject: a\r\n\r\n"+strings.Repeat("a", 500)+"\r\n", "a@x", "b@x")
	w.attempt(src, &m1, 1, map[string]string{"a@x": StateDelivered, "b@x": ""}, false)
	w.attempt(src, &m1, 2, map[string]string{"b@x": ""}, false)
	m2 := w.commit(src, "", "Subject: b\r\n\r\nb\r\n", "c@x")
	m2.fresh.Close()
	src.Record(m2.id, true, Record{T: "hold"})
	m3 := w.commit(src, "", "Subject: c\r\n\r\nc\r\n", "d@x")
	m3.fresh.Close()
	m4 := w.commit(src, "", "Subject: done\r\n\r\nd\r\n", "e@x")
	m4.fresh.Close()
	src.Record(m4.id, true, Record{T: "rcpt", Rcpt: "e@x", State: StateDelivered})
	src.Close()
	dst, err := openSimAt(d, spoolRoot)
	if err != nil {
		t.Fatal(err)
	}
	dst.Recover(func(*Message) {})
	mine := w.commit(dst, "", "Subject: mine\r\n\r\nmine\r\n", "z@x")
	mine.fresh.Close()
	dst.Close()
	want = map[string][]byte{}
	for _, m := range []msgRef{m1, m2, m3} {
		want[m.id] = w.written[m.id]
	}
	return want, mine.id
}

func runImport(d *simDisk) {
	s, err := openSimAt(d, spoolRoot)
	if err != nil {
		return
	}
	defer s.Close()
	if s.Recover(func(*Message) {}) != nil {
		return
	}
	s.Import(srcRoot)
}

// committed lists the messages Recover finds in root, with their bodies.
func committed(t *testing.T, d *simDisk, root string, ctx ...string) map[string]*Message {
	t.Helper()
	s := View(root, Options{FS: d, Logger: slog.New(slog.DiscardHandler)})
	ids, err := s.IDs()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*Message{}
	for _, id := range ids {
		m, err := s.Read(id)
		if err != nil {
			t.Fatalf("%v: %s/%s: %v\n%s", ctx, root, id, err, d.traceString())
		}
		rc, _, err := s.Body(id)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		m.Prefix = b // the whole delivered form, for comparison
		out[id] = m
	}
	return out
}

// TestImportPowerLossAtEveryStep: `sluice queue import` cut after every
// step, in every loss mode and by kill -9; then, before the import is run
// again, this instance's daemon starts and delivers what it has. In the
// end every message of the dead spool was delivered or is queued here,
// exactly once, with its history; none is in both spools at any moment.
func TestImportPowerLossAtEveryStep(t *testing.T) {
	t.Parallel()
	base := newSimDisk()
	want, own := importFixture(t, base)
	probe := base.clone()
	probe.steps, probe.trace = 0, nil
	runImport(probe)
	n := countSteps(probe)
	// What Import reported done is durable: the power is cut right after.
	if got := committed(t, probe.crash(lossModes[0]), spoolRoot); len(got) != len(want)+1 {
		t.Fatalf("uncut import: %d messages here, want %d\n%s", len(got), len(want)+1, probe.traceString())
	}
	for cut := 0; cut <= n; cut++ {
		for _, m := range append([]*lossMode{nil}, ptrs(lossModes)...) {
			d := base.clone()
			d.cut = cut
			runImport(d)
			back := d.clone()
			ctx := fmt.Sprintf("import killed after step %d (%s)", cut, stepName(d, cut))
			if m != nil {
				back = d.crash(*m)
				ctx = fmt.Sprintf("import cut after step %d (%s), %s", cut, stepName(d, cut), m)
			}
			srcNow, dstNow := committed(t, back, srcRoot), committed(t, back, spoolRoot)
			for id := range want {
				if srcNow[id] != nil && dstNow[id] != nil {
					t.Errorf("%s: %s is in both spools", ctx, id)
				}
			}
			// This instance's daemon starts and delivers all it has.
			delivered := map[string]bool{}
			s, err := openSimAt(back, spoolRoot)
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			if err := s.Recover(func(m *Message) { ids = append(ids, m.ID) }); err != nil {
				t.Fatalf("%s: recover: %v", ctx, err)
			}
			for _, id := range ids {
				a, err := s.Attempt(id, nil, Record{At: time.Now(), N: 9})
				if err != nil {
					t.Fatalf("%s: attempt %s: %v", ctx, id, err)
				}
				rc, _ := a.Open()
				b, _ := io.ReadAll(rc)
				if w, ok := want[id]; ok && !bytes.Equal(b, w) {
					t.Errorf("%s: %s delivered as %q, want %q", ctx, id, b, w)
				}
				if err := a.Finish(); err != nil {
					t.Fatal(err)
				}
				delivered[id] = true
			}
			s.Close()
			// Power is cut once more before the import is run again.
			back = back.crash(lossModes[0])
			// The import, run again, finishes the job.
			runImport(back)
			srcEnd, dstEnd := committed(t, back, srcRoot, ctx), committed(t, back, spoolRoot, ctx)
			for id, body := range want {
				n := 0
				if delivered[id] {
					n++
				}
				if m := dstEnd[id]; m != nil {
					n++
					if !bytes.Equal(m.Prefix, body) {
						t.Errorf("%s: %s imported as %q", ctx, id, m.Prefix)
					}
				}
				if srcEnd[id] != nil {
					t.Errorf("%s: %s still in the dead spool after the second run", ctx, id)
				}
				if n != 1 {
					t.Errorf("%s: %s delivered or queued %d times, want once\n%s", ctx, id, n, d.traceString())
				}
			}
			if !delivered[own] && dstEnd[own] == nil {
				t.Errorf("%s: this spool's own message %s lost", ctx, own)
			}
			if t.Failed() {
				return
			}
		}
	}
}

// TestImportKeepsHistory: attempt counts, delivered recipients and holds
// come along; a finished message stays behind; a second run does nothing.
func TestImportKeepsHistory(t *testing.T) {
	t.Parallel()
	d := newSimDisk()
	want, _ := importFixture(t, d)
	s, err := openSimAt(d, spoolRoot)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Recover(func(*Message) {})
	res, err := s.Import(srcRoot)
	if err != nil {
		t.Fatal(err)
	}
	if res.Imported != 3 || res.Finished != 1 || len(res.Skipped) != 0 {
		t.Fatalf("first run: %+v, want 3 imported, 1 finished", res)
	}
	got := map[string]State{}
	s2, _ := openSimAt(d, "/other") // a fresh process's view, as at the next start
	s2.Close()
	if err := s.Recover(func(m *Message) { got[m.ID] = m.State() }); err != nil {
		t.Fatal(err)
	}
	held, twice := 0, 0
	for id := range want {
		st, ok := got[id]
		if !ok {
			t.Fatalf("%s not recovered after import", id)
		}
		if st.Held {
			held++
		}
		if st.Attempts == 2 && st.RcptState("a@x") == StateDelivered && st.RcptState("b@x") == StatePending {
			twice++
		}
	}
	if held != 1 || twice != 1 {
		t.Errorf("history lost: %d held (want 1), %d with 2 attempts and a@x delivered (want 1): %+v", held, twice, got)
	}
	res, err = s.Import(srcRoot)
	if err != nil || res.Imported != 0 {
		t.Errorf("second run: %+v %v, want nothing imported", res, err)
	}
}
