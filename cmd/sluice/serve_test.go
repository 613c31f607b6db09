package main

// The daemon's lifecycle: what a SIGHUP keeps, replaces and closes, and
// what a shutdown closes.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReloadKeepsRateLimits: SIGHUP builds a new policy.Engine; it takes
// over the old one's rate-limit buckets and auth-failure counters, so a
// reload hands nobody a fresh burst and unblocks no brute-forcing IP.
func TestReloadKeepsRateLimits(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg("", ""))
	sendAs := func(id string) error {
		c, err := login(d.addrs["submission"], d.tlsConfig(), nil, "ratey", password)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = transact(c, "app@example.com", []string{"r@example.org"}, message("app@example.com", "r@example.org", id, "x"))
		return err
	}
	for i, id := range []string{"r1", "r2"} {
		if err := sendAs(id); err != nil {
			t.Fatalf("message %d of the 2/1h burst: %v", i+1, err)
		}
	}
	if err := sendAs("r3"); replyCode(err) != "450 4.7.1" {
		t.Fatalf("third message in the hour: %s, want 450 4.7.1", replyCode(err))
	}
	d.reload("msg=reloaded")
	if err := sendAs("r4"); replyCode(err) != "450 4.7.1" {
		t.Fatalf("after a SIGHUP with the same config the user is no longer rate limited: %s, want 450 4.7.1", replyCode(err))
	}
}

// TestReloadRefusedBuildsNothing: a reload refused late (policy.New fails
// on a Redis URL the config check accepts) leaves nothing of the refused
// configuration running: the dispatcher gauge still counts only the one
// built at start, and upstreams.json never names the refused upstream.
func TestReloadRefusedBuildsNothing(t *testing.T) {
	t.Parallel()
	d := launch(t, polCfg("", ""))
	status := filepath.Join(d.dir, "state", "upstreams.json")
	waitFor(t, 10*time.Second, "upstreams.json naming up1", func() bool {
		b, _ := os.ReadFile(status)
		return bytes.Contains(b, []byte(`"up1"`))
	})
	if n := d.metric("sluice_upstream_dispatchers"); n != 1 {
		t.Fatalf("sluice_upstream_dispatchers %v after the start, want 1", n)
	}
	y, _ := os.ReadFile(d.cfg)
	y = bytes.Replace(y, []byte("name: up1"), []byte("name: leaky"), 1)
	y = append(y, "ratelimit:\n  redis: redis://127.0.0.1:1/not-a-db-number\n"...)
	if err := os.WriteFile(d.cfg, y, 0o600); err != nil {
		t.Fatal(err)
	}
	// The refusal is logged after what the reload built was closed: a
	// dispatcher of the refused configuration would still count here.
	d.reload("reload refused")
	if n := d.metric("sluice_upstream_dispatchers"); n != 1 {
		t.Fatalf("sluice_upstream_dispatchers %v after a refused reload, want 1 (the running one)", n)
	}
	if b, _ := os.ReadFile(status); bytes.Contains(b, []byte("leaky")) {
		t.Fatalf("upstreams.json shows the refused configuration's upstream:\n%s", b)
	}
	if _, err := d.sendMsg("after-refusal", "x"); err != nil {
		t.Fatalf("the running configuration stopped working after a refused reload: %v", err)
	}
	d.up.WaitMessages(t, 1, 20*time.Second)
}

// TestServeStartFailureClosesQueue: a start that fails after the queue was
// opened (a listener's port is taken) closes the queue, whose control
// socket is then gone, rather than leaving it to the process's exit.
func TestServeStartFailureClosesQueue(t *testing.T) {
	t.Parallel()
	// The listener "taken" wants the port the sink listens on.
	d := launch(t, unstarted, configWith(func(port int) string {
		return polYAMLTo(port, fmt.Sprintf("  - name: taken\n    address: 127.0.0.1:%d\n    tls: none\n    auth: none\n    trusted_networks: [127.0.0.1/32]\n", port), "")
	}))
	_, stderr, code := runCmd(t, "", "serve", "-c", d.cfg)
	if code != 1 || !strings.Contains(stderr, "address already in use") {
		t.Fatalf("serve with a taken port: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(d.dir, "state", "control.sock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control.sock after a failed start: %v, want it removed with the queue closed", err)
	}
}
