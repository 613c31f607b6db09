// Package redisconn reads the Redis address that ratelimit.redis names, for
// the packages that share that Redis (policy's counters, suppress's map).
package redisconn

import (
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options parses url (redis:// or rediss://, or a bare host:port) and bounds
// every wait (dial, read, write, pool) by timeout, the calls' contexts
// included. Retries are the caller's choice.
func Options(url string, timeout time.Duration) (*redis.Options, error) {
	var ro *redis.Options
	if strings.Contains(url, "://") {
		var err error
		if ro, err = redis.ParseURL(url); err != nil {
			return nil, err
		}
	} else {
		ro = &redis.Options{Addr: url} // host:port
	}
	ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout, ro.PoolTimeout = timeout, timeout, timeout, timeout
	ro.ContextTimeoutEnabled = true
	return ro, nil
}
