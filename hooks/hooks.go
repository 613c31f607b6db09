// Package hooks receives the providers' event webhooks (DESIGN §8.2): SES
// through SNS, Mailgun, SendGrid and Postmark report hours after their 250
// that an address does not exist or that its owner complained. Each report
// is matched to the message through the Message-ID index; a hard bounce
// then lists the address and sends the original sender one RFC 3464 DSN,
// a complaint lists it, a delivery is journaled only.
package hooks

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/queue"
	"github.com/sluicemail/sluice/suppress"
)

// MaxBody bounds one request: SNS and SendGrid batch, SES may include the
// original headers; none comes near this.
const MaxBody = 4 << 20

// Options configure a Handler.
type Options struct {
	Token             string // required of every request
	MailgunSigningKey string // "": Mailgun signatures are not checked
	Index             *suppress.Index
	List              *suppress.List // nil: suppression is off
	// DSN queues the report for a matched hard bounce (queue.BounceReported).
	DSN     func(queue.ProviderBounce) (string, error)
	Journal journal.Sink // nil: events are logged only
	// Webhook posts complained and provider_bounce events to queue.webhook
	// (queue.Queue.Webhook, which keeps only the listed events); nil: none.
	Webhook func(queue.Event)
	Logger  *slog.Logger
	Now     func() time.Time
}

// Handler serves POST /hooks/{ses,mailgun,sendgrid,postmark}.
type Handler struct {
	o   Options
	tok [32]byte
	log *slog.Logger
	now func() time.Time
}

var mEvents = metrics.Default.NewCounterVec("sluice_provider_events_total", "Provider webhook events, by outcome: bounce, complaint, delivery (matched) or unmatched.", "kind")

// New returns the handler; it refuses every request when Token is empty.
func New(o Options) *Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Handler{o: o, tok: sha256.Sum256([]byte(o.Token)), log: o.Logger, now: o.Now}
}

// authorized compares the token from ?token= or the basic-auth password in
// constant time (through hashes, so the length leaks nothing either).
func (h *Handler) authorized(r *http.Request) bool {
	if h.o.Token == "" {
		return false
	}
	got := r.URL.Query().Get("token")
	if _, pw, ok := r.BasicAuth(); ok && got == "" {
		got = pw
	}
	sum := sha256.Sum256([]byte(got))
	return got != "" && subtle.ConstantTimeCompare(sum[:], h.tok[:]) == 1
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	provider := strings.TrimPrefix(r.URL.Path, "/hooks/")
	switch provider {
	case "ses", "mailgun", "sendgrid", "postmark":
	default:
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !h.authorized(r) {
		h.log.Warn("hook_refused", "provider", provider, "reason", "token", "ip", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Basic realm="sluice hooks"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "read error", http.StatusBadRequest)
		return
	}
	var evs []Event
	switch provider {
	case "ses":
		var sub *SubscriptionConfirmation
		evs, sub, err = ParseSES(body)
		if sub != nil {
			// Never fetched: Sluice makes no request to the provider. The
			// administrator confirms by opening the URL (docs/providers.md).
			h.log.Warn("sns_subscription_confirmation", "topic", sub.TopicArn, "subscribe_url", sub.SubscribeURL)
		}
	case "mailgun":
		evs, err = ParseMailgun(body, h.o.MailgunSigningKey)
	case "sendgrid":
		evs, err = ParseSendGrid(body)
	case "postmark":
		evs, err = ParsePostmark(body)
	}
	switch {
	case errors.Is(err, ErrSignature):
		h.log.Warn("hook_refused", "provider", provider, "reason", "signature", "ip", r.RemoteAddr)
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	case err != nil:
		h.log.Warn("hook_refused", "provider", provider, "reason", "malformed", "err", err)
		http.Error(w, "malformed payload", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
	defer cancel()
	for _, e := range evs {
		if err := h.handle(ctx, e); err != nil {
			// The provider retries a failed delivery; what was done
			// already is not done twice (claims, renewals).
			h.log.Error("hook_failed", "provider", provider, "rcpt", e.Recipient, "err", err)
			http.Error(w, "temporary failure", http.StatusServiceUnavailable)
			return
		}
	}
	fmt.Fprintf(w, "ok %d event(s)\n", len(evs))
}

// match finds the message e is about: by an original Message-ID header, by
// the provider's own ID, or, when the payload carries no Message-ID header
// at all (Postmark), as the last message sent to the recipient. The
// recipient must be one of the message's.
func (h *Handler) match(ctx context.Context, e Event) (suppress.Message, bool) {
	var m suppress.Message
	ok := false
	for _, id := range append(append([]string(nil), e.HeaderIDs...), e.ProviderIDs...) {
		if m, ok = h.o.Index.Lookup(ctx, id); ok {
			break
		}
	}
	if !ok && len(e.HeaderIDs) == 0 {
		m, ok = h.o.Index.Latest(ctx, e.Recipient)
	}
	if !ok {
		return m, false
	}
	rcpt := suppress.Normalize(e.Recipient)
	for _, r := range m.Recipients {
		if suppress.Normalize(r) == rcpt {
			return m, true
		}
	}
	return m, false
}

func (h *Handler) journal(ev journal.Event) {
	if h.o.Journal != nil {
		h.o.Journal.Append(ev)
	}
}

// handle acts on one event. An error means "try again later" (the provider
// retries); everything done before it is safe to repeat.
func (h *Handler) handle(ctx context.Context, e Event) error {
	now := h.now()
	text := strings.TrimSpace(strings.Join(nonEmpty(e.Status, e.Diag), " "))
	m, ok := h.match(ctx, e)
	if !ok {
		mEvents.Inc("unmatched")
		h.log.Info("provider_event", "provider", e.Provider, "kind", e.Kind, "rcpt", e.Recipient, "matched", false, "text", text)
		h.journal(journal.Event{Time: now, Event: journal.ProviderEvent, MessageID: firstOf(e.HeaderIDs),
			Recipient: e.Recipient, Provider: e.Provider, Kind: e.Kind, Text: text})
		return nil
	}
	mEvents.Inc(e.Kind)
	h.log.Info("provider_event", "provider", e.Provider, "kind", e.Kind, "rcpt", e.Recipient, "matched", true,
		"queue_id", m.QueueID, "message_id", m.MessageID, "text", text)
	h.journal(journal.Event{Time: now, Event: journal.ProviderEvent, QueueID: m.QueueID, MessageID: m.MessageID,
		Sender: m.Sender, Recipient: e.Recipient, Provider: e.Provider, Kind: e.Kind, Text: text})
	if e.Kind == KindDelivery {
		return nil
	}
	if h.o.Webhook != nil {
		ev := "provider_bounce"
		if e.Kind == KindComplaint {
			ev = "complained"
		}
		h.o.Webhook(queue.Event{Event: ev, QueueID: m.QueueID, MessageID: m.MessageID, Sender: m.Sender,
			Recipient: e.Recipient, Status: e.Status, Diagnostic: text})
	}
	if h.o.List != nil {
		kind := suppress.KindBounce
		if e.Kind == KindComplaint {
			kind = suppress.KindComplaint
		}
		if _, err := h.o.List.Add(ctx, suppress.Entry{Address: e.Recipient, Kind: kind, Reason: text, Source: e.Provider}); err != nil {
			return err
		}
	}
	if e.Kind != KindBounce || m.Sender == "" || h.o.DSN == nil {
		return nil // complaints get no DSN; nor do bounces of bounces
	}
	// One DSN per message and recipient, however often the provider
	// repeats the event and whichever instance it reaches.
	claim := "dsn:" + m.MessageID + ":" + suppress.Normalize(e.Recipient)
	first, err := h.o.Index.Claim(ctx, claim)
	if err != nil {
		return err
	}
	if !first {
		h.log.Info("provider_event_repeated", "provider", e.Provider, "rcpt", e.Recipient, "queue_id", m.QueueID)
		return nil
	}
	id, err := h.o.DSN(queue.ProviderBounce{
		QueueID: m.QueueID, MessageID: m.MessageID, Sender: m.Sender, Route: m.Route, Received: m.Accepted,
		Recipient: e.Recipient, Status: e.Status, Diag: e.Diag, Remote: e.Remote, Provider: e.Provider,
	})
	if err != nil {
		h.o.Index.Unclaim(context.WithoutCancel(ctx), claim)
		return err
	}
	h.journal(journal.Event{Time: h.now(), Event: journal.DSNSent, QueueID: m.QueueID, MessageID: m.MessageID,
		Sender: m.Sender, Recipient: e.Recipient, DSNQueueID: id})
	h.log.Info("dsn_sent", "queue_id", m.QueueID, "rcpt", e.Recipient, "dsn_queue_id", id, "provider", e.Provider)
	return nil
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return suppress.NormalizeID(s[0])
}
