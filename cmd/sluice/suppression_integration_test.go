package main

// The suppression list end to end with the real binary: an upstream's
// 550 5.1.1 lists the recipient and later RCPTs to it get the §8.2 reply;
// a 4xx never lists anyone; `sluice suppression` works while serve runs and
// after it stopped.

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// suppRcpt opens a session, sends MAIL and one RCPT, and returns the
// RCPT's error (nil: accepted). The transaction is abandoned.
func suppRcpt(d *testDaemon, to string) error {
	c, err := d.openRcpt(to)
	c.Close()
	return err
}

// suppReply returns the full reply line of an SMTP error ("550 5.1.1 text").
func suppReply(err error) string {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		if err == nil {
			return "accepted"
		}
		return err.Error()
	}
	return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
}

func suppCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	return runCmd(t, "", append([]string{"suppression"}, args...)...)
}

func TestSuppressionFromUpstreamBounce(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{}), failRcpt("gone@example.org", 550, [3]int{5, 1, 1}, "no such user here"), failRcpt("busy@example.org", 451, [3]int{4, 1, 1}, "try again later"))

	d.mustSend("supp1", "one bounces", "good@example.org", "gone@example.org")
	d.up.WaitMessages(t, 2, 20*time.Second) // the original to good@ and the DSN for gone@

	out, stderr, code := suppCmd(t, "check", "gone@example.org", "-c", d.cfg)
	today := time.Now().UTC().Format("2006-01-02")
	if code != 0 || !strings.Contains(out, "suppressed after a hard bounce on "+today) || !strings.Contains(out, "no such user here") {
		t.Fatalf("suppression check gone@: exit %d, %q %q; want 0 and the bounce", code, out, stderr)
	}
	err := suppRcpt(d, "gone@example.org")
	if got, want := suppReply(err), "550 5.1.1 <gone@example.org>: suppressed after a hard bounce on "+today; got != want {
		t.Fatalf("RCPT to a suppressed address: %q, want %q", got, want)
	}
	// Case does not matter to the list.
	if got := suppReply(suppRcpt(d, "Gone@Example.org")); !strings.HasPrefix(got, "550 5.1.1 <Gone@Example.org>: suppressed") {
		t.Fatalf("RCPT to the address in other case: %q", got)
	}

	// A 4xx, even one whose detail is 1.1, never suppresses: once its
	// deferral is logged, the address is still not listed.
	d.mustSend("supp2", "deferred", "busy@example.org")
	if !d.waitLog("rcpt=busy@example.org", 20*time.Second) || !d.waitLog("msg=deferred", 20*time.Second) {
		t.Fatalf("no deferral of busy@ logged:\n%s", d.stderr.String())
	}
	if out, _, code := suppCmd(t, "check", "busy@example.org", "-c", d.cfg); code != 1 || !strings.Contains(out, "not suppressed") {
		t.Fatalf("check busy@ after a 451 4.1.1: exit %d %q, want 1 (not suppressed)", code, out)
	}
	if got := suppReply(suppRcpt(d, "busy@example.org")); got != "accepted" {
		t.Fatalf("RCPT to busy@: %s, want accepted", got)
	}

	m := readMetrics(t, d.httpAddr())
	if m["sluice_suppressed_total"] != 2 || m["sluice_suppression_list_size"] != 1 {
		t.Errorf("metrics: suppressed_total %v (want 2), list_size %v (want 1)", m["sluice_suppressed_total"], m["sluice_suppression_list_size"])
	}

	// add and remove through the running daemon.
	if out, stderr, code := suppCmd(t, "add", "asked@example.org", "--reason", "asked us to stop", "-c", d.cfg); code != 0 {
		t.Fatalf("add: exit %d %s %s", code, out, stderr)
	}
	if got := suppReply(suppRcpt(d, "asked@example.org")); got != "550 5.1.1 <asked@example.org>: suppressed by an administrator on "+today {
		t.Fatalf("RCPT after add: %q", got)
	}
	if out, stderr, code := suppCmd(t, "remove", "gone@example.org", "-c", d.cfg); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("remove: exit %d %s %s", code, out, stderr)
	}
	if got := suppReply(suppRcpt(d, "gone@example.org")); got != "accepted" {
		t.Fatalf("RCPT after remove: %s, want accepted", got)
	}
	if _, _, code := suppCmd(t, "remove", "gone@example.org", "-c", d.cfg); code != 1 {
		t.Fatalf("removing an address not listed: exit %d, want 1", code)
	}

	// Offline: the list survives the daemon and can be edited without it.
	if c := d.stop(20 * time.Second); c != 0 {
		t.Fatalf("serve exit %d", c)
	}
	out, stderr, code = suppCmd(t, "list", "--json", "-c", d.cfg)
	if code != 0 {
		t.Fatalf("offline list: exit %d %s", code, stderr)
	}
	var addrs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var en struct{ Address, Kind string }
		if err := json.Unmarshal([]byte(line), &en); err != nil {
			t.Fatalf("list --json line %q: %v", line, err)
		}
		addrs = append(addrs, en.Address+"/"+en.Kind)
	}
	if strings.Join(addrs, ",") != "asked@example.org/manual" {
		t.Fatalf("offline list: %v, want [asked@example.org/manual]", addrs)
	}
	if _, stderr, code := suppCmd(t, "add", "later@example.org", "-c", d.cfg); code != 0 {
		t.Fatalf("offline add: exit %d %s", code, stderr)
	}
	if _, _, code := suppCmd(t, "check", "later@example.org", "--state-dir", d.dir+"/state"); code != 0 {
		t.Fatalf("offline check after add: exit %d, want 0", code)
	}
	d.serve()
	if got := suppReply(suppRcpt(d, "later@example.org")); !strings.HasPrefix(got, "550 5.1.1 <later@example.org>: suppressed by an administrator") {
		t.Fatalf("RCPT after an offline add and a restart: %q", got)
	}
}
