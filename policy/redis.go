package policy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemail/sluice/internal/metrics"
)

// gcraScript is the Redis side of gcraTable: the same arithmetic on one key
// holding the TAT in microseconds (a Lua number is a double: exact below
// 2^53 µs, about 285 years). The caller's clock is passed in rather than
// Redis TIME, so tests can inject time; instances are assumed NTP-synced,
// and a skew of a few milliseconds only shifts one event by as much.
//
// ARGV: now µs, interval µs, burst, cost (1 take, -1 refund).
// Returns {allowed 0|1, retry-after µs}.
var gcraScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new = tat + cost * interval
if cost > 0 then
  local over = new - now - burst * interval
  if over > 0 then return {0, over} end
elseif new <= now then
  redis.call('DEL', KEYS[1])
  return {1, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1)
return {1, 0}
`)

// authFailScript records one failure in a sliding window (a sorted set of
// failure times, so failures cannot hide on either side of a fixed window's
// edge); the block-th failure within the window sets the block key.
// KEYS: failures, block. ARGV: window ms, block-after, block ms, now ms, a
// unique member.
var authFailScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local w = tonumber(ARGV[1])
local now = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], w)
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
end
return n
`)

// authReserveScript takes a slot for one AUTH attempt before its password
// is checked (a member of the pending set, moved to the failures on
// failure), so parallel connections cannot pass the check before any
// failure is counted: failures plus pending checks stay under block-after.
// A pending member left by an instance that died mid-check lapses after
// authPendingTTL. KEYS: failures, block, pending. ARGV: window ms,
// block-after, block ms, now ms, a unique member, pending TTL ms. Returns
// the failures in the window, -1 when the IP is blocked, or -2 (busy) when
// the slots are full of checks in flight.
var authReserveScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local w = tonumber(ARGV[1])
local now = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return -1
end
if n + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[2]) then return -2 end
redis.call('ZADD', KEYS[3], now, ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return n
`)

// authReserveBusy is authReserveScript's answer when every slot is held by
// a check in flight.
const authReserveBusy = -2

// authPendingTTL bounds how long a reserved slot counts when its instance
// never settles it (it died during the check); checks take milliseconds.
const authPendingTTL = time.Minute

// authSettleScript ends a reserved attempt: its pending member goes, and a
// failure (ARGV[5] = "0") joins the failures, setting the block when the
// window is full. KEYS: failures, block, pending. ARGV: window ms,
// block-after, block ms, now ms, ok, member.
var authSettleScript = redis.NewScript(`
redis.call('ZREM', KEYS[3], ARGV[6])
if ARGV[5] == '1' then
  return 0
end
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local now = tonumber(ARGV[4])
redis.call('ZADD', KEYS[1], now, ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local n = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[1]) + 1, '+inf')
if n >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
end
return n
`)

// authStateScript counts the failures in the window and reads the block.
// KEYS: failures, block. ARGV: window ms, now ms.
var authStateScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
return redis.call('ZCOUNT', KEYS[1], tonumber(ARGV[2]) - tonumber(ARGV[1]) + 1, '+inf')
`)

// redisCooldown is how long Redis is left alone after an error: a dead or
// black-holed Redis then costs one bounded call per second, not one per
// SMTP command.
const redisCooldown = time.Second

// redisStore is the shared backend for rate limits and auth failures.
type redisStore struct {
	rdb      *redis.Client
	failOpen bool
	timeout  time.Duration
	errors   *metrics.Counter
	log      *slog.Logger

	mu        sync.Mutex
	downUntil time.Time
}

func newRedisStore(url string, failOpen bool, opts Options, log *slog.Logger) (*redisStore, error) {
	timeout := opts.RedisTimeout
	if timeout <= 0 {
		timeout = 200 * time.Millisecond
	}
	var ro *redis.Options
	if strings.Contains(url, "://") {
		var err error
		if ro, err = redis.ParseURL(url); err != nil {
			return nil, fmt.Errorf("policy: ratelimit.redis: %w", err)
		}
	} else {
		ro = &redis.Options{Addr: url} // host:port
	}
	// Every wait is bounded by the timeout; no retries (the fallback is
	// the retry), so a dead Redis never stalls a session for long.
	ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout, ro.PoolTimeout = timeout, timeout, timeout, timeout
	ro.MaxRetries = -1
	ro.DialerRetries = 1
	ro.ContextTimeoutEnabled = true
	reg := opts.Metrics
	if reg == nil {
		reg = metrics.Default
	}
	return &redisStore{
		rdb:      redis.NewClient(ro),
		failOpen: failOpen,
		timeout:  timeout,
		errors:   reg.NewCounter("sluice_ratelimit_redis_errors_total", "Redis calls for rate limits and auth counters that failed."),
		log:      log,
	}, nil
}

func (s *redisStore) close() { _ = s.rdb.Close() }

// usable is false during the cool-down after an error.
func (s *redisStore) usable(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !now.Before(s.downUntil)
}

// failed counts and logs err and starts a cool-down. The log is written once
// per cool-down, so an outage gives about one line a second, not one per
// command.
func (s *redisStore) failed(now time.Time, err error) {
	s.errors.Inc()
	s.mu.Lock()
	s.downUntil = now.Add(redisCooldown)
	s.mu.Unlock()
	s.log.Warn("ratelimit_redis_error", "err", err, "fail_open", s.failOpen)
}

func (s *redisStore) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// gcra runs gcraScript; cost 1 takes, -1 refunds.
func (s *redisStore) gcra(ctx context.Context, key string, now time.Time, interval time.Duration, burst, cost int) (time.Duration, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	res, err := gcraScript.Run(ctx, s.rdb, []string{key},
		now.UnixMicro(), max(1, interval.Microseconds()), burst, cost).Int64Slice()
	if err != nil {
		return 0, fmt.Errorf("policy: redis gcra %s: %w", key, err)
	}
	if len(res) != 2 {
		return 0, fmt.Errorf("policy: redis gcra %s: unexpected reply %v", key, res)
	}
	if res[0] == 1 {
		return 0, nil
	}
	return time.Duration(max(1, res[1])) * time.Microsecond, nil
}

func authKeys(key string) []string {
	// The hash tag keeps both keys in one slot on a Redis Cluster.
	return []string{"sluice:rl:auth:{" + key + "}", "sluice:rl:authblock:{" + key + "}", "sluice:rl:authpending:{" + key + "}"}
}

func (s *redisStore) authState(ctx context.Context, key string, now time.Time) (int, bool, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	n, err := authStateScript.Run(ctx, s.rdb, authKeys(key), authWindow.Milliseconds(), now.UnixMilli()).Int()
	if err != nil {
		return 0, false, fmt.Errorf("policy: redis auth state %s: %w", key, err)
	}
	if n < 0 {
		return 0, true, nil
	}
	return n, false, nil
}

func (s *redisStore) authFailed(ctx context.Context, key string, now time.Time) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	err := authFailScript.Run(ctx, s.rdb, authKeys(key),
		authWindow.Milliseconds(), authBlockAfter, authBlockFor.Milliseconds(), now.UnixMilli(), rand.Text()).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("policy: redis auth failed %s: %w", key, err)
	}
	return nil
}

func (s *redisStore) authReserve(ctx context.Context, key, member string, now time.Time) (int, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	n, err := authReserveScript.Run(ctx, s.rdb, authKeys(key),
		authWindow.Milliseconds(), authBlockAfter, authBlockFor.Milliseconds(), now.UnixMilli(), member, authPendingTTL.Milliseconds()).Int()
	if err != nil {
		return 0, fmt.Errorf("policy: redis auth reserve %s: %w", key, err)
	}
	return n, nil
}

func (s *redisStore) authSettle(ctx context.Context, key, member string, ok bool, now time.Time) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	flag := "0"
	if ok {
		flag = "1"
	}
	err := authSettleScript.Run(ctx, s.rdb, authKeys(key),
		authWindow.Milliseconds(), authBlockAfter, authBlockFor.Milliseconds(), now.UnixMilli(), flag, member).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("policy: redis auth settle %s: %w", key, err)
	}
	return nil
}
