package journal

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// TestTraceMillionMessages measures `sluice trace` on a journal of
// 1,000,000 messages (accepted, attempt, delivered each; about 1 GB). It
// takes a minute and a gigabyte of disk, so it runs only when asked:
//
//	SLUICE_TRACE_1M=1 go test -run TestTraceMillionMessages -v ./journal/
func TestTraceMillionMessages(t *testing.T) {
	if os.Getenv("SLUICE_TRACE_1M") == "" {
		t.Skip("set SLUICE_TRACE_1M=1 to build a 1,000,000-message journal and time lookups")
	}
	dir := t.TempDir()
	c := newClock()
	j, err := Open(Options{Dir: dir, Retention: 30 * 24 * time.Hour, MaxSize: 4e9, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	const n = 1_000_000
	start := time.Now()
	for i := range n {
		qid := fmt.Sprintf("%016d", i)
		to := fmt.Sprintf("user%d@dest%d.example", i, i%100)
		mid := fmt.Sprintf("%d.%d@app.example.com", i, i*7)
		j.Append(Event{Event: Accepted, QueueID: qid, MessageID: mid, Sender: "scanner@example.com", User: "scanner",
			IP: "192.0.2.7", Listener: "submission", Recipients: []string{to}, Size: 2048, DKIM: []string{"s2026r"}, Route: []string{"primary"}})
		j.Append(Event{Event: Attempt, QueueID: qid, MessageID: mid, Sender: "scanner@example.com", Recipient: to, Upstream: "primary",
			Host: "127.0.0.1", Port: 587, TLS: "TLS 1.3", Code: 250, Enhanced: "2.0.0", Text: "Ok 0100018c" + qid, DurationMS: 12})
		j.Append(Event{Event: Delivered, QueueID: qid, MessageID: mid, Sender: "scanner@example.com", Recipient: to, Upstream: "primary",
			Code: 250, Enhanced: "2.0.0", Text: "Ok 0100018c" + qid})
		if i%1000 == 0 {
			c.add(time.Second)
		}
	}
	j.Close()
	t.Logf("wrote %d messages in %v, %d bytes on disk", n, time.Since(start).Round(time.Millisecond), dirSize(t, dir))
	for _, q := range []string{fmt.Sprintf("%016d", 123457), "<123457.864199@app.example.com>", "user999999@dest99.example", "0100018c0000000000777777"} {
		start := time.Now()
		r, err := TraceDir(dir, q, time.Time{})
		d := time.Since(start)
		if err != nil || len(r.Trails) != 1 || len(r.Trails[0].Events) != 3 {
			t.Fatalf("trace %s: %+v %v", q, r, err)
		}
		t.Logf("trace %-40s %v", q, d)
		if d > time.Second {
			t.Errorf("trace %s took %v, over a second", q, d)
		}
	}
}
