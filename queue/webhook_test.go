package queue

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestWebhookRetriesUntilReceiverIsUp(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var tries int
	var accepted []Event
	var badSig int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		tries++
		if tries <= 3 { // down for a while
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		if r.Header.Get("X-Sluice-Signature") != Sign([]byte("s3cret"), body) {
			badSig++
		}
		var ev Event
		json.Unmarshal(body, &ev)
		accepted = append(accepted, ev)
	}))
	defer srv.Close()

	dir := t.TempDir()
	up := &fakeUpstream{decide: func(d delivery, rcpt string, n int) error {
		if rcpt == "nobody@example.org" {
			return errNoSuchUser()
		}
		return nil
	}}
	opts, _ := testOptions(t, dir, up)
	opts.Config.Webhook = srv.URL
	opts.Config.WebhookSecret = "s3cret"
	q := running(t, opts)
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org", "nobody@example.org"}}, "", testMsg)
	waitFor(t, "webhook spool drained", func() bool {
		des, _ := os.ReadDir(filepath.Join(dir, "webhook"))
		mu.Lock()
		defer mu.Unlock()
		return len(accepted) > 0 && len(des) == 0
	})
	mu.Lock()
	defer mu.Unlock()
	if len(accepted) != 1 || badSig != 0 || tries != 4 {
		t.Fatalf("accepted %d events (want 1), %d bad signatures, %d tries (want 4)", len(accepted), badSig, tries)
	}
	ev := accepted[0]
	if ev.Event != "bounced" || ev.QueueID != id || ev.Sender != "alice@example.com" || ev.Recipient != "nobody@example.org" ||
		ev.Status != "5.1.1" || ev.Diagnostic != "550 5.1.1 no such user" || ev.Time.IsZero() {
		t.Errorf("event = %+v", ev)
	}
}

func TestSignatureIsHMACSHA256(t *testing.T) {
	t.Parallel()
	// RFC 4231 test case 2.
	got := Sign([]byte("Jefe"), []byte("what do ya want for nothing?"))
	if want := "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"; got != want {
		t.Errorf("Sign = %s, want %s", got, want)
	}
}
