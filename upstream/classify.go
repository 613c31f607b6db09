package upstream

import (
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-smtp"
)

// Stage is the point of a delivery attempt that failed. It decides whether
// another port or upstream may be tried at once (everything before the
// final dot) or the message may already be with the provider (after-dot).
type Stage string

// Stages, in the order an attempt passes them.
const (
	StageDial     Stage = "dial"    // TCP connect
	StageConnect  Stage = "connect" // banner and EHLO
	StageTLS      Stage = "tls"     // STARTTLS or implicit TLS handshake, certificate
	StageAuth     Stage = "auth"
	StageMail     Stage = "mail"
	StageRcpt     Stage = "rcpt"
	StageData     Stage = "data" // the DATA command and writing the body
	StageAfterDot Stage = "after-dot"
)

// Class is what a reply means for the message and the upstream.
type Class int

// Classes.
const (
	Temporary Class = iota // retry later (4xx, network errors, anything unknown)
	Permanent              // 5xx: the message or recipient fails
	Throttled              // the upstream is rate-limiting or out of quota: open its breaker
)

func (c Class) String() string {
	switch c {
	case Permanent:
		return "permanent"
	case Throttled:
		return "throttled"
	}
	return "temporary"
}

// Error is the outcome of a failed attempt, for one recipient or the whole
// message. Code is 0 when no reply was received (network error, timeout).
type Error struct {
	Upstream string
	Stage    Stage
	Code     int
	Enhanced [3]int
	Message  string
	Err      error
	// PossibleDuplicate: the connection failed after the final dot with no
	// reply, so the upstream may hold the message. Retry later, never at once.
	PossibleDuplicate bool
	// Throttled: the reply was a rate or quota refusal (see Classify).
	Throttled bool
}

// Temporary reports whether a later retry may succeed: 4xx replies,
// throttling, and errors without a reply.
func (e *Error) Temporary() bool {
	return e.Code < 500 || e.Throttled
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("upstream")
	if e.Upstream != "" {
		b.WriteString(" " + e.Upstream)
	}
	fmt.Fprintf(&b, ": %s", e.Stage)
	if e.Code != 0 {
		fmt.Fprintf(&b, ": %d", e.Code)
		if e.Enhanced != ([3]int{}) {
			fmt.Fprintf(&b, " %d.%d.%d", e.Enhanced[0], e.Enhanced[1], e.Enhanced[2])
		}
	}
	if e.Message != "" {
		b.WriteString(" " + e.Message)
	}
	if e.Err != nil && e.Code == 0 {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.PossibleDuplicate {
		b.WriteString(" (possible duplicate)")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Classify says what a reply at stage means: throttling and quota replies
// (421, 451 4.7.x, 454, and any 4xx/5xx whose text says quota, rate or
// throttling) open the breaker; other 5xx are permanent; everything else is
// temporary. At RCPT the text alone does not throttle: a reply there names
// one recipient, so "quota" is that mailbox's (DESIGN §1: a 5xx on RCPT
// fails that recipient only). It also returns the enhanced code, derived
// from the basic code's class when the server sent none (RFC 3463: X.0.0).
// This is the one place a reply is classified.
func Classify(stage Stage, code int, enhanced [3]int, text string) (Class, [3]int) {
	if enhanced == ([3]int{}) || enhanced[0] <= 0 {
		switch {
		case code >= 500 && code < 600:
			enhanced = [3]int{5, 0, 0}
		case code >= 400 && code < 500:
			enhanced = [3]int{4, 0, 0}
		case code >= 200 && code < 300:
			enhanced = [3]int{2, 0, 0}
		default:
			enhanced = [3]int{}
		}
	}
	failed := code >= 400 && code < 600
	switch {
	case enhanced[1] == 2 && enhanced[2] == 2 && code != 421:
		// X.2.2 is a recipient's mailbox over its quota: that recipient's
		// problem (5xx bounces it, 4xx retries it), never the upstream's
		// sending quota, even though the text says "quota".
	case code == 421, code == 454, code == 451 && enhanced[0] == 4 && enhanced[1] == 7:
		return Throttled, enhanced
	case failed && stage != StageRcpt && throttleText(text):
		return Throttled, enhanced
	}
	if code >= 500 && code < 600 {
		return Permanent, enhanced
	}
	return Temporary, enhanced
}

func throttleText(text string) bool {
	lower := strings.ToLower(text)
	for _, w := range []string{"throttl", "quota", "rate limit", "sending rate", "too many messages", "rate exceeded"} {
		if strings.Contains(lower, w) {
			return true
		}
	}
	return false
}

// errNoSMTPUTF8 marks a message that needs SMTPUTF8 meeting an upstream
// that does not offer it: the next upstream may, so it fails over; when
// none does, the message bounces with 5.6.7 (RFC 6531 §3.4).
var errNoSMTPUTF8 = errors.New("SMTPUTF8 is required, but was not offered")

func noSMTPUTF8(upstream string) *Error {
	return &Error{Upstream: upstream, Stage: StageMail, Code: 554, Enhanced: [3]int{5, 6, 7},
		Message: errNoSMTPUTF8.Error() + " by this upstream", Err: errNoSMTPUTF8}
}

// connectionLost reports whether e leaves the connection unusable: no reply
// at all (network error, timeout) or a 421, the server closing it.
func (e *Error) connectionLost() bool { return e.Code == 0 || e.Code == 421 }

// newError turns an error from go-smtp (or the network) at stage into an *Error.
func newError(upstream string, stage Stage, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	e = &Error{Upstream: upstream, Stage: stage, Err: err}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e.Code = se.Code
		e.Message = se.Message
		var class Class
		class, e.Enhanced = Classify(stage, se.Code, [3]int(se.EnhancedCode), se.Message)
		e.Throttled = class == Throttled
	}
	return e
}
