package policy

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/internal/redisconn"
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

// authLua begins every auth script. KEYS: failures (a sorted set of failure
// times: a sliding window, so failures cannot hide on either side of a fixed
// window's edge), block, pending. ARGV: window ms, block-after, block ms,
// now ms, then the script's own (redisStore.runAuth passes them).
const authLua = `
local w = tonumber(ARGV[1])
local now = tonumber(ARGV[4])
local function blocked() return redis.call('EXISTS', KEYS[2]) == 1 end
-- blockWhenFull sets the block (and forgets the failures) once n failures
-- fill the window.
local function blockWhenFull(n)
  if n < tonumber(ARGV[2]) then return false end
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return true
end
`

// authFailScript records one failure; the block-after-th failure within the
// window sets the block key. ARGV[5]: a unique member.
var authFailScript = redis.NewScript(authLua + `
if blocked() then return -1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], w)
local n = redis.call('ZCARD', KEYS[1])
blockWhenFull(n)
return n
`)

// authReserveScript takes a slot for one AUTH attempt before its password
// is checked (a member of the pending set, moved to the failures on
// failure), so parallel connections cannot pass the check before any
// failure is counted: failures plus pending checks stay under block-after.
// A pending member left by an instance that died mid-check lapses after
// authPendingTTL. ARGV[5]: a unique member, ARGV[6]: pending TTL ms.
// Returns the failures in the window, -1 when the IP is blocked, or -2
// (busy) when the slots are full of checks in flight.
var authReserveScript = redis.NewScript(authLua + `
if blocked() then return -1 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - w)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
local n = redis.call('ZCARD', KEYS[1])
if blockWhenFull(n) then return -1 end
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
// window is full. ARGV[5]: ok, ARGV[6]: member.
var authSettleScript = redis.NewScript(authLua + `
redis.call('ZREM', KEYS[3], ARGV[6])
if ARGV[5] == '1' then
  return 0
end
if blocked() then return -1 end
redis.call('ZADD', KEYS[1], now, ARGV[6])
redis.call('PEXPIRE', KEYS[1], w)
local n = redis.call('ZCOUNT', KEYS[1], now - w + 1, '+inf')
blockWhenFull(n)
return n
`)

// authStateScript counts the failures in the window and reads the block.
var authStateScript = redis.NewScript(authLua + `
if blocked() then return -1 end
return redis.call('ZCOUNT', KEYS[1], now - w + 1, '+inf')
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
	ro, err := redisconn.Options(url, timeout)
	if err != nil {
		return nil, fmt.Errorf("policy: ratelimit.redis: %w", err)
	}
	// No retries (the fallback is the retry), so a dead Redis never stalls
	// a session for long.
	ro.MaxRetries = -1
	ro.DialerRetries = 1
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

// runAuth runs one of the auth scripts on key's keys with the arguments
// authLua reads, then extra.
func (s *redisStore) runAuth(ctx context.Context, script *redis.Script, key string, now time.Time, extra ...any) *redis.Cmd {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	args := append([]any{authWindow.Milliseconds(), authBlockAfter, authBlockFor.Milliseconds(), now.UnixMilli()}, extra...)
	return script.Run(ctx, s.rdb, authKeys(key), args...)
}

func (s *redisStore) authState(ctx context.Context, key string, now time.Time) (int, bool, error) {
	n, err := s.runAuth(ctx, authStateScript, key, now).Int()
	if err != nil {
		return 0, false, fmt.Errorf("policy: redis auth state %s: %w", key, err)
	}
	if n < 0 {
		return 0, true, nil
	}
	return n, false, nil
}

func (s *redisStore) authFailed(ctx context.Context, key string, now time.Time) error {
	err := s.runAuth(ctx, authFailScript, key, now, rand.Text()).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("policy: redis auth failed %s: %w", key, err)
	}
	return nil
}

func (s *redisStore) authReserve(ctx context.Context, key, member string, now time.Time) (int, error) {
	n, err := s.runAuth(ctx, authReserveScript, key, now, member, authPendingTTL.Milliseconds()).Int()
	if err != nil {
		return 0, fmt.Errorf("policy: redis auth reserve %s: %w", key, err)
	}
	return n, nil
}

func (s *redisStore) authSettle(ctx context.Context, key, member string, ok bool, now time.Time) error {
	flag := "0"
	if ok {
		flag = "1"
	}
	err := s.runAuth(ctx, authSettleScript, key, now, flag, member).Err()
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("policy: redis auth settle %s: %w", key, err)
	}
	return nil
}
