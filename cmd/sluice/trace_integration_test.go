package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// traceEvent is one line of `sluice trace --json`.
type traceEvent struct {
	Time       time.Time `json:"time"`
	Event      string    `json:"event"`
	QueueID    string    `json:"queue_id"`
	MessageID  string    `json:"message_id"`
	Sender     string    `json:"sender"`
	User       string    `json:"user"`
	IP         string    `json:"ip"`
	Listener   string    `json:"listener"`
	Recipients []string  `json:"recipients"`
	Size       int64     `json:"size"`
	DKIM       []string  `json:"dkim"`
	Route      []string  `json:"route"`
	Recipient  string    `json:"recipient"`
	Upstream   string    `json:"upstream"`
	Host       string    `json:"host"`
	Port       int       `json:"port"`
	TLS        string    `json:"tls"`
	Code       int       `json:"code"`
	Enhanced   string    `json:"enhanced"`
	Text       string    `json:"text"`
	DurationMS *int64    `json:"duration_ms"`
	DSNQueueID string    `json:"dsn_queue_id"`
}

// traceText runs `sluice trace` and returns, per queue ID, the header line
// and the event names in order.
func traceText(t *testing.T, stateDir, query string) (map[string]string, map[string][]string) {
	t.Helper()
	out, stderr, code := runCmd(t, "", "trace", query, "--state-dir", stateDir)
	if code != 0 {
		t.Fatalf("trace %s: exit %d: %s", query, code, stderr)
	}
	heads, events := map[string]string{}, map[string][]string{}
	cur := ""
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if !strings.HasPrefix(line, "  ") {
			cur = strings.Fields(line)[0]
			heads[cur] = line
			continue
		}
		f := strings.Fields(line)
		if _, err := time.Parse(time.RFC3339, f[0]); err != nil {
			t.Fatalf("event line does not start with an RFC 3339 time: %q", line)
		}
		events[cur] = append(events[cur], f[1])
	}
	return heads, events
}

func traceJSON(t *testing.T, stateDir, query string) map[string][]traceEvent {
	t.Helper()
	out, stderr, code := runCmd(t, "", "trace", "--json", query, "--state-dir", stateDir)
	if code != 0 {
		t.Fatalf("trace --json %s: exit %d: %s", query, code, stderr)
	}
	by := map[string][]traceEvent{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e traceEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		by[e.QueueID] = append(by[e.QueueID], e)
	}
	return by
}

// TestTraceTimelines: a delivered, a bounced and a deferred-then-delivered
// message each show their whole timeline in `sluice trace`, text and JSON,
// by queue ID, Message-ID (with and without <>), sender and recipient,
// with the daemon running and after it stopped.
func TestTraceTimelines(t *testing.T) {
	t.Parallel()
	d := launch(t, baseCfg, failRcpt("bad@example.org", 550, [3]int{5, 1, 1}, "no such user"), failRcptOnce("slow@example.org", 451, [3]int{4, 2, 0}, "try later"))
	state := filepath.Join(d.dir, "state")

	type msg struct {
		rcpt, mid, qid string
		code           int // of the first attempt
		timeline       []string
	}
	msgs := []*msg{
		{rcpt: "ok@example.org", mid: "tr-ok", code: 250, timeline: []string{"accepted", "attempt", "delivered"}},
		{rcpt: "bad@example.org", mid: "tr-bad", code: 550, timeline: []string{"accepted", "attempt", "bounced", "dsn_sent"}},
		{rcpt: "slow@example.org", mid: "tr-slow", code: 451, timeline: []string{"accepted", "attempt", "deferred", "attempt", "delivered"}},
	}
	for _, m := range msgs {
		qid := d.mustSend(m.mid, "trace me", m.rcpt)
		m.qid = qid
	}
	d.up.WaitMessages(t, 3, 20*time.Second) // two messages and the bounce
	waitQueueEmpty(t, d.env)

	check := func(t *testing.T) {
		for _, m := range msgs {
			for _, q := range []string{m.qid, strings.ToLower(m.qid), "<" + m.mid + "@example.com>", m.mid + "@example.com", m.rcpt, strings.ToUpper(m.rcpt)} {
				heads, events := traceText(t, state, q)
				if want := fmt.Sprintf("%s <%s@example.com> from app@example.com", m.qid, m.mid); heads[m.qid] != want {
					t.Errorf("trace %s: header %q, want %q", q, heads[m.qid], want)
				}
				if got := strings.Join(events[m.qid], ","); got != strings.Join(m.timeline, ",") {
					t.Errorf("trace %s: events %s, want %s", q, got, strings.Join(m.timeline, ","))
				}
			}
			js := traceJSON(t, state, m.mid+"@example.com")[m.qid]
			if len(js) != len(m.timeline) {
				t.Fatalf("trace --json %s: %d events, want %d", m.mid, len(js), len(m.timeline))
			}
			acc := js[0]
			if acc.Event != "accepted" || acc.User != "app" || acc.IP != "127.0.0.1" || acc.Listener != "submission" ||
				strings.Join(acc.Recipients, ",") != m.rcpt || acc.Size == 0 || strings.Join(acc.DKIM, ",") != "rsa1,ed1" ||
				acc.Sender != "app@example.com" || acc.MessageID != m.mid+"@example.com" {
				t.Errorf("accepted event %+v", acc)
			}
			at := js[1]
			if at.Event != "attempt" || at.Recipient != m.rcpt || at.Upstream != "up1" || at.Host != "127.0.0.1" ||
				at.Port != d.up.Port() || at.TLS != "none" || at.DurationMS == nil || at.Code != m.code {
				t.Errorf("attempt event %+v, want code %d", at, m.code)
			}
			for i := 1; i < len(js); i++ {
				if js[i].Time.Before(js[i-1].Time) {
					t.Errorf("%s: events out of order: %v", m.mid, js)
				}
			}
		}
		// The reply codes the upstream gave.
		bad := traceJSON(t, state, "bad@example.org")[msgs[1].qid]
		if b := bad[2]; b.Code != 550 || b.Enhanced != "5.1.1" || b.Text != "no such user" || b.Upstream != "up1" {
			t.Errorf("bounced event %+v", b)
		}
		if d := bad[3]; d.Recipient != "bad@example.org" || len(d.DSNQueueID) != 16 {
			t.Errorf("dsn_sent event %+v", d)
		}
		slow := traceJSON(t, state, "slow@example.org")[msgs[2].qid]
		if d := slow[2]; d.Code != 451 || d.Enhanced != "4.2.0" || d.Text != "try later" {
			t.Errorf("deferred event %+v", d)
		}
		if d := slow[4]; d.Code != 250 || d.Upstream != "up1" {
			t.Errorf("delivered event %+v", d)
		}
		// The sender finds its three messages and the bounce sent to it.
		heads, _ := traceText(t, state, "app@example.com")
		if len(heads) != 4 {
			t.Errorf("trace by sender: %d messages, want 4 (three and the DSN): %v", len(heads), heads)
		}
		// Nothing matched: exit 1; usage: exit 2.
		if _, stderr, code := runCmd(t, "", "trace", "nobody@example.org", "--state-dir", state); code != 1 || !strings.Contains(stderr, "no message matches") {
			t.Errorf("unknown address: exit %d, %q", code, stderr)
		}
		if _, _, code := runCmd(t, "", "trace", "--state-dir", state); code != 2 {
			t.Errorf("no query: exit %d, want 2", code)
		}
		if _, _, code := runCmd(t, "", "trace", "x@y", "--since", "soon", "--state-dir", state); code != 2 {
			t.Errorf("bad --since: exit %d, want 2", code)
		}
		if _, _, code := runCmd(t, "", "trace", msgs[0].qid, "--since", "1h", "--state-dir", state); code != 0 {
			t.Errorf("--since 1h: exit %d, want 0", code)
		}
	}
	t.Run("daemon running", check)
	if code := d.stop(15 * time.Second); code != 0 {
		t.Fatalf("serve exited %d", code)
	}
	t.Run("no daemon", check)
	// -c reads state_dir from the configuration.
	if out, _, code := runCmd(t, "", "trace", "-c", d.cfg, msgs[0].qid); code != 0 || !strings.Contains(out, "delivered") {
		t.Errorf("trace -c: exit %d\n%s", code, out)
	}
}

// TestJournalKill9: the accepted event is in the journal as soon as the
// client has its 250, even when sluice is killed at once.
func TestJournalKill9(t *testing.T) {
	t.Parallel()
	d := launch(t, baseCfg, refused)
	qid := d.mustSend("k9j", "kill")
	d.kill()
	state := filepath.Join(d.dir, "state")
	for _, when := range []string{"after kill -9", "after restart"} {
		_, events := traceText(t, state, "<k9j@example.com>")
		if len(events[qid]) == 0 || events[qid][0] != "accepted" {
			t.Fatalf("%s: events %v, want accepted first", when, events)
		}
		if when == "after kill -9" {
			d.serve() // seals the segment the kill left open
		}
	}
}
