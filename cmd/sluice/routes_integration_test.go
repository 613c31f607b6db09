package main

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

// TestRecipientRoutesSplit: a message to r1@gmail.test and r2@other.test is
// split at acceptance (DESIGN §8.5): the gmail.test route's upstream gets
// only r1, the sender's route (the policy's) only r2; both copies are the
// same bytes and verify; the 250 names the first recipient's queue ID and
// `sluice trace` shows both queue IDs, each accepted with its route.
func TestRecipientRoutesSplit(t *testing.T) {
	t.Parallel()
	gmail := testsmtp.Start(t, testsmtp.Options{})
	// The sink is up1, the default policy's route; gmail.test goes to up2.
	d := launch(t, unstarted, baseWith(func(port int) string { return upstreamYAML(port, gmail.Port()) }),
		edited("    allowed_senders: [\"*@example.com\"]\n", "    allowed_senders: [\"*@example.com\"]\n    upstreams: [up1]\n"),
		edited("queue:\n", "routes:\n  - recipient_domains: [GMAIL.test, googlemail.test]\n    upstreams: [up2]\nqueue:\n"))
	other := d.up

	// policy explain shows each recipient's route.
	out, stderr, code := runCmd(t, "", "policy", "explain", "-c", d.cfg, "--user", "app", "--from", "app@example.com", "--to", "r1@gmail.test,r2@other.test")
	for _, want := range []string{
		"route:       <r1@gmail.test> up2 (routes[0] matched)\n",
		"route:       <r2@other.test> up1 (policies.default.upstreams)\n",
		"split:       2 queue IDs, one per route;",
	} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("policy explain: exit %d, want %q in\n%s%s", code, want, out, stderr)
		}
	}

	d.serve()
	state := filepath.Join(d.dir, "state")
	qid := d.mustSend("split", "one message, two routes", "r1@gmail.test", "r2@other.test")
	// Without a Message-ID: the one generated from the 250's queue ID is in both copies.
	noID := "From: <app@example.com>\r\nTo: <r1@gmail.test>, <r2@other.test>\r\nSubject: no id\r\n\r\nbody\r\n"
	qid2, err := send(d.addrs["submission"], d.tlsConfig(), "app", "app@example.com", []string{"r2@other.test", "r1@gmail.test", "r3@other.test"}, noID)
	if err != nil {
		t.Fatal(err)
	}
	gm := gmail.WaitMessages(t, 2, 20*time.Second)
	om := other.WaitMessages(t, 2, 20*time.Second)
	waitQueueEmpty(t, d.env)
	if len(gm) != 2 || len(om) != 2 {
		t.Fatalf("gmail got %d messages, other %d; want 2 each", len(gm), len(om))
	}
	for i, want := range [][2]string{{"r1@gmail.test", "r2@other.test"}, {"r1@gmail.test", "r2@other.test,r3@other.test"}} {
		if got := strings.Join(gm[i].To, ","); got != want[0] {
			t.Errorf("message %d: the gmail.test upstream got %s, want %s", i, got, want[0])
		}
		if got := strings.Join(om[i].To, ","); got != want[1] {
			t.Errorf("message %d: the sender's upstream got %s, want %s", i, got, want[1])
		}
		if !bytes.Equal(gm[i].Data, om[i].Data) {
			t.Errorf("message %d: the copies differ:\n%s\n---\n%s", i, gm[i].Data, om[i].Data)
		}
		verifyDKIM(t, d.txt, gm[i].Data)
		verifyDKIM(t, d.txt, om[i].Data)
	}
	if !bytes.Contains(gm[0].Data, []byte(" id "+qid+";")) && !bytes.Contains(gm[0].Data, []byte(" id "+qid+"\r\n")) {
		t.Errorf("the Received: field does not carry the 250's queue ID %s:\n%s", qid, gm[0].Data)
	}
	if !bytes.Contains(gm[1].Data, []byte("Message-ID: <"+qid2+"@relay.test>")) {
		t.Errorf("the generated Message-ID is not the 250's queue ID %s:\n%s", qid2, gm[1].Data)
	}

	// trace by Message-ID: two queue IDs, each accepted with its route and recipients.
	heads, events := traceText(t, state, "split@example.com")
	if len(heads) != 2 || heads[qid] == "" {
		t.Fatalf("trace: %d messages %v, want 2 including %s", len(heads), heads, qid)
	}
	for id, ev := range events {
		if strings.Join(ev, ",") != "accepted,attempt,delivered" {
			t.Errorf("trace %s: %v", id, ev)
		}
	}
	js := traceJSON(t, state, "split@example.com")
	var routes []string
	for id, evs := range js {
		acc := evs[0]
		routes = append(routes, strings.Join(acc.Route, ",")+":"+strings.Join(acc.Recipients, ","))
		if want := map[bool]string{true: "up2", false: "up1"}[id == qid]; strings.Join(acc.Route, ",") != want {
			t.Errorf("accepted %s: route %v, want %s (the 250 names the first recipient's group)", id, acc.Route, want)
		}
		if strings.Join(acc.DKIM, ",") != "rsa1,ed1" || acc.MessageID != "split@example.com" {
			t.Errorf("accepted %s: %+v", id, acc)
		}
	}
	slices.Sort(routes)
	if got := strings.Join(routes, " "); got != "up1:r2@other.test up2:r1@gmail.test" {
		t.Errorf("accepted events: %s", got)
	}
}
