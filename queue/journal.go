package queue

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/upstream"
)

// What the queue tells the delivery journal (DESIGN §8.1): every attempt
// per recipient with the upstream's reply, every outcome, queue actions
// and the DSNs sent. Appending never waits on a disk flush.

var (
	mDeliverySecs = metrics.Default.NewHistogramVec("sluice_delivery_duration_seconds",
		"One delivery attempt on one upstream: connection (or reuse) to the reply to the final dot.", "upstream", metrics.LatencyBuckets)
	mQueueSecs = metrics.Default.NewHistogram("sluice_queue_time_seconds",
		"Accepted to final outcome (delivered, bounced or expired), per recipient.", metrics.QueueTimeBuckets)
)

func (q *Queue) journal(evs ...journal.Event) {
	if q.opts.Journal != nil && len(evs) > 0 {
		q.opts.Journal.Append(evs...)
	}
}

func (q *Queue) event(e *entry, kind string, at time.Time) journal.Event {
	return journal.Event{Time: at, Event: kind, QueueID: e.id.String(), MessageID: e.env.MessageID, Sender: e.env.From}
}

// journalAttempts adds to evs each try of one Deliver call, per recipient,
// and observes its duration. The attempt's events are appended together
// (one write): see attempt.
func (q *Queue) journalAttempts(evs []journal.Event, e *entry, pending []string, res upstream.Result, at time.Time) []journal.Event {
	attempts := res.Attempts
	if len(attempts) == 0 && len(res.Errs) > 0 {
		// A Deliverer that does not itemise its tries made one.
		attempts = []upstream.Attempt{{Upstream: res.Upstream, Rcpts: pending, Errs: res.Errs}}
	}
	for _, a := range attempts {
		mDeliverySecs.Observe(a.Upstream, a.Duration.Seconds())
		if q.opts.Journal == nil {
			continue
		}
		for i, to := range a.Rcpts {
			ev := q.event(e, journal.Attempt, at)
			ev.Recipient, ev.Upstream, ev.Host, ev.Port, ev.TLS = to, a.Upstream, a.Host, a.Port, a.TLS
			ev.DurationMS = a.Duration.Milliseconds()
			if i < len(a.Errs) && a.Errs[i] != nil {
				ev.Code, ev.Enhanced, ev.Text = replyOf(a.Errs[i])
			} else {
				ev.Code, ev.Enhanced, ev.Text = okReply(a.Reply)
			}
			evs = append(evs, ev)
		}
	}
	return evs
}

// lastReply is the reply of the try that ended on the result's upstream.
func lastReply(res upstream.Result) string {
	for i := len(res.Attempts) - 1; i >= 0; i-- {
		if res.Attempts[i].Upstream == res.Upstream {
			return res.Attempts[i].Reply
		}
	}
	return ""
}

// journalOutcome adds to evs one recipient's outcome: delivered (err nil,
// with the 250 reply), deferred, bounced or expired.
func (q *Queue) journalOutcome(evs []journal.Event, e *entry, kind, rcpt, up string, err error, reply string, at time.Time) []journal.Event {
	if kind != journal.Deferred {
		mQueueSecs.Observe(at.Sub(e.env.Received).Seconds())
	}
	if q.opts.Journal == nil {
		return evs
	}
	ev := q.event(e, kind, at)
	ev.Recipient, ev.Upstream = rcpt, up
	if err != nil {
		ev.Code, ev.Enhanced, ev.Text = replyOf(err)
	} else {
		ev.Code, ev.Enhanced, ev.Text = okReply(reply)
	}
	return append(evs, ev)
}

var enhancedRe = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}$`)

// okReply splits the text of a 250 reply ("2.0.0 Ok: queued as X").
func okReply(text string) (int, string, string) {
	if text == "" {
		return 250, "", ""
	}
	if f, rest, _ := strings.Cut(text, " "); enhancedRe.MatchString(f) {
		return 250, f, rest
	}
	return 250, "", text
}

// replyOf splits an upstream error into code, enhanced code and text; an
// error without a reply (a refused connection) has code 0 and its text.
func replyOf(err error) (int, string, string) {
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		return 0, "", err.Error()
	}
	enh := ""
	if ue.Enhanced[0] != 0 {
		enh = fmt.Sprintf("%d.%d.%d", ue.Enhanced[0], ue.Enhanced[1], ue.Enhanced[2])
	}
	if ue.Code == 0 {
		return 0, enh, err.Error()
	}
	return ue.Code, enh, strings.Join(strings.Fields(ue.Message), " ")
}

// Held returns the number of messages on hold (for the status page).
func (q *Queue) Held() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for _, e := range q.entries {
		if e.held {
			n++
		}
	}
	return n
}
