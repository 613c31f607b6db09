package queue

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/durable"
	"github.com/sluicemail/sluice/spool"
)

// webhookMaxAge is how long an event is retried before it is dropped.
const webhookMaxAge = 24 * time.Hour

// HTTPDoer sends webhook requests (*http.Client implements it).
type HTTPDoer interface {
	Do(*http.Request) (*http.Response, error)
}

// Event is the JSON body of one webhook POST: one recipient's bounce,
// expiry or delay notice.
type Event struct {
	ID         string    `json:"id"`    // unique per event, for de-duplication (the same on every retry)
	Event      string    `json:"event"` // bounced | expired | delayed | delivered | deferred | suppressed | complained | provider_bounce
	QueueID    string    `json:"queue_id"`
	MessageID  string    `json:"message_id,omitempty"`
	Sender     string    `json:"sender"`
	Recipient  string    `json:"recipient"`
	Status     string    `json:"status"`
	Diagnostic string    `json:"diagnostic"`
	Time       time.Time `json:"time"`
}

// Sign returns the X-Sluice-Signature value for body: "sha256=" and the hex
// HMAC-SHA256 of the body keyed with the webhook secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// webhooks spools events under Dir/webhook/ (one file each, written
// durably) and posts them from one goroutine, so a slow or dead receiver
// never holds up delivery.
type webhooks struct {
	q    *Queue
	dir  string
	mu   sync.Mutex
	pend map[string]*hookEvent
	wake chan struct{}
}

type hookEvent struct {
	name     string
	body     []byte
	at       time.Time
	attempts int
	next     time.Time
}

func newWebhooks(q *Queue) *webhooks {
	return &webhooks{q: q, dir: filepath.Join(q.opts.Dir, "webhook"), pend: map[string]*hookEvent{}, wake: make(chan struct{}, 1)}
}

// add spools one recipient's event.
func (w *webhooks) add(kind string, e *entry, r dsnRcpt) {
	w.post1(Event{Event: kind, QueueID: e.id.String(), MessageID: e.env.MessageID, Sender: e.env.From, Recipient: r.Addr, Status: r.Status, Diagnostic: r.Diag})
}

// wants reports whether kind is among queue.webhook_events.
func (w *webhooks) wants(kind string) bool {
	if w.q.opts.Config.Webhook == "" {
		return false
	}
	evs := w.q.opts.Config.WebhookEvents
	if evs == nil {
		evs = config.DefaultWebhookEvents()
	}
	return slices.Contains(evs, kind)
}

// Webhook spools ev for the webhook when its kind is among
// queue.webhook_events (other packages report suppressed, complained and
// provider_bounce through it); ID and Time are filled in.
func (q *Queue) Webhook(ev Event) { q.hooks.post1(ev) }

func (w *webhooks) post1(ev Event) {
	if !w.wants(ev.Event) {
		return
	}
	now := w.q.now()
	if ev.Time.IsZero() {
		ev.Time = now.UTC()
	}
	id := spool.NewID(now)
	ev.ID = id
	body, err := json.Marshal(ev)
	if err != nil {
		return
	}
	name := id + ".json"
	if err := writeFileDurable(w.dir, name, body); err != nil {
		w.q.log.Error("queue: spool webhook event", "queue_id", ev.QueueID, "err", err)
		return
	}
	w.mu.Lock()
	w.pend[name] = &hookEvent{name: name, body: body, at: ev.Time, next: w.q.now()}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// writeFileDurable writes dir/name via a temp file, fsync, rename and a
// directory fsync.
func writeFileDurable(dir, name string, data []byte) error {
	if err := durable.WriteFile(filepath.Join(dir, name), data); err != nil {
		return err
	}
	return spool.SyncDir(dir)
}

// load adds spooled events not yet known (after a restart).
func (w *webhooks) load() {
	des, err := os.ReadDir(w.dir)
	if err != nil {
		w.q.log.Error("queue: read webhook spool", "err", err)
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, de := range des {
		name := de.Name()
		if strings.HasSuffix(name, ".tmp") {
			os.Remove(filepath.Join(w.dir, name))
			continue
		}
		if w.pend[name] != nil || !strings.HasSuffix(name, ".json") {
			continue
		}
		body, err := os.ReadFile(filepath.Join(w.dir, name))
		var ev Event
		if err == nil {
			err = json.Unmarshal(body, &ev)
		}
		if err != nil {
			w.q.log.Error("queue: unreadable webhook event moved aside", "file", name, "err", err)
			os.Rename(filepath.Join(w.dir, name), filepath.Join(w.q.opts.Dir, "corrupt", "webhook-"+name))
			continue
		}
		w.pend[name] = &hookEvent{name: name, body: body, at: ev.Time, next: w.q.now()}
	}
}

func (w *webhooks) run(ctx context.Context) {
	w.load()
	client := w.q.opts.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		now := w.q.now()
		var due []*hookEvent
		var wait time.Duration = -1
		w.mu.Lock()
		for _, h := range w.pend {
			if d := h.next.Sub(now); d <= 0 {
				due = append(due, h)
			} else if wait < 0 || d < wait {
				wait = d
			}
		}
		w.mu.Unlock()
		for _, h := range due {
			if ctx.Err() != nil {
				return
			}
			w.post(ctx, client, h)
		}
		if len(due) > 0 {
			continue
		}
		sleep(ctx, timer, w.wake, wait)
	}
}

func (w *webhooks) post(ctx context.Context, client HTTPDoer, h *hookEvent) {
	q := w.q
	err := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, q.opts.Config.Webhook, bytes.NewReader(h.body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "sluice")
		req.Header.Set("X-Sluice-Signature", Sign([]byte(q.opts.Config.WebhookSecret), h.body))
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}()
	now := q.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil {
		mWebhookSent.Inc()
		delete(w.pend, h.name)
		os.Remove(filepath.Join(w.dir, h.name))
		return
	}
	h.attempts++
	if now.Sub(h.at) >= webhookMaxAge {
		q.log.Error("queue: webhook event dropped after a day of failures", "file", h.name, "err", err)
		delete(w.pend, h.name)
		os.Rename(filepath.Join(w.dir, h.name), filepath.Join(q.opts.Dir, "corrupt", "webhook-"+h.name))
		return
	}
	h.next = now.Add(NextAttempt(q.opts.Config.Retry, h.attempts, q.rnd()))
	q.log.Warn("queue: webhook post failed; will retry", "file", h.name, "attempt", h.attempts, "next_attempt", h.next, "err", err)
}
