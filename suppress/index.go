package suppress

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/sluicemail/sluice/internal/metrics"
)

// Message is what a provider's report needs to be turned into a DSN: who
// sent the message and to whom, and where it went.
type Message struct {
	QueueID    string    `json:"queue_id"`
	MessageID  string    `json:"message_id"` // without <>
	Sender     string    `json:"sender"`
	Recipients []string  `json:"recipients"`
	Route      []string  `json:"route,omitempty"`
	Accepted   time.Time `json:"accepted"`
}

// Index maps a Message-ID to its Message, and a recipient to the last
// Message-ID sent to it (for providers whose reports carry only their own
// message ID), each for ttl.
type Index struct {
	store Store
	ttl   time.Duration
	log   *slog.Logger

	q    chan Message // Enqueue → writer
	done chan struct{}
	once sync.Once
}

const (
	msgPrefix   = "msg:"
	rcptPrefix  = "rcpt:"
	claimPrefix = "claim:"
)

// NewIndex uses store with entries kept for ttl.
func NewIndex(store Store, ttl time.Duration, log *slog.Logger) *Index {
	if log == nil {
		log = slog.Default()
	}
	ix := &Index{store: store, ttl: ttl, log: log, q: make(chan Message, 4096), done: make(chan struct{})}
	go ix.writer()
	return ix
}

var mIndexDropped = metrics.Default.NewCounter("sluice_hooks_index_dropped_total", "Accepted messages not indexed because the index writer was behind (Redis slow or down).")

// Enqueue records m in the background: it is called on the path of a 250,
// which must never wait on Redis. When the writer is far behind, m is
// dropped and counted; a report on it then goes unmatched.
func (ix *Index) Enqueue(m Message) {
	select {
	case ix.q <- m:
	default:
		mIndexDropped.Inc()
	}
}

func (ix *Index) writer() {
	defer close(ix.done)
	for m := range ix.q {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		ix.Put(ctx, m)
		cancel()
	}
}

// Close writes what is queued and stops the writer.
func (ix *Index) Close() {
	ix.once.Do(func() { close(ix.q) })
	<-ix.done
}

// NormalizeID is a Message-ID as the index keys it: without angle
// brackets and surrounding space. Case is kept (the left part is
// case-sensitive).
func NormalizeID(id string) string {
	id = strings.TrimSpace(id)
	id = strings.TrimPrefix(id, "<")
	id = strings.TrimSuffix(id, ">")
	return strings.TrimSpace(id)
}

// Put records m. Errors are logged, not returned: the message was accepted
// already and a missing entry only leaves a later report unmatched.
func (ix *Index) Put(ctx context.Context, m Message) {
	m.MessageID = NormalizeID(m.MessageID)
	if m.MessageID == "" {
		return
	}
	b, _ := json.Marshal(m)
	if err := ix.store.Put(ctx, msgPrefix+m.MessageID, b, ix.ttl); err != nil {
		ix.log.Warn("index_error", "queue_id", m.QueueID, "err", err)
		return
	}
	for _, r := range m.Recipients {
		if err := ix.store.Put(ctx, rcptPrefix+Normalize(r), []byte(m.MessageID), ix.ttl); err != nil {
			ix.log.Warn("index_error", "queue_id", m.QueueID, "err", err)
			return
		}
	}
}

// Lookup finds a message by Message-ID (with or without <>).
func (ix *Index) Lookup(ctx context.Context, messageID string) (Message, bool) {
	id := NormalizeID(messageID)
	if id == "" {
		return Message{}, false
	}
	b, ok, err := ix.store.Get(ctx, msgPrefix+id)
	if err != nil {
		ix.log.Warn("index_error", "message_id", id, "err", err)
		return Message{}, false
	}
	var m Message
	if !ok || json.Unmarshal(b, &m) != nil {
		return Message{}, false
	}
	return m, true
}

// Latest finds the last message sent to rcpt.
func (ix *Index) Latest(ctx context.Context, rcpt string) (Message, bool) {
	b, ok, err := ix.store.Get(ctx, rcptPrefix+Normalize(rcpt))
	if err != nil || !ok {
		return Message{}, false
	}
	return ix.Lookup(ctx, string(b))
}

// Claim takes key once across every instance sharing the store: true for
// the first caller within ttl, false for every later one.
func (ix *Index) Claim(ctx context.Context, key string) (bool, error) {
	return ix.store.PutNX(ctx, claimPrefix+key, []byte("1"), ix.ttl)
}

// Unclaim gives a claim back (the work it guarded failed and may be redone).
func (ix *Index) Unclaim(ctx context.Context, key string) {
	ix.store.Delete(ctx, claimPrefix+key)
}
