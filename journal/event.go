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
	Append(Event)
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
	b = optString(b, "user", e.User)
	b = optString(b, "ip", e.IP)
	b = optString(b, "listener", e.Listener)
	b = optList(b, "recipients", e.Recipients)
	b = optInt(b, "size", e.Size)
	b = optList(b, "dkim", e.DKIM)
	b = optList(b, "route", e.Route)
	b = optString(b, "subject", truncate(e.Subject, maxSubject))
	b = optString(b, "original_sender", e.OriginalSender)
	b = optString(b, "original_from", truncate(e.OriginalFrom, maxSubject))
	b = optString(b, "recipient", e.Recipient)
	b = optString(b, "upstream", e.Upstream)
	b = optString(b, "host", e.Host)
	b = optInt(b, "port", int64(e.Port))
	b = optString(b, "tls", e.TLS)
	b = optInt(b, "code", int64(e.Code))
	b = optString(b, "enhanced", e.Enhanced)
	b = optString(b, "text", truncate(e.Text, maxText))
	if e.Event == Attempt { // 0 ms is a measurement, not an absence
		b = append(b, `,"duration_ms":`...)
		b = strconv.AppendInt(b, e.DurationMS, 10)
	} else {
		b = optInt(b, "duration_ms", e.DurationMS)
	}
	b = optString(b, "by", e.By)
	b = optString(b, "reason", e.Reason)
	b = optString(b, "dsn_queue_id", e.DSNQueueID)
	b = optString(b, "provider", e.Provider)
	b = optString(b, "kind", e.Kind)
	return append(b, "}\n"...)
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
