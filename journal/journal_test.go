package journal

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 4, 10, 2, 0, 0, time.UTC)

// clock is a test clock that advances by hand.
type clock struct{ ns atomic.Int64 }

func newClock() *clock               { c := &clock{}; c.ns.Store(t0.UnixNano()); return c }
func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }

func open(t testing.TB, dir string, c *clock, maxSize int64) *Journal {
	t.Helper()
	j, err := Open(Options{Dir: dir, Retention: 7 * 24 * time.Hour, MaxSize: maxSize, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// message appends the events of one delivered message: its delivery's in
// one Append, as the queue does (one write, every line indexed).
func message(j *Journal, c *clock, qid, mid, from string, to ...string) {
	j.Append(Event{Event: Accepted, QueueID: qid, MessageID: mid, Sender: from, User: "app", IP: "192.0.2.7",
		Listener: "submission", Recipients: to, Size: 2048, DKIM: []string{"s2026r"}, Route: []string{"primary"}})
	c.add(time.Second)
	var evs []Event
	for _, r := range to {
		evs = append(evs, Event{Event: Attempt, QueueID: qid, MessageID: mid, Sender: from, Recipient: r, Upstream: "primary",
			Host: "127.0.0.1", Port: 587, TLS: "TLS 1.3", Code: 250, Enhanced: "2.0.0", Text: "Ok 0100018c-" + qid, DurationMS: 12},
			Event{Event: Delivered, QueueID: qid, MessageID: mid, Sender: from, Recipient: r, Upstream: "primary",
				Code: 250, Enhanced: "2.0.0", Text: "Ok 0100018c-" + qid})
	}
	j.Append(evs...)
	c.add(time.Second)
}

func names(tr Trail) string {
	var s []string
	for _, e := range tr.Events {
		s = append(s, e.Event)
	}
	return strings.Join(s, ",")
}

func TestTraceByEveryKindOfQuery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newClock()
	j := open(t, dir, c, 1e9)
	message(j, c, "0ABCDEFGHJKMNPQR", "m1@app.example", "Scanner@Example.com", "a@dest.example", "b@dest.example")
	message(j, c, "1ABCDEFGHJKMNPQR", "m2@app.example", "other@example.com", "c@dest.example")
	j.Append(Event{Event: Held, QueueID: "1ABCDEFGHJKMNPQR", MessageID: "m2@app.example", Sender: "other@example.com", By: "cli"})

	check := func(t *testing.T, tr func(q string) Result) {
		for _, tc := range []struct{ q, qid, events string }{
			{"0ABCDEFGHJKMNPQR", "0ABCDEFGHJKMNPQR", "accepted,attempt,delivered,attempt,delivered"},
			{"0abcdefghjkmnpqr", "0ABCDEFGHJKMNPQR", "accepted,attempt,delivered,attempt,delivered"},
			{"<m1@app.example>", "0ABCDEFGHJKMNPQR", "accepted,attempt,delivered,attempt,delivered"},
			{"m1@app.example", "0ABCDEFGHJKMNPQR", "accepted,attempt,delivered,attempt,delivered"},
			{"scanner@example.com", "0ABCDEFGHJKMNPQR", "accepted,attempt,delivered,attempt,delivered"},
			{"B@dest.example", "0ABCDEFGHJKMNPQR", "accepted,attempt,delivered,attempt,delivered"},
			{"c@dest.example", "1ABCDEFGHJKMNPQR", "accepted,attempt,delivered,held"},
			{"0100018c-1ABCDEFGHJKMNPQR", "1ABCDEFGHJKMNPQR", "accepted,attempt,delivered,held"},
		} {
			r := tr(tc.q)
			if len(r.Trails) != 1 || r.Trails[0].QueueID != tc.qid || names(r.Trails[0]) != tc.events {
				t.Errorf("trace %q = %+v, want %s: %s", tc.q, r.Trails, tc.qid, tc.events)
				continue
			}
			if tc.qid == "0ABCDEFGHJKMNPQR" && (r.Trails[0].MessageID != "m1@app.example" || r.Trails[0].Sender != "Scanner@Example.com") {
				t.Errorf("trail header %+v", r.Trails[0])
			}
		}
		if r := tr("nobody@example.com"); len(r.Trails) != 0 {
			t.Errorf("unknown address matched %+v", r.Trails)
		}
	}
	t.Run("daemon", func(t *testing.T) { check(t, func(q string) Result { return j.Trace(q, time.Time{}) }) })
	// fromDir traces through the files, as the command does without a daemon.
	fromDir := func(t *testing.T) {
		check(t, func(q string) Result {
			r, err := TraceDir(dir, q, time.Time{})
			if err != nil {
				t.Fatal(err)
			}
			return r
		})
	}
	t.Run("dir while open", fromDir)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.idx")); len(m) != 1 {
		t.Fatalf("index files after close: %v", m)
	}
	t.Run("sealed", fromDir)
	// --since: a window after both messages finds nothing.
	if r, _ := TraceDir(dir, "c@dest.example", c.now().Add(time.Minute)); len(r.Trails) != 0 {
		t.Errorf("since after the events matched %+v", r.Trails)
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newClock()
	j := open(t, dir, c, 1e9)
	defer j.Close()
	message(j, c, "0ABCDEFGHJKMNPQR", "m1@app.example", "s@example.com", "a@dest.example", "b@dest.example")
	want := Message{QueueID: "0ABCDEFGHJKMNPQR", MessageID: "m1@app.example", Sender: "s@example.com",
		Recipients: []string{"a@dest.example", "b@dest.example"}, Time: t0}
	for _, id := range []string{"m1@app.example", "<m1@app.example>", "0100018c-0ABCDEFGHJKMNPQR"} {
		m, ok := j.Lookup(id)
		if !ok || !reflect.DeepEqual(m, want) {
			t.Errorf("Lookup(%q) = %+v, %v; want %+v", id, m, ok, want)
		}
	}
	if _, ok := j.Lookup("nope@app.example"); ok {
		t.Error("Lookup of an unknown ID succeeded")
	}
}

// A crash leaves the active segment without an index: the next Open
// indexes it, and nothing before the crash is lost.
func TestReopenAfterCrash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newClock()
	j := open(t, dir, c, 1e9)
	message(j, c, "0ABCDEFGHJKMNPQR", "m1@app.example", "s@example.com", "a@dest.example")
	// No Close: simulate kill -9 by abandoning it (stop its goroutine only)
	// and cut the last line short as a torn write would.
	j.mu.Lock()
	j.closed = true
	f := j.act.f
	j.mu.Unlock()
	f.Write([]byte(`{"time":"2026-12-04T10:02:09Z","event":"deliv`))
	j2 := open(t, dir, c, 1e9)
	defer j2.Close()
	r := j2.Trace("a@dest.example", time.Time{})
	if len(r.Trails) != 1 || names(r.Trails[0]) != "accepted,attempt,delivered" {
		t.Fatalf("after crash: %+v", r.Trails)
	}
	message(j2, c, "1ABCDEFGHJKMNPQR", "m2@app.example", "s@example.com", "a@dest.example")
	if r := j2.Trace("a@dest.example", time.Time{}); len(r.Trails) != 2 {
		t.Fatalf("after more mail: %d trails", len(r.Trails))
	}
}

func dirSize(t *testing.T, dir string) int64 {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if info, err := e.Info(); err == nil {
			n += info.Size()
		}
	}
	return n
}

func TestMaxSizeDropsOldestFirst(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newClock()
	const maxSize = 1 << 20
	j := open(t, dir, c, maxSize)
	for i := range 20000 { // ≈ 20000 × 3 × 300 bytes: many times the bound
		message(j, c, fmt.Sprintf("%016d", i), fmt.Sprintf("m%d@app.example", i), "s@example.com", fmt.Sprintf("r%d@dest.example", i))
		if i%1000 == 0 {
			if n := dirSize(t, dir); n > maxSize {
				t.Fatalf("after %d messages the journal holds %d bytes > %d", i, n, maxSize)
			}
		}
	}
	j.Close()
	if n := dirSize(t, dir); n > maxSize || n < maxSize/2 {
		t.Fatalf("journal holds %d bytes, want at most %d (and most of it used)", n, maxSize)
	}
	// The oldest went first: the last message is traceable, the first is not.
	if r, _ := TraceDir(dir, "r19999@dest.example", time.Time{}); len(r.Trails) != 1 {
		t.Errorf("newest message not found: %+v", r)
	}
	if r, _ := TraceDir(dir, "r0@dest.example", time.Time{}); len(r.Trails) != 0 {
		t.Errorf("oldest message still there: %+v", r)
	}
}

func TestRetention(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newClock()
	j, err := Open(Options{Dir: dir, Retention: 24 * time.Hour, MaxSize: 1e9, Now: c.now, SyncInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	message(j, c, "0ABCDEFGHJKMNPQR", "old@app.example", "s@example.com", "a@dest.example")
	c.add(2 * time.Hour) // the segment is sealed at its first hour
	message(j, c, "1ABCDEFGHJKMNPQR", "new@app.example", "s@example.com", "a@dest.example")
	c.add(23 * time.Hour)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := j.Trace("a@dest.example", time.Time{})
		if len(r.Trails) == 1 && r.Trails[0].QueueID == "1ABCDEFGHJKMNPQR" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("old segment not dropped after retention: %d trails", len(r.Trails))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestEncodingRoundTrip(t *testing.T) {
	t.Parallel()
	e := Event{Time: t0, Event: Bounced, QueueID: "0ABCDEFGHJKMNPQR", MessageID: "x@y", Sender: "",
		Recipient: "a@b", Upstream: "primary", Code: 550, Enhanced: "5.1.1", Text: "user <unknown>\t\"quoted\" \\ \x01 \xff é \u2028"}
	var got Event
	line := appendJSON(nil, &e)
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatal(err)
	}
	e.Text = "user <unknown>\t\"quoted\" \\ \x01 \ufffd é \u2028"
	if !reflect.DeepEqual(got, e) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, e)
	}
	if strings.ContainsAny(string(line[:len(line)-1]), "<>\n") {
		t.Errorf("line not inert: %s", line)
	}
}

func FuzzEncoding(f *testing.F) {
	f.Add("x@y", "user unknown", "a@b", 550)
	f.Add("<\xff>", "\u2028\x00\"", "", 0)
	f.Fuzz(func(t *testing.T, mid, text, rcpt string, code int) {
		e := Event{Time: t0, Event: Deferred, QueueID: "Q", MessageID: mid, Sender: rcpt, Recipient: rcpt,
			Recipients: []string{rcpt, mid}, Code: code, Text: text}
		line := appendJSON(nil, &e)
		var got Event
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if strings.Count(string(line), "\n") != 1 {
			t.Fatalf("not one line: %q", line)
		}
		// Valid UTF-8 survives unchanged; each invalid byte becomes U+FFFD
		// (as encoding/json does).
		var want strings.Builder
		for _, r := range mid {
			want.WriteRune(r) // range yields utf8.RuneError for each invalid byte
		}
		if want.String() != got.MessageID {
			t.Fatalf("message id %q → %q", mid, got.MessageID)
		}
		if got.Code != code {
			t.Fatalf("code %d → %d", code, got.Code)
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	dir := b.TempDir()
	j, err := Open(Options{Dir: dir, Retention: 7 * 24 * time.Hour, MaxSize: 1e9})
	if err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	e := Event{Event: Accepted, QueueID: "0ABCDEFGHJKMNPQR", MessageID: "20261204100200.12345@app.example.com",
		Sender: "scanner@example.com", User: "scanner", IP: "192.0.2.7", Listener: "submission",
		Recipients: []string{"someone@dest.example"}, Size: 2048, DKIM: []string{"s2026r", "s2026e"}, Route: []string{"primary", "backup"}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			j.Append(e)
		}
	})
}

// Below MinFreeSpace the journal writes nothing: its events never take
// the space the spool keeps for itself.
func TestPausedWhenTheDiskIsLow(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := newClock()
	j, err := Open(Options{Dir: dir, Retention: time.Hour, MaxSize: 1e9, Now: c.now, MinFreeSpace: 1 << 62})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 500 { // past the first free-space check
		message(j, c, fmt.Sprintf("%016d", i), "m@app.example", "s@example.com", "a@dest.example")
	}
	if n := j.Size(); n > checkEvery+4096 {
		t.Errorf("journal wrote %d bytes with the disk below its floor", n)
	}
	j.Close()
}

// FuzzReadDamaged: a journal directory holding any bytes — a torn or
// foreign .log, a corrupt .idx — never makes a trace panic or hang, and
// NormalizeMessageID is idempotent.
func FuzzReadDamaged(f *testing.F) {
	line := appendJSON(nil, &Event{Time: t0, Event: Accepted, QueueID: "0ABCDEFGHJKMNPQR", MessageID: "m@x", Sender: "s@x", Recipients: []string{"r@x"}})
	f.Add(line, []byte(idxMagic+"\x00\x00\x00\x00\x00\x00\x00\x01"), "r@x")
	f.Add(append(line, `{"time":"x`...), []byte("junk"), "<m@x>")
	f.Add([]byte{}, []byte{}, "<<a>>")
	f.Fuzz(func(t *testing.T, log, idx []byte, q string) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "0000000001.log"), log, 0o600)
		os.WriteFile(filepath.Join(dir, "0000000002.log"), log, 0o600)
		os.WriteFile(filepath.Join(dir, "0000000002.idx"), idx, 0o600)
		if _, err := TraceDir(dir, q, time.Time{}); err != nil {
			t.Fatal(err)
		}
		LookupDir(dir, q)
		if n := NormalizeMessageID(q); NormalizeMessageID(n) != n {
			t.Fatalf("NormalizeMessageID(%q) = %q, not idempotent", q, n)
		}
	})
}
