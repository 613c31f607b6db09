package main

import (
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

var breakerOpenRE = regexp.MustCompile(`time=(\S+) level=WARN msg="upstream breaker open" upstream=up1 for=(\S+) until=(\S+)`)

// TestBreakerRestartOneDoublingPerProbe (issue 8 item 15, DESIGN §8.7): a
// restart with sixty messages queued and the only upstream down (it
// accepts TCP and never greets, so the deliveries the workers start at once
// are all still in flight when the breaker opens). Their failures leave it
// at breaker_backoff; after that each failed probe doubles it once: the
// log shows 1s, then 2s, each opening after the previous period's end —
// not 1s → 10m within milliseconds, as when every third failure in flight
// doubled it.
func TestBreakerRestartOneDoublingPerProbe(t *testing.T) {
	t.Parallel()
	// The sink is the upstream that is down.
	d := launch(t, sinkOpts(testsmtp.Options{Mode: testsmtp.Silent}), edited("retry: [10m]", "retry: [1s]"), upCfg(func(port int) string {
		return fmt.Sprintf("  - name: up1\n    host: 127.0.0.1\n    ports: [%d]\n    tls: none\n    greeting_timeout: 100ms\n    breaker_backoff: 1s\n", port)
	}))
	if _, errs := submit(d.addrs["submission"], d.tlsConfig(), 10, 6, "q", 0).wait(); len(errs) > 0 {
		t.Fatalf("queueing with the upstream down: %v", errs)
	}
	d.stop(15 * time.Second) // deliveries still dialling may outlast shutdown_timeout: any exit will do

	p := d.serve()
	if !p.waitLog(`msg="upstream breaker open" upstream=up1 for=2s`, 30*time.Second) {
		t.Fatalf("no opening for 2s after the restart (the first failed probe); openings: %v", breakerOpenRE.FindAllString(p.stderr.String(), -1))
	}
	var prevUntil time.Time
	for i, m := range breakerOpenRE.FindAllStringSubmatch(p.stderr.String(), -1) {
		at, _ := time.Parse(time.RFC3339Nano, m[1])
		until, _ := time.Parse(time.RFC3339Nano, m[3])
		if want := (time.Second << i).String(); m[2] != want {
			t.Errorf("opening %d at %s: for=%s, want %s", i+1, m[1], m[2], want)
		}
		if i > 0 && at.Before(prevUntil) {
			t.Errorf("opening %d at %s, before the previous period ended at %s: no probe was due", i+1, m[1], prevUntil.Format(time.RFC3339Nano))
		}
		prevUntil = until
	}
}
