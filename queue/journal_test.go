package queue

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/upstream"
)

// recorder is a journal.Sink that keeps what it is given.
type recorder struct {
	mu  sync.Mutex
	evs []journal.Event
}

func (r *recorder) Append(evs ...journal.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, evs...)
	r.mu.Unlock()
}

// timeline returns "event/recipient" per event of queue ID id.
func (r *recorder) timeline(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.evs {
		if e.QueueID == id {
			out = append(out, e.Event+"/"+e.Recipient)
		}
	}
	return out
}

// TestJournalAndWebhookEvents: the queue journals every attempt and
// outcome, and posts the events queue.webhook_events selects, each with
// its own id.
func TestJournalAndWebhookEvents(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var got []Event
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev Event
		json.Unmarshal(body, &ev)
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
	}))
	defer srv.Close()
	dir := t.TempDir()
	up := &fakeUpstream{decide: func(d delivery, rcpt string, n int) error {
		switch {
		case rcpt == "nobody@example.org":
			return errNoSuchUser()
		case rcpt == "slow@example.org" && n == 0:
			return &upstream.Error{Upstream: "fake", Code: 451, Enhanced: [3]int{4, 2, 0}, Message: "later"}
		}
		return nil
	}}
	opts, lb := testOptions(t, dir, up)
	// It timed out once in a loaded `make test` (the 15 s bound) and
	// never alone: the queue's log says where, should it again.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("queue log:\n%s", lb.String())
		}
	})
	opts.Config.Webhook = srv.URL
	opts.Config.WebhookEvents = []string{"delivered", "deferred", "bounced"}
	rec := &recorder{}
	opts.Journal = rec
	q := running(t, opts)
	before := mQueueSecs.Count()
	id := enqueue(t, q, &Envelope{MessageID: "m1@example.com", From: "alice@example.com", To: []string{"bob@example.org", "nobody@example.org", "slow@example.org"}}, "", testMsg)
	waitFor(t, "four webhook events and an empty spool", func() bool {
		des, _ := os.ReadDir(filepath.Join(dir, "webhook"))
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, ev := range got {
			if ev.QueueID == id {
				n++
			}
		}
		return n == 4 && len(des) == 0 && q.Len() == 0
	})
	mu.Lock()
	var kinds []string
	ids := map[string]bool{}
	for _, ev := range got {
		if ev.QueueID != id {
			continue // the report to alice, delivered
		}
		kinds = append(kinds, ev.Event+"/"+ev.Recipient)
		if ev.ID == "" || ids[ev.ID] || ev.QueueID != id || ev.MessageID != "m1@example.com" {
			t.Errorf("event %+v: id missing, repeated, or wrong message", ev)
		}
		ids[ev.ID] = true
	}
	mu.Unlock()
	sort.Strings(kinds)
	if want := "bounced/nobody@example.org deferred/slow@example.org delivered/bob@example.org delivered/slow@example.org"; strings.Join(kinds, " ") != want {
		t.Errorf("webhook events %v, want %s", kinds, want)
	}
	tl := rec.timeline(id)
	// The first attempt: three recipients tried, their outcomes; the
	// report for nobody; then the retry of slow.
	for _, want := range []string{"attempt/bob@example.org", "delivered/bob@example.org", "bounced/nobody@example.org",
		"deferred/slow@example.org", "dsn_sent/nobody@example.org", "delivered/slow@example.org"} {
		if !slices.Contains(tl, want) {
			t.Errorf("journal timeline %v lacks %s", tl, want)
		}
	}
	if n := strings.Count(strings.Join(tl, " "), "attempt/slow@example.org"); n != 2 {
		t.Errorf("%d attempts of slow journaled, want 2: %v", n, tl)
	}
	if d := mQueueSecs.Count() - before; d < 3 {
		t.Errorf("sluice_queue_time_seconds observed %d final outcomes, want at least 3", d)
	}
}
