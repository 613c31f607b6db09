package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// TestWebhookEventsEndToEnd: with queue.webhook_events listing them, a
// delivery, a RCPT refused by the suppression list and a provider's bounce
// report each reach the webhook as one signed event with its own id.
func TestWebhookEventsEndToEnd(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	got := map[string]map[string]any{} // event → body
	ids := map[string]bool{}
	recv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev map[string]any
		json.Unmarshal(body, &ev)
		mu.Lock()
		defer mu.Unlock()
		id, _ := ev["id"].(string)
		if id == "" || ids[id] {
			t.Errorf("event without a fresh id: %s", body)
		}
		ids[id] = true
		if k, _ := ev["event"].(string); got[k] == nil { // the first of each kind (the report's own delivery comes later)
			got[k] = ev
		}
	}))
	defer recv.Close()
	d := launch(t, opsCfg(opsOpts{
		queue: "  webhook: " + recv.URL + "\n  webhook_secret: s3cret\n  webhook_events: [delivered, suppressed, provider_bounce, complained]\n",
		extra: "hooks:\n  token: " + hookToken + "\n"}))

	// delivered: the message the provider will later report as bounced.
	data := "From: <john@example.com>\r\nTo: <jane@example.com>\r\nSubject: hook test\r\nMessage-ID: <custom-message-ID>\r\n\r\nbody\r\n"
	qid, err := send(d.addrs["submission"], d.tlsConfig(), "app", "john@example.com", []string{"jane@example.com"}, data)
	if err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, d.env)
	// provider_bounce: SES reports it.
	if code := hookPost(t, d.httpAddr(), "ses", hookFixture(t, "ses-bounce.json"), "query", hookToken); code != 200 {
		t.Fatalf("ses hook: %d", code)
	}
	// suppressed: the address is now listed; the next RCPT is refused.
	if got := suppReply(suppRcpt(d, "jane@example.com")); got[:9] != "550 5.1.1" {
		t.Fatalf("RCPT after the provider bounce: %s", got)
	}
	waitFor(t, 20*time.Second, "delivered, provider_bounce and suppressed events", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return got["delivered"] != nil && got["provider_bounce"] != nil && got["suppressed"] != nil
	})
	mu.Lock()
	defer mu.Unlock()
	if d := got["delivered"]; d["queue_id"] != qid || d["recipient"] != "jane@example.com" || d["message_id"] != "custom-message-ID" {
		t.Errorf("delivered event %v", d)
	}
	if b := got["provider_bounce"]; b["queue_id"] != qid || b["recipient"] != "jane@example.com" || b["sender"] != "john@example.com" || b["status"] != "5.1.1" {
		t.Errorf("provider_bounce event %v", b)
	}
	if s := got["suppressed"]; s["recipient"] != "jane@example.com" || s["sender"] != "app@example.com" {
		t.Errorf("suppressed event %v", s)
	}
	if got["bounced"] != nil || got["complained"] != nil {
		t.Errorf("events not listed or not happened were posted: %v", got)
	}
}
