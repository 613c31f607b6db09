// Package testwait is the tests' one way to wait for something to happen:
// poll a condition until it holds. The deadline only guards against a
// hang; it never proves that something did not happen.
package testwait

import (
	"testing"
	"time"
)

// interval is how often the condition is asked.
const interval = 5 * time.Millisecond

// Until polls cond until it holds, failing t when timeout passes first.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}
