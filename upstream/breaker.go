package upstream

import (
	"context"
	"errors"
	"time"
)

const (
	maxBackoff     = 10 * time.Minute
	failuresToOpen = 3
	// probeWait is how long a caller asking Available waits while another
	// delivery is the half-open probe: the probe's answer decides soon.
	probeWait = time.Second
)

type breakerState int

const (
	closed breakerState = iota
	open
	halfOpen
)

func (s breakerState) String() string {
	return [...]string{"closed", "open", "half-open"}[s]
}

// verdict is what one attempt says about the upstream.
type verdict int

const (
	answered    verdict = iota // it answered (a refusal included): it works
	throttled                  // a rate or quota refusal: open at once
	connFailure                // no session (dial, TLS, AUTH, no reply): three in a row open
	noVerdict                  // our own cancellation: says nothing
)

// verdictOf classifies an attempt's message-level error for the breaker.
func verdictOf(e *Error) verdict {
	switch {
	case e == nil:
		return answered
	case errors.Is(e.Err, context.Canceled):
		return noVerdict
	case e.Throttled:
		return throttled
	case e.PossibleDuplicate:
		return answered
	case e.Code == 0, e.Stage == StageDial, e.Stage == StageConnect, e.Stage == StageTLS, e.Stage == StageAuth:
		return connFailure
	}
	return answered
}

// breaker is one upstream's circuit breaker (DESIGN §7 "Breakers"). Closed,
// it lets everything through; open, nothing until openUntil; then half-open:
// exactly one delivery, the probe, goes through, and only the probe's
// answer closes it or reopens it for twice the last period (up to
// maxBackoff). Attempts let through before it opened do not move it: one
// failure is one doubling, however many deliveries were in flight.
// It is not safe for concurrent use; the upstream's mutex guards it.
type breaker struct {
	first     time.Duration // breaker_backoff: the first open period
	state     breakerState
	openUntil time.Time
	backoff   time.Duration // the last open period, 0 after closing
	probing   bool          // the half-open probe is in flight
	failures  int           // consecutive connection failures while closed
}

// allow reports whether a delivery may go now and whether it is the probe.
func (b *breaker) allow(now time.Time) (probe, ok bool) {
	switch {
	case b.state == closed:
		return false, true
	case b.state == open && now.Before(b.openUntil), b.probing:
		return false, false
	}
	b.state, b.probing = halfOpen, true
	return true, true
}

// availableAt reports whether allow would let a delivery go at now, or else
// the earliest time it may.
func (b *breaker) availableAt(now time.Time) (bool, time.Time) {
	switch {
	case b.state == closed:
		return true, now
	case b.probing:
		return false, now.Add(probeWait)
	case b.state == open && now.Before(b.openUntil):
		return false, b.openUntil
	}
	return true, now
}

// record applies one attempt's verdict; probe says whether allow made it
// the probe. It reports whether the state changed.
func (b *breaker) record(now time.Time, probe bool, v verdict) bool {
	if probe {
		b.probing = false
	}
	if v == noVerdict || (!probe && b.state != closed) {
		// A delivery let through before the breaker opened: the failure
		// that opened it already counted.
		return false
	}
	switch v {
	case answered:
		b.failures = 0
		if b.state == closed {
			return false
		}
		b.state, b.backoff = closed, 0
		return true
	case connFailure:
		if b.state == closed {
			b.failures++
			if b.failures < failuresToOpen {
				return false
			}
		}
	}
	if b.state == closed || b.backoff == 0 {
		b.backoff = b.first
	} else {
		b.backoff = min(2*b.backoff, maxBackoff)
	}
	b.state, b.openUntil, b.failures = open, now.Add(b.backoff), 0
	return true
}

// shown is the state as `sluice upstreams` shows it: an open breaker whose
// period has passed is half-open (the next message probes it).
func (b *breaker) shown(now time.Time) breakerState {
	if b.state == open && !now.Before(b.openUntil) {
		return halfOpen
	}
	return b.state
}
