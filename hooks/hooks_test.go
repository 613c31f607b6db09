package hooks

import (
	"bytes"
	"context"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/queue"
	"github.com/sluicemail/sluice/suppress"
)

// events collects what the handler journals.
type events struct {
	mu  sync.Mutex
	evs []journal.Event
}

func (e *events) Append(evs ...journal.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, evs...)
	e.mu.Unlock()
}

type rig struct {
	h    *Handler
	list *suppress.List
	ix   *suppress.Index
	j    *events
	dsns []queue.ProviderBounce
}

func newRig(t *testing.T) *rig {
	st, err := suppress.OpenFile(filepath.Join(t.TempDir(), "s.log"), false, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{j: &events{}}
	r.list = suppress.NewList(st, time.Hour, nil, nil)
	r.ix = suppress.NewIndex(st, time.Hour, nil)
	t.Cleanup(func() { r.ix.Close(); st.Close() })
	r.h = New(Options{Token: "tok", Index: r.ix, List: r.list, Journal: r.j,
		DSN: func(b queue.ProviderBounce) (string, error) { r.dsns = append(r.dsns, b); return "DSN1", nil }})
	return r
}

func (r *rig) post(path string, body []byte, basic string) int {
	req := httptest.NewRequest("POST", path, bytes.NewReader(body))
	if basic != "" {
		req.SetBasicAuth("any", basic)
	}
	w := httptest.NewRecorder()
	r.h.ServeHTTP(w, req)
	return w.Code
}

func TestHandler(t *testing.T) {
	r := newRig(t)
	body := fixture(t, "ses-bounce.json")
	for _, c := range []struct {
		method, path, basic string
		body                []byte
		want                int
	}{
		{"POST", "/hooks/ses", "", body, 401},
		{"POST", "/hooks/ses?token=tok2", "", body, 401},
		{"POST", "/hooks/ses", "wrong", body, 401},
		{"GET", "/hooks/ses?token=tok", "", nil, 405},
		{"POST", "/hooks/other?token=tok", "", body, 404},
		{"POST", "/hooks/ses?token=tok", "", []byte("{"), 400},
		{"POST", "/hooks/ses?token=tok", "", bytes.Repeat([]byte(" "), MaxBody+1), 413},
	} {
		req := httptest.NewRequest(c.method, c.path, bytes.NewReader(c.body))
		if c.basic != "" {
			req.SetBasicAuth("x", c.basic)
		}
		w := httptest.NewRecorder()
		r.h.ServeHTTP(w, req)
		if w.Code != c.want {
			t.Errorf("%s %s (basic %q): %d, want %d", c.method, c.path, c.basic, w.Code, c.want)
		}
	}
	if len(r.j.evs) != 0 || len(r.dsns) != 0 {
		t.Fatalf("refused requests changed something: %v %v", r.j.evs, r.dsns)
	}
	if n, _ := r.list.Len(context.Background()); n != 0 {
		t.Fatalf("refused requests suppressed %d", n)
	}

	// Unmatched: journaled under the recipient, 200, nothing suppressed.
	if code := r.post("/hooks/ses", body, "tok"); code != 200 {
		t.Fatalf("unmatched: %d", code)
	}
	if len(r.j.evs) != 1 || r.j.evs[0].Event != journal.ProviderEvent || r.j.evs[0].QueueID != "" || r.j.evs[0].Recipient != "jane@example.com" {
		t.Fatalf("unmatched journal: %+v", r.j.evs)
	}
	if _, ok := r.list.Check(context.Background(), "jane@example.com"); ok || len(r.dsns) != 0 {
		t.Fatal("an unmatched bounce suppressed or bounced")
	}

	// Matched (by the header Message-ID), repeated: one DSN.
	r.ix.Put(context.Background(), suppress.Message{QueueID: "Q1", MessageID: "<custom-message-ID>", Sender: "john@example.com", Recipients: []string{"Jane@Example.com"}})
	for range 3 {
		if code := r.post("/hooks/ses?token=tok", body, ""); code != 200 {
			t.Fatalf("matched: %d", code)
		}
	}
	if len(r.dsns) != 1 || r.dsns[0].Sender != "john@example.com" || r.dsns[0].Status != "5.1.1" || r.dsns[0].QueueID != "Q1" {
		t.Fatalf("DSNs: %+v", r.dsns)
	}
	e, ok := r.list.Check(context.Background(), "jane@example.com")
	if !ok || e.Kind != suppress.KindBounce || e.Source != "ses" || !strings.Contains(e.Reason, "5.1.1") {
		t.Fatalf("suppression entry: %+v %v", e, ok)
	}
	var dsnSent int
	for _, ev := range r.j.evs {
		if ev.Event == journal.DSNSent && ev.DSNQueueID == "DSN1" && ev.QueueID == "Q1" {
			dsnSent++
		}
	}
	if dsnSent != 1 {
		t.Fatalf("dsn_sent journaled %d times, want 1", dsnSent)
	}
}
