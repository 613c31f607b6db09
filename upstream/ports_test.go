package upstream

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

func TestPortFallbackIsRemembered(t *testing.T) {
	t.Parallel()
	stalled := testsmtp.Start(t, testsmtp.Options{Mode: testsmtp.Silent})
	open := testsmtp.Start(t, testsmtp.Options{})
	closedPort := testsmtp.ClosedPort(t)
	u := config.Upstream{Name: "ports", Host: "127.0.0.1", TLS: config.TLSNone,
		Ports: []int{closedPort, stalled.Port(), open.Port()}, Timeout: 300 * time.Millisecond, ConnectTimeout: time.Second, GreetingTimeout: 300 * time.Millisecond}
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{u}})
	mustDeliver(t, d, msg("first", body))
	if status(d, "ports").Port != open.Port() || stalled.AcceptCount() != 1 {
		t.Fatalf("status %+v, stalled accepts %d", status(d, "ports"), stalled.AcceptCount())
	}
	// Drop the pooled connection so every message needs a dial.
	d.reapAll()
	for i := range 100 {
		mustDeliver(t, d, msg(fmt.Sprint("m", i), body))
		if i%10 == 0 {
			d.reapAll()
		}
	}
	if stalled.AcceptCount() != 1 || len(open.Messages()) != 101 {
		t.Fatalf("stalled port touched %d times; open has %d", stalled.AcceptCount(), len(open.Messages()))
	}
	if open.Sessions().Total < 10 {
		t.Fatalf("only %d sessions: the test did not redial", open.Sessions().Total)
	}
}

// reapAll closes every pooled connection (test helper).
func (d *Dispatcher) reapAll() {
	for _, u := range d.ups {
		for _, cl := range u.pool.drain() {
			cl.quit()
		}
	}
}

// TestGreetingTimeoutIsItsOwn: a port that accepts TCP and never greets
// costs greeting_timeout, not the command timeout (issue 8 item 14: the
// first delivery waited the whole 60 s timeout before the next port).
func TestGreetingTimeoutIsItsOwn(t *testing.T) {
	t.Parallel()
	silent := testsmtp.Start(t, testsmtp.Options{Mode: testsmtp.Silent})
	open := testsmtp.Start(t, testsmtp.Options{})
	u := config.Upstream{Name: "greet", Host: "127.0.0.1", TLS: config.TLSNone,
		Ports: []int{silent.Port(), open.Port()}, Timeout: time.Minute, GreetingTimeout: 200 * time.Millisecond}
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{u}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if r := d.Deliver(ctx, msg("m1", body)); r.Errs[0] != nil || r.Upstream != "greet" || len(open.Messages()) != 1 {
		t.Fatalf("err %v, open port got %d messages (silent port accepted %d)", r.Errs[0], len(open.Messages()), silent.AcceptCount())
	}
	if silent.AcceptCount() != 1 || status(d, "greet").Port != open.Port() {
		t.Fatalf("silent accepts %d, status %+v", silent.AcceptCount(), status(d, "greet"))
	}
}

// TestPortReprobeInBackground: the ports before the remembered one are
// re-probed every 10 minutes in the background; a delivery meanwhile uses
// the remembered port and never waits for the probe (issue 8 item 14: the
// re-probe stalled a live delivery for the whole timeout).
func TestPortReprobeInBackground(t *testing.T) {
	t.Parallel()
	first := testsmtp.Start(t, testsmtp.Options{Mode: testsmtp.Refuse, NoLeakCheck: true})
	second := testsmtp.Start(t, testsmtp.Options{})
	clk := newClock()
	u := config.Upstream{Name: "reprobe", Host: "127.0.0.1", TLS: config.TLSNone,
		Ports: []int{first.Port(), second.Port()}, GreetingTimeout: 3 * time.Second}
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, Now: clk.Now})
	mustDeliver(t, d, msg("m1", body))
	if st := status(d, "reprobe"); st.Port != second.Port() || first.AcceptCount() != 1 {
		t.Fatalf("status %+v, first port accepts %d", st, first.AcceptCount())
	}

	first.SetMode(testsmtp.Silent) // the first port now accepts and never greets
	clk.Advance(portReprobe + time.Second)
	d.reapAll()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second) // < greeting_timeout
	defer cancel()
	if r := d.Deliver(ctx, msg("m2", body)); r.Errs[0] != nil {
		t.Fatalf("delivery during the re-probe: %v (it waited for the silent port)", r.Errs[0])
	}
	waitFor(t, "the background re-probe of the first port", func() bool { return first.AcceptCount() == 2 })
	if len(second.Messages()) != 2 {
		t.Fatalf("second port has %d messages, want 2", len(second.Messages()))
	}

	// The first port works again: the next re-probe takes it back.
	first.SetMode(testsmtp.Serve)
	waitFor(t, "the failed re-probe to end", func() bool {
		u := d.ups[0]
		u.mu.Lock()
		defer u.mu.Unlock()
		return !u.reprobing
	})
	clk.Advance(portReprobe + time.Second)
	waitFor(t, "the first port remembered again", func() bool { return status(d, "reprobe").Port == first.Port() })
}

// TestRememberedPortSurvivesRestart: the remembered port is read back from
// upstreams.json, so a restart does not pay a blocked port again.
func TestRememberedPortSurvivesRestart(t *testing.T) {
	t.Parallel()
	silent := testsmtp.Start(t, testsmtp.Options{Mode: testsmtp.Silent})
	open := testsmtp.Start(t, testsmtp.Options{})
	path := filepath.Join(t.TempDir(), "upstreams.json")
	u := config.Upstream{Name: "restart", Host: "127.0.0.1", TLS: config.TLSNone,
		Ports: []int{silent.Port(), open.Port()}, GreetingTimeout: 300 * time.Millisecond}
	d1 := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, StatusFile: path})
	mustDeliver(t, d1, msg("m1", body))
	d1.Close()

	d2 := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, StatusFile: path})
	if st := status(d2, "restart"); st.Port != open.Port() {
		t.Fatalf("after restart: %+v, want port %d remembered", st, open.Port())
	}
	mustDeliver(t, d2, msg("m2", body))
	if silent.AcceptCount() != 1 {
		t.Fatalf("the blocked port was dialled %d times, want once (before the restart)", silent.AcceptCount())
	}
	// A port no longer listed is not taken back.
	u.Ports = []int{silent.Port()}
	d3 := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, StatusFile: filepath.Join(t.TempDir(), "none.json")})
	if st := status(d3, "restart"); st.Port != 0 {
		t.Fatalf("remembered a port from no file: %+v", st)
	}
	d2.Close()
	d4 := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, StatusFile: path})
	if st := status(d4, "restart"); st.Port != 0 {
		t.Fatalf("remembered port %d that is no longer in ports", st.Port)
	}
}
