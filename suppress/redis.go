package suppress

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicemail/sluice/internal/redisconn"
)

// RedisStore keeps the map in Redis, shared by every instance: each key is
// one Redis key under "sluice:" with its TTL, so Redis itself forgets what
// expired and bounds the memory.
type RedisStore struct {
	rdb     *redis.Client
	timeout time.Duration
}

const redisPrefix = "sluice:"

// OpenRedis connects to url (redis:// or rediss://, as ratelimit.redis).
// Every call is bounded by timeout (default 500ms).
func OpenRedis(url string, timeout time.Duration) (*RedisStore, error) {
	if timeout <= 0 {
		timeout = 500 * time.Millisecond
	}
	ro, err := redisconn.Options(url, timeout)
	if err != nil {
		return nil, fmt.Errorf("suppress: ratelimit.redis: %w", err)
	}
	ro.MaxRetries = 1
	return &RedisStore{rdb: redis.NewClient(ro), timeout: timeout}, nil
}

func (s *RedisStore) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

func (s *RedisStore) Get(ctx context.Context, key string) ([]byte, bool, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	b, err := s.rdb.Get(ctx, redisPrefix+key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("suppress: redis get: %w", err)
	}
	return b, true, nil
}

func (s *RedisStore) Put(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	if err := s.rdb.Set(ctx, redisPrefix+key, val, ttl).Err(); err != nil {
		return fmt.Errorf("suppress: redis set: %w", err)
	}
	return nil
}

func (s *RedisStore) PutNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	ok, err := s.rdb.SetNX(ctx, redisPrefix+key, val, ttl).Result()
	if err != nil {
		return false, fmt.Errorf("suppress: redis set nx: %w", err)
	}
	return ok, nil
}

func (s *RedisStore) Delete(ctx context.Context, key string) (bool, error) {
	ctx, cancel := s.bounded(ctx)
	defer cancel()
	n, err := s.rdb.Del(ctx, redisPrefix+key).Result()
	if err != nil {
		return false, fmt.Errorf("suppress: redis del: %w", err)
	}
	return n > 0, nil
}

// Scan walks the keyspace with SCAN (never KEYS, which blocks Redis).
// prefix is one of this package's fixed namespaces, free of glob
// characters.
func (s *RedisStore) Scan(ctx context.Context, prefix string, fn func(string, []byte)) error {
	var cursor uint64
	for {
		cctx, cancel := s.bounded(ctx)
		keys, next, err := s.rdb.Scan(cctx, cursor, redisPrefix+prefix+"*", 1000).Result()
		if err == nil && len(keys) > 0 {
			var vals []any
			vals, err = s.rdb.MGet(cctx, keys...).Result()
			for i, v := range vals {
				if str, ok := v.(string); ok {
					fn(strings.TrimPrefix(keys[i], redisPrefix), []byte(str))
				}
			}
		}
		cancel()
		if err != nil {
			return fmt.Errorf("suppress: redis scan: %w", err)
		}
		if cursor = next; cursor == 0 {
			return nil
		}
	}
}

func (s *RedisStore) Close() error { return s.rdb.Close() }
