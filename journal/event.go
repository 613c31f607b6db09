// Package journal keeps what happened to every message after the fact: an
// append-only file of events (accepted, each attempt, the outcome per
// recipient, queue actions, DSNs) under state_dir/journal/, bounded by age
// and size, with an index by queue ID, Message-ID and address so that
// `sluice trace` and provider webhooks find a message among millions at once.
// The relay and the queue append through Sink; nothing waits on a flush of
// the journal before a 250 (see Journal for what survives a crash).
package journal

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Event names (DESIGN §8.1).
const (
	Accepted      = "accepted"
	Attempt       = "attempt"
	Delivered     = "delivered"
	Deferred      = "deferred"
	Bounced       = "bounced"
	Expired       = "expired"
	Held          = "held"
	Released      = "released"
	Deleted       = "deleted"
	Suppressed    = "suppressed"
	DSNSent       = "dsn_sent"
	ProviderEvent = "provider_event"
)

// Event is one line of the journal. The JSON names are DESIGN §8.1's; a
// field an event does not have is left out. Passwords and message bodies
// have no field here, so they cannot enter the journal.
type Event struct {
	Time      time.Time `json:"time"`
	Event     string    `json:"event"`
	QueueID   string    `json:"queue_id"`
	MessageID string    `json:"message_id"` // without <>
	Sender    string    `json:"sender"`     // envelope sender, "" for the null sender

	// accepted
	User       string   `json:"user,omitempty"`
	IP         string   `json:"ip,omitempty"`
	Listener   string   `json:"listener,omitempty"`
	Recipients []string `json:"recipients,omitempty"`
	Size       int64    `json:"size,omitempty"`
	DKIM       []string `json:"dkim,omitempty"` // selectors that signed
	// Subject is the header's, decoded and cut to 200 bytes: what a person
	// recognises a message by (beyond DESIGN §8.1's table; no body).
	Subject string   `json:"subject,omitempty"`
	Route   []string `json:"route,omitempty"`
	// masquerade (DESIGN §8.5): the envelope sender and header From: as
	// the client sent them, when a rule rewrote them; kept here only.
	OriginalSender string `json:"original_sender,omitempty"`
	OriginalFrom   string `json:"original_from,omitempty"`

	// attempt and outcomes
	Recipient  string `json:"recipient,omitempty"`
	Upstream   string `json:"upstream,omitempty"`
	Host       string `json:"host,omitempty"`
	Port       int    `json:"port,omitempty"`
	TLS        string `json:"tls,omitempty"` // "TLS 1.3", or "none"
	Code       int    `json:"code,omitempty"`
	Enhanced   string `json:"enhanced,omitempty"`
	Text       string `json:"text,omitempty"`
	DurationMS int64  `json:"duration_ms,omitempty"`

	// held, released, deleted
	By string `json:"by,omitempty"`
	// suppressed
	Reason string `json:"reason,omitempty"`
	// dsn_sent
	DSNQueueID string `json:"dsn_queue_id,omitempty"`
	// provider_event
	Provider string `json:"provider,omitempty"`
	Kind     string `json:"kind,omitempty"`
}

// Sink receives events. Append must not block on disk flushes: it is
// called on the path of a 250 and of every delivery. A nil Sink in the
// options of relay or queue means no journal.
type Sink interface {
	Append(...Event)
}

// MarshalJSON encodes e as the journal stores it, so `trace --json` prints
// exactly the journal's lines.
func (e Event) MarshalJSON() ([]byte, error) {
	b := appendJSON(nil, &e)
	return b[:len(b)-1], nil
}

// maxText bounds free text (upstream replies) in one event.
const maxText = 1000

const maxSubject = 200

// appendJSON encodes e as one JSON line, by hand: encoding/json costs
// several times more per event and this runs for every message.
func appendJSON(b []byte, e *Event) []byte {
	b = append(b, `{"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","event":`...)
	b = appendString(b, e.Event)
	b = append(b, `,"queue_id":`...)
	b = appendString(b, e.QueueID)
	b = append(b, `,"message_id":`...)
	b = appendString(b, e.MessageID)
	b = append(b, `,"sender":`...)
	b = appendString(b, e.Sender)
	e.visit(
		func(k, v string) { b = optString(b, k, v) },
		func(k string, v int64, always bool) {
			if always && v == 0 {
				b = append(b, `,"`...)
				b = append(b, k...)
				b = append(b, `":0`...)
				return
			}
			b = optInt(b, k, v)
		},
		func(k string, v []string) { b = optList(b, k, v) },
	)
	return append(b, "}\n"...)
}

// visit hands e's fields besides time, event, queue_id, message_id and
// sender to str, num and list, in DESIGN §8.1's order: the one list of
// them that the JSON encoder and `sluice trace` both follow. Free text is
// truncated here; num's always is set for an attempt's duration_ms, where
// 0 ms is a measurement, not an absence.
func (e *Event) visit(str func(k, v string), num func(k string, v int64, always bool), list func(k string, v []string)) {
	str("user", e.User)
	str("ip", e.IP)
	str("listener", e.Listener)
	list("recipients", e.Recipients)
	num("size", e.Size, false)
	list("dkim", e.DKIM)
	list("route", e.Route)
	str("subject", truncate(e.Subject, maxSubject))
	str("original_sender", e.OriginalSender)
	str("original_from", truncate(e.OriginalFrom, maxSubject))
	str("recipient", e.Recipient)
	str("upstream", e.Upstream)
	str("host", e.Host)
	num("port", int64(e.Port), false)
	str("tls", e.TLS)
	num("code", int64(e.Code), false)
	str("enhanced", e.Enhanced)
	str("text", truncate(e.Text, maxText))
	num("duration_ms", e.DurationMS, e.Event == Attempt)
	str("by", e.By)
	str("reason", e.Reason)
	str("dsn_queue_id", e.DSNQueueID)
	str("provider", e.Provider)
	str("kind", e.Kind)
}

// Fields lists e's non-empty fields besides time, event, queue_id,
// message_id and sender as name and text, in the journal's order (lists
// joined by commas), for `sluice trace`'s text output.
func (e *Event) Fields() [][2]string {
	var out [][2]string
	str := func(k, v string) {
		if v != "" {
			out = append(out, [2]string{k, v})
		}
	}
	e.visit(str,
		func(k string, v int64, always bool) {
			if v != 0 || always {
				out = append(out, [2]string{k, strconv.FormatInt(v, 10)})
			}
		},
		func(k string, v []string) { str(k, strings.Join(v, ",")) },
	)
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func optString(b []byte, k, v string) []byte {
	if v == "" {
		return b
	}
	b = append(b, `,"`...)
	b = append(b, k...)
	b = append(b, `":`...)
	return appendString(b, v)
}

func optInt(b []byte, k string, v int64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, `,"`...)
	b = append(b, k...)
	b = append(b, `":`...)
	return strconv.AppendInt(b, v, 10)
}

func optList(b []byte, k string, v []string) []byte {
	if len(v) == 0 {
		return b
	}
	b = append(b, `,"`...)
	b = append(b, k...)
	b = append(b, `":[`...)
	for i, s := range v {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD
// (as encoding/json does); <, > and & are escaped so a line pasted into
// HTML is inert.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// NormalizeMessageID returns a Message-ID as the journal keeps it: trimmed,
// without the angle brackets.
func NormalizeMessageID(s string) string {
	for { // to a fixed point, so normalizing twice changes nothing
		n := normalizeOnce(s)
		if n == s {
			return n
		}
		s = n
	}
}

func normalizeOnce(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '<'); i >= 0 {
		if j := strings.IndexByte(s[i:], '>'); j > 0 {
			return strings.TrimSpace(s[i+1 : i+j])
		}
	}
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	return strings.TrimSpace(s)
}

// normAddr is how addresses are compared and indexed: case-folded (the
// local part is case-sensitive in theory, never in practice).
func normAddr(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	return strings.ToLower(s)
}
