package redisconn

import (
	"testing"
	"time"
)

func TestOptions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ url, addr string }{
		{"127.0.0.1:6379", "127.0.0.1:6379"},
		{"redis://10.0.0.2:6380/0", "10.0.0.2:6380"},
		{"rediss://cache.example:6390", "cache.example:6390"},
	} {
		ro, err := Options(tc.url, 300*time.Millisecond)
		if err != nil {
			t.Fatalf("Options(%q): %v", tc.url, err)
		}
		if ro.Addr != tc.addr || ro.DialTimeout != 300*time.Millisecond || ro.ReadTimeout != ro.DialTimeout ||
			ro.WriteTimeout != ro.DialTimeout || ro.PoolTimeout != ro.DialTimeout || !ro.ContextTimeoutEnabled {
			t.Errorf("Options(%q) = addr %q, timeouts %v %v %v %v, context %v", tc.url, ro.Addr,
				ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout, ro.PoolTimeout, ro.ContextTimeoutEnabled)
		}
	}
	if _, err := Options("http://10.0.0.2", time.Second); err == nil {
		t.Error("Options accepted an http:// URL")
	}
}
