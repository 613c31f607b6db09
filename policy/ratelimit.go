package policy

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sluicemail/sluice/config"
)

// Rate-limit classes: one bucket per class, policy and client.
const (
	classMessages   = "msg"
	classRecipients = "rcpt"
)

// Reservation is one message charged at MAIL. Cancel gives it back when the
// message is not accepted after all (RSET, a refused DATA, a dropped
// connection), so a failed attempt does not cost the sender its quota.
type Reservation struct {
	e        *Engine
	class    string
	key      string
	interval time.Duration
	inRedis  bool
	done     atomic.Bool
}

// Cancel returns the reserved message to the bucket. It is safe on a nil
// Reservation, on one for an unlimited policy, and to call twice (the second
// call does nothing). Call it only for a message that was not accepted.
func (r *Reservation) Cancel() {
	if r == nil || r.e == nil || !r.done.CompareAndSwap(false, true) {
		return
	}
	now := r.e.now()
	if r.inRedis {
		// The message was charged in Redis; give it back there, bounded, and
		// accept a lost refund if Redis has gone meanwhile (it errs on the
		// strict side by one message, and never stalls a session on a Redis
		// already known to be down).
		if !r.e.redis.usable(now) {
			return
		}
		if _, err := r.e.redis.gcra(context.Background(), redisKey(r.class, r.key), now, r.interval, 0, -1); err != nil {
			r.e.redis.failed(now, err)
		}
		return
	}
	r.e.buckets.refund(r.class, r.key, now, r.interval)
}

// ReserveMessage charges one message to an authenticated user at MAIL
// (rate.messages). A nil Denial comes with a non-nil Reservation. Clients
// accepted by network have no user: use ReserveMessageIP for them (user ""
// here would put all of them in one bucket).
func (e *Engine) ReserveMessage(ctx context.Context, p *Policy, user string) (*Reservation, *Denial) {
	return e.reserve(ctx, p, "user:"+user)
}

// ReserveMessageIP is ReserveMessage for a client accepted by network (no
// AUTH, user ""): the bucket is the client's IP within the listener's policy.
func (e *Engine) ReserveMessageIP(ctx context.Context, p *Policy, ip string) (*Reservation, *Denial) {
	return e.reserve(ctx, p, "ip:"+ip)
}

// ChargeRecipient charges one accepted recipient to a user at RCPT
// (rate.recipients). Recipients are charged, never refunded (DESIGN §7): a
// RCPT the relay accepted has cost the provider's reputation budget even if
// the message is later abandoned.
func (e *Engine) ChargeRecipient(ctx context.Context, p *Policy, user string) *Denial {
	_, d := e.take(ctx, classRecipients, p, "user:"+user, p.RateRecipients, "rate.recipients")
	return d
}

// ChargeRecipientIP is ChargeRecipient for a client accepted by network.
func (e *Engine) ChargeRecipientIP(ctx context.Context, p *Policy, ip string) *Denial {
	_, d := e.take(ctx, classRecipients, p, "ip:"+ip, p.RateRecipients, "rate.recipients")
	return d
}

func (e *Engine) reserve(ctx context.Context, p *Policy, client string) (*Reservation, *Denial) {
	r := p.RateMessages
	if r.Unlimited() {
		return &Reservation{}, nil
	}
	inRedis, d := e.take(ctx, classMessages, p, client, r, "rate.messages")
	if d != nil {
		return nil, d
	}
	interval, _ := gcraParams(r)
	return &Reservation{e: e, class: classMessages, key: p.Name + ":" + client, interval: interval, inRedis: inRedis}, nil
}

// gcraParams turns N/D burst B into the emission interval D/N and the burst
// (B, or N when absent).
func gcraParams(r config.Rate) (time.Duration, int) {
	interval := max(time.Nanosecond, r.Per/time.Duration(r.N))
	burst := r.Burst
	if burst <= 0 {
		burst = r.N
	}
	return interval, burst
}

func redisKey(class, key string) string { return "sluice:rl:" + class + ":" + key }

// take charges one event, in Redis when configured and reachable, else in
// memory. It reports whether Redis took it.
func (e *Engine) take(ctx context.Context, class string, p *Policy, client string, r config.Rate, rule string) (bool, *Denial) {
	if r.Unlimited() {
		return false, nil
	}
	interval, burst := gcraParams(r)
	key := p.Name + ":" + client
	now := e.now()
	deny := func(retry time.Duration) *Denial {
		return &Denial{Kind: RateLimited, Rule: rule + " " + formatRate(r), RetryAfter: retry}
	}
	if e.redis != nil {
		if e.redis.usable(now) {
			retry, err := e.redis.gcra(ctx, redisKey(class, key), now, interval, burst, 1)
			if err == nil {
				if retry > 0 {
					return true, deny(retry)
				}
				return true, nil
			}
			e.redis.failed(now, err)
		}
		if !e.redis.failOpen {
			return false, &Denial{Kind: Unavailable, Rule: "ratelimit.redis unreachable and fail_open false"}
		}
	}
	if retry := e.buckets.take(class, key, now, interval, burst); retry > 0 {
		return false, deny(retry)
	}
	return false, nil
}

// formatRate writes a rate the way the config spells it: 100/1m burst 20.
func formatRate(r config.Rate) string {
	if r.Unlimited() {
		return "unlimited"
	}
	s := fmt.Sprintf("%d/%s", r.N, formatDuration(r.Per))
	if r.Burst > 0 && r.Burst != r.N {
		s += fmt.Sprintf(" burst %d", r.Burst)
	}
	return s
}

func formatDuration(d time.Duration) string {
	for _, u := range []struct {
		d time.Duration
		s string
	}{{24 * time.Hour, "d"}, {time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}} {
		if d >= u.d && d%u.d == 0 {
			if u.s == "d" && d == 24*time.Hour {
				return "24h" // how DESIGN and most configs write a day
			}
			return fmt.Sprintf("%d%s", d/u.d, u.s)
		}
	}
	return d.String()
}
