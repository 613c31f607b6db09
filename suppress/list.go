package suppress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicemail/sluice/internal/metrics"
)

// Kinds of entries: why an address is suppressed.
const (
	KindBounce    = "bounce"    // a hard bounce naming the address
	KindComplaint = "complaint" // the recipient reported the mail as spam
	KindManual    = "manual"    // `sluice suppression add`
)

// Entry is one suppressed address.
type Entry struct {
	Address string    `json:"address"`
	Kind    string    `json:"kind"`
	Reason  string    `json:"reason,omitempty"` // the status and diagnostic, or the administrator's text
	Source  string    `json:"source,omitempty"` // upstream or provider that reported it; "cli"
	Added   time.Time `json:"added"`
	Expires time.Time `json:"expires"`
}

// Describe is the part of the refusal after the address: "suppressed after
// a hard bounce on 2026-12-04" (DESIGN §8.2).
func (e Entry) Describe() string {
	date := e.Added.UTC().Format("2006-01-02")
	switch e.Kind {
	case KindComplaint:
		return "suppressed after a complaint on " + date
	case KindManual:
		return "suppressed by an administrator on " + date
	}
	return "suppressed after a hard bounce on " + date
}

// List is the suppression list over a Store. Addresses are compared
// without regard to case: providers and receivers treat them so.
type List struct {
	store Store
	ttl   time.Duration
	now   func() time.Time
	log   *slog.Logger
}

const listPrefix = "supp:"

var (
	mRefused = metrics.Default.NewCounter("sluice_suppressed_total", "Recipients refused at RCPT because the address is suppressed.")
	mAdded   = metrics.Default.NewCounterVec("sluice_suppression_added_total", "Addresses added to the suppression list, by kind.", "kind")
	mErrors  = metrics.Default.NewCounter("sluice_suppression_errors_total", "Suppression list lookups or writes that failed (the recipient was let through).")
)

// NewList uses store with entries kept for ttl.
func NewList(store Store, ttl time.Duration, log *slog.Logger, now func() time.Time) *List {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	return &List{store: store, ttl: ttl, now: now, log: log}
}

// RegisterGauge exports the list's size as sluice_suppression_list_size.
func (l *List) RegisterGauge() {
	metrics.Default.NewGaugeFunc("sluice_suppression_list_size", "Addresses on the suppression list.", func() float64 {
		n, _ := l.Len(context.Background())
		return float64(n)
	})
}

// Normalize is the form addresses are stored and compared in.
func Normalize(addr string) string {
	return strings.ToLower(strings.Trim(strings.TrimSpace(addr), "<>"))
}

// Check reports whether addr is suppressed. A store that fails lets the
// address through (counted and logged): a refusal must rest on a record.
func (l *List) Check(ctx context.Context, addr string) (Entry, bool) {
	b, ok, err := l.store.Get(ctx, listPrefix+Normalize(addr))
	if err != nil {
		mErrors.Inc()
		l.log.Warn("suppression_error", "op", "check", "addr", addr, "err", err)
		return Entry{}, false
	}
	if !ok {
		return Entry{}, false
	}
	var e Entry
	if json.Unmarshal(b, &e) != nil {
		return Entry{}, false
	}
	return e, true
}

// Refused counts one RCPT refused because of e.
func (l *List) Refused() { mRefused.Inc() }

// Add suppresses e.Address for the list's TTL from now; adding an address
// again renews it with the new reason.
func (l *List) Add(ctx context.Context, e Entry) (Entry, error) {
	e.Address = Normalize(e.Address)
	if e.Address == "" || !strings.Contains(e.Address, "@") || strings.ContainsAny(e.Address, " \t\r\n") {
		return Entry{}, fmt.Errorf("suppress: %q is not an address", e.Address)
	}
	if e.Kind == "" {
		e.Kind = KindManual
	}
	e.Added = l.now().UTC().Truncate(time.Second)
	e.Expires = e.Added.Add(l.ttl)
	b, _ := json.Marshal(e)
	if err := l.store.Put(ctx, listPrefix+e.Address, b, l.ttl); err != nil {
		mErrors.Inc()
		return Entry{}, err
	}
	mAdded.Inc(e.Kind)
	l.log.Info("suppression_added", "addr", e.Address, "kind", e.Kind, "source", e.Source, "reason", e.Reason)
	return e, nil
}

// Remove lifts the suppression; it reports whether the address was listed.
func (l *List) Remove(ctx context.Context, addr string) (bool, error) {
	ok, err := l.store.Delete(ctx, listPrefix+Normalize(addr))
	if err == nil && ok {
		l.log.Info("suppression_removed", "addr", Normalize(addr))
	}
	return ok, err
}

// All returns every live entry, sorted by address.
func (l *List) All(ctx context.Context) ([]Entry, error) {
	var out []Entry
	err := l.store.Scan(ctx, listPrefix, func(_ string, v []byte) {
		var e Entry
		if json.Unmarshal(v, &e) == nil {
			out = append(out, e)
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, err
}

// Len counts the live entries.
func (l *List) Len(ctx context.Context) (int, error) {
	n := 0
	err := l.store.Scan(ctx, listPrefix, func(string, []byte) { n++ })
	return n, err
}

// NamesAddress reports whether an enhanced status says the recipient's
// address itself is bad, so that retrying it later is pointless: 5.1.x
// (bad mailbox, bad domain, bad syntax, moved, null MX) except 5.1.7 and
// 5.1.8, which are about the sender; and 5.2.1 (mailbox disabled). A full
// mailbox (5.2.2), policy (5.7.x) or content refusal says nothing about
// the address and never suppresses it; nor does any 4.x.x.
func NamesAddress(status string) bool {
	parts := strings.Split(strings.TrimSpace(status), ".")
	if len(parts) != 3 || parts[0] != "5" {
		return false
	}
	sub, err1 := strconv.Atoi(parts[1])
	det, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil {
		return false
	}
	switch sub {
	case 1:
		return det != 7 && det != 8
	case 2:
		return det == 1
	}
	return false
}

// Bounced records a permanent failure of addr that an upstream reported
// (status x.y.z, diag the reply): the address joins the list when the
// status names it. It reports whether it did.
func (l *List) Bounced(ctx context.Context, addr, status, diag, source string) bool {
	if !NamesAddress(status) {
		return false
	}
	_, err := l.Add(ctx, Entry{Address: addr, Kind: KindBounce, Reason: strings.TrimSpace(diag), Source: source})
	if err != nil {
		l.log.Error("suppression_error", "op", "add", "addr", addr, "err", err)
		return false
	}
	return true
}

// ErrNotListed is returned by the control commands for an unknown address.
var ErrNotListed = errors.New("suppress: address not on the list")
