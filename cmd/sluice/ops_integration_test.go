package main

// Operations, end to end with the real binary: bounces and their DSNs,
// expiry, the queue commands against a running daemon, the webhook, the
// HTTP endpoints, SIGHUP and SIGTERM, and a full disk. Each test is one
// property an operator relies on, checked the way an operator would check
// it: through SMTP replies, what the upstream received, `sluice queue`,
// /metrics and the log.

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

// opsOpts fills opsYAML. Zero values: state under the env's dir, 5s
// shutdown, breaker_backoff 1s, no extra users or queue settings.
type opsOpts struct {
	upPort   int
	backoff  string // upstream breaker_backoff
	queue    string // extra lines under queue:, indented two spaces
	users    string // extra entries under users:
	stateDir string
	shutdown string
	extra    string // appended at the end (e.g. a broken key)
}

// opsYAML: one STARTTLS listener, HTTP on a kernel-chosen port (the daemon
// logs `msg="http listening" address=…`), one upstream. The default policy
// also allows the null sender, so tests can submit bounces' kind of mail.
const opsYAML = `state_dir: %s
shutdown_timeout: %s
{{BASE}}
users:
{{APP}}
%spolicies:
  default:
    allowed_senders: ["*@example.com", "<>"]
queue:
  retry: [300ms]
%shttp:
  address: 127.0.0.1:0
upstreams:
  - name: up1
    host: 127.0.0.1
    ports: [%d]
    tls: none
    breaker_backoff: %s
%s`

func (e *env) opsConfig(o opsOpts) string {
	if o.stateDir == "" {
		o.stateDir = "{{DIR}}/state"
	}
	if o.shutdown == "" {
		o.shutdown = "5s"
	}
	if o.backoff == "" {
		o.backoff = "1s"
	}
	return e.config(fmt.Sprintf(opsYAML, o.stateDir, o.shutdown, o.users, o.queue, o.upPort, o.backoff, o.extra))
}

// opsQueueList runs `sluice queue list --json` and decodes every line.
func opsQueueList(t *testing.T, cfg string) []map[string]any {
	t.Helper()
	out, stderr, code := runCmd(t, "", "queue", "list", "--json", "-c", cfg)
	if code != 0 {
		t.Fatalf("queue list: exit %d: %s", code, stderr)
	}
	var list []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("queue list --json line %q: %v", sc.Text(), err)
		}
		list = append(list, m)
	}
	return list
}

func opsQueueEntry(list []map[string]any, id string) map[string]any {
	for _, m := range list {
		if m["id"] == id {
			return m
		}
	}
	return nil
}

// opsQueueCmd runs `sluice queue ARGS -c cfg` and fails the test unless it exits 0.
func opsQueueCmd(t *testing.T, cfg string, args ...string) string {
	t.Helper()
	out, stderr, code := runCmd(t, "", append(append([]string{"queue"}, args...), "-c", cfg)...)
	if code != 0 {
		t.Fatalf("sluice queue %v: exit %d\n%s%s", args, code, out, stderr)
	}
	return out
}

// opsReport is a parsed DSN: the top-level headers and the delivery-status
// part's per-recipient field groups.
type opsReport struct {
	header      mail.Header
	contentType string
	reportType  string
	text        string
	perMessage  textproto.MIMEHeader
	rcpts       []textproto.MIMEHeader
	origHeaders string
}

func opsParseReport(t *testing.T, data []byte) opsReport {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("DSN does not parse as a message: %v\n%s", err, data)
	}
	r := opsReport{header: msg.Header}
	ct, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("DSN Content-Type: %v\n%s", err, data)
	}
	r.contentType, r.reportType = ct, params["report-type"]
	if ct != "multipart/report" {
		return r
	}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("DSN multipart: %v\n%s", err, data)
		}
		body, _ := io.ReadAll(part)
		pct, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		switch pct {
		case "text/plain":
			r.text = string(body)
		case "message/delivery-status":
			tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
			for i := 0; ; i++ {
				h, err := tr.ReadMIMEHeader()
				if len(h) > 0 {
					if i == 0 {
						r.perMessage = h
					} else {
						r.rcpts = append(r.rcpts, h)
					}
				}
				if err != nil {
					break
				}
			}
		case "text/rfc822-headers", "message/rfc822":
			r.origHeaders = string(body)
		}
	}
	return r
}

// rcpt returns the recipient group whose Final-Recipient names addr.
func (r opsReport) rcpt(addr string) textproto.MIMEHeader {
	for _, h := range r.rcpts {
		if strings.Contains(strings.ToLower(h.Get("Final-Recipient")), strings.ToLower(addr)) {
			return h
		}
	}
	return nil
}

// TestOpsBounceDSN: a 550 at RCPT for one of two recipients delivers the
// message to the other and a DSN to the envelope sender, from <>, as
// multipart/report naming the recipient, the 5.x.x status and the
// upstream's own text.
func TestOpsBounceDSN(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{}), failRcpt("bad@example.org", 550, [3]int{5, 1, 1}, "mailbox bad@example.org does not exist here"))

	id := d.mustSend("dsn1", "one fails", "good@example.org", "bad@example.org")
	msgs := d.up.WaitMessages(t, 2, 20*time.Second)
	var orig, dsn *testsmtp.Message
	for i := range msgs {
		if msgs[i].From == "" {
			dsn = &msgs[i]
		} else {
			orig = &msgs[i]
		}
	}
	if orig == nil || dsn == nil {
		t.Fatalf("want the original and a DSN from <>, got %+v", msgs)
	}
	if len(orig.To) != 1 || orig.To[0] != "good@example.org" {
		t.Errorf("original delivered to %v, want only good@example.org", orig.To)
	}
	if len(dsn.To) != 1 || dsn.To[0] != "app@example.com" {
		t.Errorf("DSN envelope recipients %v, want the original sender app@example.com", dsn.To)
	}
	r := opsParseReport(t, dsn.Data)
	if r.contentType != "multipart/report" || r.reportType != "delivery-status" {
		t.Fatalf("DSN Content-Type %s report-type=%s, want multipart/report; report-type=delivery-status\n%s", r.contentType, r.reportType, dsn.Data)
	}
	if !strings.Contains(r.header.Get("To"), "app@example.com") {
		t.Errorf("DSN To: %q, want the original sender", r.header.Get("To"))
	}
	if r.perMessage.Get("X-Sluice-Queue-Id") != id {
		t.Errorf("DSN X-Sluice-Queue-ID %q, want %s", r.perMessage.Get("X-Sluice-Queue-Id"), id)
	}
	if len(r.rcpts) != 1 {
		t.Fatalf("DSN has %d recipient groups, want 1 (only the failed one):\n%s", len(r.rcpts), dsn.Data)
	}
	h := r.rcpt("bad@example.org")
	if h == nil {
		t.Fatalf("DSN does not name bad@example.org:\n%s", dsn.Data)
	}
	if st := h.Get("Status"); st != "5.1.1" {
		t.Errorf("Status %q, want 5.1.1 (the upstream's enhanced code)", st)
	}
	if a := h.Get("Action"); a != "failed" {
		t.Errorf("Action %q, want failed", a)
	}
	if d := h.Get("Diagnostic-Code"); !strings.Contains(d, "550") || !strings.Contains(d, "does not exist here") {
		t.Errorf("Diagnostic-Code %q lacks the upstream's reply", d)
	}
	if !strings.Contains(r.text, "bad@example.org") || !strings.Contains(r.text, "does not exist here") {
		t.Errorf("human-readable part does not explain the failure:\n%s", r.text)
	}
	if !strings.Contains(r.origHeaders, "Message-ID: <dsn1@example.com>") {
		t.Errorf("DSN does not return the original headers:\n%s", r.origHeaders)
	}
}

// TestOpsNullSenderNoDSN: a message from <> that fails is not bounced
// (no report loops). A later failing message with a real sender does get
// its DSN, so the upstream's single message proves the first made none.
func TestOpsNullSenderNoDSN(t *testing.T) {
	t.Parallel()
	// The control goes to another address: the first bounce suppresses gone@.
	d := launch(t, opsCfg(opsOpts{}), failRcpt("gone@example.org", 550, [3]int{5, 1, 1}, "no such user"), failRcpt("gone2@example.org", 550, [3]int{5, 1, 1}, "no such user"))

	nullID, err := send(d.addrs["submission"], d.tlsConfig(), "app", "", []string{"gone@example.org"},
		message("app@example.com", "gone@example.org", "null1", "from <>"))
	if err != nil {
		t.Fatalf("null sender submission (policy allows <>): %v", err)
	}
	if !d.waitLog("no report for a null-sender message", 20*time.Second) {
		t.Fatalf("no log line about the dropped report for %s", nullID)
	}
	ctlID := d.mustSend("ctl1", "control", "gone2@example.org")
	d.up.WaitMessages(t, 1, 20*time.Second)
	// An empty queue has nothing left to deliver: what arrived is all.
	waitFor(t, 10*time.Second, "an empty queue", func() bool { return len(opsQueueList(t, d.cfg)) == 0 })
	msgs := d.up.Messages()
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want only the control DSN", len(msgs))
	}
	r := opsParseReport(t, msgs[0].Data)
	if msgs[0].From != "" || r.perMessage.Get("X-Sluice-Queue-Id") != ctlID {
		t.Errorf("the one message is not the control DSN (from %q, queue id %q, want %s); null-sender message %s was bounced?",
			msgs[0].From, r.perMessage.Get("X-Sluice-Queue-Id"), ctlID, nullID)
	}
}

// TestOpsExpiry: with the upstream down, a message older than
// queue.max_age expires (Status 4.4.7) and its DSN reaches the sender once
// the upstream is back.
func TestOpsExpiry(t *testing.T) {
	t.Parallel()
	// A short breaker_backoff: the DSN has max_age too, and must not wait
	// behind a breaker doubled during the outage for longer than that.
	d := launch(t, opsCfg(opsOpts{backoff: "100ms", queue: "  max_age: 3s\n"}), refused)

	id := d.mustSend("exp1", "will expire")
	if !d.waitLog("msg=expired queue_id="+id, 15*time.Second) {
		t.Fatalf("message %s did not expire", id)
	}
	if len(d.up.Messages()) != 0 {
		t.Fatal("the upstream received mail while refusing connections")
	}
	d.up.SetMode(testsmtp.Serve)
	msgs := d.up.WaitMessages(t, 1, 15*time.Second)
	if msgs[0].From != "" || len(msgs[0].To) != 1 || msgs[0].To[0] != "app@example.com" {
		t.Fatalf("want a DSN from <> to app@example.com, got from %q to %v", msgs[0].From, msgs[0].To)
	}
	r := opsParseReport(t, msgs[0].Data)
	h := r.rcpt("r@example.org")
	if r.contentType != "multipart/report" || h == nil {
		t.Fatalf("not a report naming r@example.org:\n%s", msgs[0].Data)
	}
	if h.Get("Status") != "4.4.7" || h.Get("Action") != "failed" {
		t.Errorf("Status %q Action %q, want 4.4.7 failed", h.Get("Status"), h.Get("Action"))
	}
	if h.Get("Diagnostic-Code") == "" {
		t.Error("an expiry report should carry the last error as Diagnostic-Code")
	}
	for _, m := range d.up.Messages() {
		if m.From != "" {
			t.Errorf("the expired message itself was delivered (from %q)", m.From)
		}
	}
}

// TestOpsQueueCommands: against a running daemon, `queue list --json`
// shows a deferred message with the DESIGN §7 fields; hold stops delivery
// (retry does not override it); release + retry delivers; delete bounces
// the pending recipients, delete --silent does not. A sentinel message
// deferred with them shows when the held one would have gone.
func TestOpsQueueCommands(t *testing.T) {
	t.Parallel()
	// Down with a temporary reply rather than refused connections: a
	// refusing upstream's breaker doubles its backoff for as long as the
	// outage lasts, which would only make this test wait.
	d := launch(t, opsCfg(opsOpts{}), failAt(testsmtp.StageMail, 451, [3]int{4, 3, 0}, "mailbox service temporarily unavailable"))

	ids := map[string]string{}
	for _, n := range []string{"held", "deleted", "silent", "sentinel"} {
		id, err := send(d.addrs["submission"], d.tlsConfig(), "app", "app@example.com", []string{n + "@example.org"},
			message("app@example.com", n+"@example.org", "q-"+n, n))
		if err != nil {
			t.Fatal(err)
		}
		ids[n] = id
	}
	var list []map[string]any
	waitFor(t, 15*time.Second, "four deferred messages in `queue list`", func() bool {
		list = opsQueueList(t, d.cfg)
		if len(list) != 4 {
			return false
		}
		for _, m := range list {
			if a, _ := m["attempts"].(float64); a < 1 || m["last_error"] == "" {
				return false
			}
		}
		return true
	})
	// The daemon is up and working by now (the socket is bound by the
	// queue's Run, after the listeners log; see the report).
	if fi, err := os.Stat(filepath.Join(d.dir, "state", "control.sock")); err != nil {
		t.Errorf("control socket: %v", err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode %v, want 0600 so only the service user and root act on the queue", fi.Mode())
	}
	m := opsQueueEntry(list, ids["held"])
	if m == nil {
		t.Fatalf("queue list lacks %s: %v", ids["held"], list)
	}
	for _, k := range []string{"id", "sender", "recipients", "age_seconds", "attempts", "next_attempt", "last_error", "held"} {
		if _, ok := m[k]; !ok {
			t.Errorf("queue list --json lacks %q: %v", k, m)
		}
	}
	if m["sender"] != "app@example.com" || m["held"] != false {
		t.Errorf("sender %v held %v, want app@example.com false", m["sender"], m["held"])
	}
	if rc, _ := m["recipients"].([]any); len(rc) != 1 {
		t.Errorf("recipients %v, want one", m["recipients"])
	} else if r, _ := rc[0].(map[string]any); r["address"] != "held@example.org" || r["state"] != "pending" {
		t.Errorf("recipient %v, want held@example.org pending", r)
	}
	if _, err := time.Parse(time.RFC3339, fmt.Sprint(m["next_attempt"])); err != nil {
		t.Errorf("next_attempt %v of a deferred message is not a time: %v", m["next_attempt"], err)
	}
	if age, _ := m["age_seconds"].(float64); age < 0 || age > 60 {
		t.Errorf("age_seconds %v", m["age_seconds"])
	}
	if table, _, code := runCmd(t, "", "queue", "list", "-c", d.cfg); code != 0 || !strings.Contains(table, ids["held"]) {
		t.Errorf("queue list (table): exit %d\n%s", code, table)
	}

	opsQueueCmd(t, d.cfg, "hold", ids["held"])
	opsQueueCmd(t, d.cfg, "delete", ids["deleted"])
	opsQueueCmd(t, d.cfg, "delete", ids["silent"], "--silent")
	list = opsQueueList(t, d.cfg)
	if m := opsQueueEntry(list, ids["held"]); m == nil || m["held"] != true {
		t.Errorf("after hold: %v, want held true", m)
	}
	for _, n := range []string{"deleted", "silent"} {
		if opsQueueEntry(list, ids[n]) != nil {
			t.Errorf("after delete, %s (%s) is still listed", n, ids[n])
		}
	}
	heldAttempts := opsQueueEntry(list, ids["held"])["attempts"]
	// retry must not release a held message, alone or with --all.
	opsQueueCmd(t, d.cfg, "retry", ids["held"])
	d.up.ClearFailures()
	opsQueueCmd(t, d.cfg, "retry", "--all")
	// The sentinel and the bounce were due with the held message; once
	// only the held one is left, it had its chance and did not take it.
	d.up.WaitMessages(t, 2, 15*time.Second)
	waitFor(t, 15*time.Second, "only the held message in the queue", func() bool { return len(opsQueueList(t, d.cfg)) == 1 })
	if m := opsQueueEntry(opsQueueList(t, d.cfg), ids["held"]); m == nil || m["held"] != true || m["attempts"] != heldAttempts {
		t.Errorf("held message after retry and retry --all: %v, want held with %v attempts", m, heldAttempts)
	}
	msgs := d.up.Messages()
	if len(msgs) != 2 {
		t.Fatalf("upstream got %d messages, want the sentinel and the deleted message's bounce (held must stay, --silent sends none)", len(msgs))
	}
	var bounce *testsmtp.Message
	for i, m := range msgs {
		if m.From == "" {
			bounce = &msgs[i]
		} else if messageIDs(m)["q-sentinel@example.com"] != 1 {
			t.Fatalf("a message other than the sentinel and the bounce went upstream:\n%s", m.Data)
		}
	}
	if bounce == nil {
		t.Fatal("no bounce for the deleted message")
	}
	r := opsParseReport(t, bounce.Data)
	if r.perMessage.Get("X-Sluice-Queue-Id") != ids["deleted"] || r.rcpt("deleted@example.org") == nil {
		t.Fatalf("the message is not the deleted message's bounce:\n%s", bounce.Data)
	}
	if st := r.rcpt("deleted@example.org").Get("Status"); !strings.HasPrefix(st, "5.") {
		t.Errorf("bounce for a deleted message: Status %q, want 5.x.x", st)
	}

	// release makes the message due at once (docs/queue.md), so a retry
	// right after it may find the message already delivered.
	opsQueueCmd(t, d.cfg, "release", ids["held"])
	msgs = d.up.WaitMessages(t, 3, 15*time.Second)
	if got := messageIDs(msgs[2]); got["q-held@example.com"] != 1 {
		t.Errorf("second delivery is not the released message: %v", got)
	}
	waitFor(t, 10*time.Second, "an empty queue", func() bool { return len(opsQueueList(t, d.cfg)) == 0 })
}

// TestOpsWebhook: a receiver that fails its first requests still gets
// exactly one signed event per bounced recipient, with the §7 fields.
func TestOpsWebhook(t *testing.T) {
	t.Parallel()
	const secret = "webhook s3cret"
	var (
		mu       sync.Mutex
		requests int
		events   []map[string]any
	)
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		mu.Lock()
		defer mu.Unlock()
		requests++
		if got := r.Header.Get("X-Sluice-Signature"); !hmac.Equal([]byte(got), []byte(want)) {
			t.Errorf("X-Sluice-Signature %q, want %q", got, want)
		}
		if requests <= 3 {
			http.Error(w, "receiver not ready", http.StatusInternalServerError)
			return
		}
		var ev map[string]any
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("webhook body is not JSON: %v: %s", err, body)
		}
		events = append(events, ev)
	}))
	t.Cleanup(hook.Close)

	d := launch(t, opsCfg(opsOpts{queue: fmt.Sprintf("  webhook: %s/hook\n  webhook_secret: %q\n", hook.URL, secret)}),
		failRcpt("bad1@example.org", 550, [3]int{5, 1, 1}, "unknown user bad1@example.org"),
		failRcpt("bad2@example.org", 550, [3]int{5, 1, 1}, "unknown user bad2@example.org"))
	began := time.Now()
	id := d.mustSend("hook1", "two bounce", "ok@example.org", "bad1@example.org", "bad2@example.org")
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(events) }
	waitFor(t, 20*time.Second, "two accepted webhook events", func() bool { return count() >= 2 })
	// An event is posted until accepted, then its spool file goes: with
	// the webhook spool empty, no duplicate can follow.
	hooks := filepath.Join(d.dir, "state", "spool", "webhook")
	waitFor(t, 10*time.Second, "an empty webhook spool", func() bool {
		des, err := os.ReadDir(hooks)
		return err == nil && len(des) == 0
	})
	mu.Lock()
	defer mu.Unlock()
	if requests < 5 {
		t.Errorf("%d requests; the three refused ones must have been retried", requests)
	}
	if len(events) != 2 {
		t.Fatalf("%d events accepted, want exactly one per bounced recipient (2): %v", len(events), events)
	}
	seen := map[string]bool{}
	for _, ev := range events {
		for _, k := range []string{"event", "queue_id", "sender", "recipient", "status", "diagnostic", "time"} {
			if _, ok := ev[k]; !ok {
				t.Errorf("event lacks %q: %v", k, ev)
			}
		}
		rcpt, _ := ev["recipient"].(string)
		seen[rcpt] = true
		if ev["event"] != "bounced" || ev["queue_id"] != id || ev["sender"] != "app@example.com" || ev["status"] != "5.1.1" {
			t.Errorf("event %v, want bounced, queue_id %s, sender app@example.com, status 5.1.1", ev, id)
		}
		if d, _ := ev["diagnostic"].(string); !strings.Contains(d, "unknown user "+rcpt) {
			t.Errorf("diagnostic %q lacks the upstream's reply for %s", d, rcpt)
		}
		if ts, err := time.Parse(time.RFC3339, fmt.Sprint(ev["time"])); err != nil || ts.Before(began.Add(-time.Minute)) || ts.After(time.Now().Add(time.Minute)) {
			t.Errorf("time %v: %v", ev["time"], err)
		}
	}
	if !seen["bad1@example.org"] || !seen["bad2@example.org"] {
		t.Errorf("events for %v, want bad1 and bad2", seen)
	}
	if strings.Contains(d.stderr.String(), secret) {
		t.Error("the log contains the webhook secret")
	}
}

// TestOpsMetrics: /metrics counts a scripted run exactly; /healthz and
// /readyz answer 200 while all is well.
func TestOpsMetrics(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{}))
	h := d.httpAddr()

	c, err := login(d.addrs["submission"], d.tlsConfig(), nil, "app", password)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < 3; i++ {
		id, err := transact(c, "app@example.com", []string{"r@example.org"}, message("app@example.com", "r@example.org", fmt.Sprintf("m%d", i), "counted"))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := c.Mail("intruder@elsewhere.example", nil); replyCode(err) != "550 5.7.1" {
		t.Fatalf("sender outside allowed_senders: %v, want 550 5.7.1", err)
	}
	c.Quit()
	const wrongPW = "wrong-pw-7f3a9"
	if got, _ := authAttempt(d.addrs["submission"], d.tlsConfig(), nil, "app", wrongPW); got != "535 5.7.8" {
		t.Fatalf("wrong password: %s, want 535 5.7.8", got)
	}
	d.up.WaitMessages(t, 3, 20*time.Second)

	var m map[string]float64
	waitFor(t, 10*time.Second, "delivered 3 and an empty queue in /metrics", func() bool {
		m = readMetrics(t, h)
		return m[`sluice_messages_delivered_total{upstream="up1"}`] == 3 && m["sluice_queue_messages"] == 0
	})
	want := map[string]float64{
		"sluice_messages_accepted_total":                  3,
		`sluice_messages_rejected_total{reason="sender"}`: 1,
		`sluice_messages_delivered_total{upstream="up1"}`: 3,
		"sluice_auth_failures_total":                      1,
		"sluice_messages_bounced_total":                   0,
		"sluice_queue_messages":                           0,
		`sluice_upstream_up{upstream="up1"}`:              1,
	}
	for k, v := range want {
		got, ok := m[k]
		if !ok && v != 0 {
			t.Errorf("%s missing from /metrics", k)
		} else if got != v {
			t.Errorf("%s = %v, want %v", k, got, v)
		}
	}
	if m[`sluice_messages_deferred_total{upstream="up1"}`] != 0 {
		t.Errorf("deferred %v, want 0", m[`sluice_messages_deferred_total{upstream="up1"}`])
	}
	if code, _ := httpGet(t, "http://"+h+"/healthz"); code != 200 {
		t.Errorf("/healthz %d, want 200", code)
	}
	if code, body := httpGet(t, "http://"+h+"/readyz"); code != 200 {
		t.Errorf("/readyz %d %q, want 200", code, body)
	}

	// The log follows a message by queue_id from its session (cid) to its
	// delivery, and holds no password, right or wrong, nor a hash.
	logs := d.stderr.String()
	if !regexp.MustCompile(`msg=accepted cid=\S+ .*queue_id=` + ids[0]).MatchString(logs) {
		t.Errorf("no `accepted` line with cid and queue_id=%s", ids[0])
	}
	if !strings.Contains(logs, "msg=delivered queue_id="+ids[0]) {
		t.Errorf("no `delivered` line for queue_id=%s", ids[0])
	}
	for _, secret := range []string{password, wrongPW, d.hash} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains a secret %q", secret)
		}
	}
}

// TestOpsReadyzBreakerOpen: /readyz answers 503 while the only upstream's
// breaker is open; /healthz (liveness) stays 200; `sluice upstreams` says
// open.
func TestOpsReadyzBreakerOpen(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{backoff: "1m"}), refused)
	h := d.httpAddr()
	// The spool is recovered in the background (503 "recovering" meanwhile).
	waitFor(t, 15*time.Second, "/readyz 200 before any failure", func() bool {
		code, _ := httpGet(t, "http://"+h+"/readyz")
		return code == http.StatusOK
	})
	d.mustSend("brk", "x")
	waitFor(t, 15*time.Second, "/readyz 503", func() bool {
		code, _ := httpGet(t, "http://"+h+"/readyz")
		return code == http.StatusServiceUnavailable
	})
	if code, _ := httpGet(t, "http://"+h+"/healthz"); code != 200 {
		t.Errorf("/healthz %d while the breaker is open, want 200 (the process is alive)", code)
	}
	if v := readMetrics(t, h)[`sluice_upstream_up{upstream="up1"}`]; v != 0 {
		t.Errorf("sluice_upstream_up = %v with the breaker open, want 0", v)
	}
	waitFor(t, 10*time.Second, "`sluice upstreams` to show the open breaker", func() bool {
		out, _, code := runCmd(t, "", "upstreams", "-c", d.cfg)
		return code == 0 && strings.Contains(out, "up1") && strings.Contains(out, "open")
	})
}

// TestOpsReload: SIGHUP adds a user at once while a session authenticated
// before the reload completes its message after it; a broken file on
// SIGHUP is refused, logged, and the relay keeps serving the old config.
func TestOpsReload(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{}))
	o := opsOpts{upPort: d.up.Port()}
	addr := d.addrs["submission"]

	if _, err := send(addr, d.tlsConfig(), "app2", "app@example.com", []string{"r@example.org"}, "x"); replyCode(err) != "535 5.7.8" {
		t.Fatalf("app2 before it exists: %v, want 535 5.7.8", err)
	}
	old, err := d.openRcpt("r@example.org")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	o.users = "  - name: app2\n    password_hash: \"{{HASH}}\"\n"
	d.opsConfig(o)
	d.reload("msg=reloaded")
	if _, err := send(addr, d.tlsConfig(), "app2", "app@example.com", []string{"r@example.org"}, message("app@example.com", "r@example.org", "new-user", "x")); err != nil {
		t.Fatalf("new user right after reload: %v", err)
	}
	if _, err := sendData(old, message("app@example.com", "r@example.org", "old-session", "x")); err != nil {
		t.Fatalf("session opened before the reload: %v", err)
	}
	old.Quit()

	o.extra = "no_such_key: true\n"
	d.opsConfig(o)
	d.reload("reload refused")
	if !strings.Contains(d.stderr.String(), "no_such_key") {
		t.Error("the refusal does not name the bad key")
	}
	for _, u := range []string{"app", "app2"} {
		if _, err := send(addr, d.tlsConfig(), u, "app@example.com", []string{"r@example.org"}, message("app@example.com", "r@example.org", "after-broken-"+u, "x")); err != nil {
			t.Errorf("%s after a refused reload: %v", u, err)
		}
	}
	got := map[string]int{}
	for _, m := range d.up.WaitMessages(t, 4, 20*time.Second) {
		for id, n := range messageIDs(m) {
			got[id] += n
		}
	}
	for _, id := range []string{"new-user", "old-session", "after-broken-app", "after-broken-app2"} {
		if got[id+"@example.com"] != 1 {
			t.Errorf("%s delivered %d times, want 1", id, got[id+"@example.com"])
		}
	}
}

// TestOpsShutdown: SIGTERM stops accepting, lets an open session finish
// its message, exits 0 within shutdown_timeout, leaves undelivered mail in
// the spool (queue list shows it) and a restart delivers it.
func TestOpsShutdown(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{shutdown: "3s"}), refused)
	const shutdown = 3 * time.Second
	addr := d.addrs["submission"]
	want := map[string]bool{}
	for i := 0; i < 2; i++ {
		id := fmt.Sprintf("term%d", i)
		d.mustSend(id, "x")
		want[id+"@example.com"] = true
	}
	open, err := d.openRcpt("r@example.org")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	sent := time.Now()
	d.term()
	if !d.waitLog("shutting down", 5*time.Second) {
		t.Fatal("no `shutting down` log line after SIGTERM")
	}
	waitFor(t, 2*time.Second, "the listener to stop accepting", func() bool {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if _, err := sendData(open, message("app@example.com", "r@example.org", "inflight", "x")); err != nil {
		t.Errorf("a session open at SIGTERM could not finish its message: %v", err)
	} else {
		want["inflight@example.com"] = true
	}
	open.Quit()
	// Slack on top of shutdown_timeout for process exit under -race.
	if code := d.wait(shutdown + 2*time.Second); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if took := time.Since(sent); took > shutdown+time.Second {
		t.Errorf("exit took %v, more than shutdown_timeout %v", took, shutdown)
	}

	list := opsQueueList(t, d.cfg)
	if len(list) != len(want) {
		t.Fatalf("queue list after exit shows %d messages, want %d: %v", len(list), len(want), list)
	}
	d.up.SetMode(testsmtp.Serve)
	d.serve()
	got := messageIDs(d.up.WaitMessages(t, len(want), 20*time.Second)...)
	for id := range want {
		if got[id] == 0 {
			t.Errorf("%s was not delivered after the restart", id)
		}
	}
}

// TestOpsDiskFloor: with queue.min_free_space above the free space of
// state_dir, new mail gets 451 4.3.0, nothing is spooled and /readyz is 503.
func TestOpsDiskFloor(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{queue: "  min_free_space: 1000000GB\n"}))
	_, err := d.sendMsg("floor", "x")
	if replyCode(err) != "451 4.3.0" {
		t.Fatalf("below min_free_space: %v, want 451 4.3.0", err)
	}
	if l := opsQueueList(t, d.cfg); len(l) != 0 {
		t.Errorf("queue holds %d messages after a 451", len(l))
	}
	if code, _ := httpGet(t, "http://"+d.httpAddr()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz %d below the free-space floor, want 503", code)
	}
	// The empty queue above is the proof that nothing goes upstream.
	if n := len(d.up.Messages()); n != 0 {
		t.Errorf("upstream got %d messages after a 451", n)
	}
}

// TestOpsDiskFull: state_dir on a real 4 MiB tmpfs. Large messages fill
// it until Sluice answers 451 4.3.0; every message answered 250 before is
// delivered once the upstream is back.
func TestOpsDiskFull(t *testing.T) {
	t.Parallel()
	// A floor below one message: the last messages find room by statfs but
	// run out while being written, so both refusal paths are exercised.
	d := launch(t, opsCfg(opsOpts{stateDir: "{{DIR}}/small/state", queue: "  min_free_space: 64KiB\n"}), onTmpfs("4m"), refused)

	accepted, refused := fillUntil451(t, d, 300, 40) // ~300 KB each
	if !refused {
		t.Fatalf("a 4 MiB spool accepted %d messages of 300 KB without a 451 4.3.0", len(accepted))
	}
	if len(accepted) == 0 {
		t.Fatal("nothing was accepted before the disk filled")
	}
	if l := opsQueueList(t, d.cfg); len(l) != len(accepted) {
		t.Errorf("queue list shows %d messages, %d were answered 250", len(l), len(accepted))
	}
	d.up.SetMode(testsmtp.Serve)
	got := messageIDs(d.up.WaitMessages(t, len(accepted), 30*time.Second)...)
	for id := range accepted {
		if got[id] == 0 {
			t.Errorf("lost after the disk filled: %s", id)
		}
	}
	t.Logf("%d messages of 300 KB accepted before 451 4.3.0; all delivered", len(accepted))
}

// TestOpsContribConfig: contrib/sluice.yaml, laid out as in /etc/sluice
// (users file, tls/, dkim/ beside it; secrets in the environment as the
// systemd unit provides them), passes `sluice check-config`, and `sluice
// dkim dns` prints its two records.
func TestOpsContribConfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := t.TempDir()
	example, err := os.ReadFile("../../contrib/sluice.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "sluice.yaml")
	for _, d := range []string{"tls", "dkim"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	for src, dst := range map[string]string{e.certFile: "tls/fullchain.pem", e.keyFile: "tls/privkey.pem"} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(cfg, example, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct{ sel, algo, file string }{{"s2026r", "rsa", "example.com.rsa.pem"}, {"s2026e", "ed25519", "example.com.ed25519.pem"}} {
		if _, stderr, code := runCmd(t, "", "dkim", "keygen", "--domain", "example.com", "--selector", k.sel, "--algo", k.algo, "--out", filepath.Join(dir, "dkim", k.file)); code != 0 {
			t.Fatalf("keygen %s: %s", k.sel, stderr)
		}
	}
	hash, stderr, code := runCmd(t, "billing secret\n", "passwd")
	if code != 0 {
		t.Fatalf("passwd: %s", stderr)
	}
	if err := os.WriteFile(filepath.Join(dir, "users"), []byte("billing-app:"+strings.TrimSpace(hash)+":transactional\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, int) {
		out, stderr, code := runCmdEnv(t, "", []string{"SES_SMTP_USER=AKIAEXAMPLE", "SES_SMTP_PASSWORD=ses-secret", "SENDGRID_API_KEY=SG.example"}, args...)
		return out + stderr, code
	}
	out, code := run("check-config", "-c", cfg)
	if code != 0 {
		t.Fatalf("contrib/sluice.yaml does not pass check-config (exit %d):\n%s", code, out)
	}
	for _, want := range []string{"relay.example.com", "email-smtp.eu-west-1.amazonaws.com", "smtp.sendgrid.net"} {
		if !strings.Contains(out, want) {
			t.Errorf("check-config summary lacks %q:\n%s", want, out)
		}
	}
	out, code = run("dkim", "dns", "-c", cfg)
	if code != 0 || strings.Count(out, "._domainkey.example.com. IN TXT") != 2 {
		t.Errorf("dkim dns on the example: exit %d, want two records:\n%s", code, out)
	}
}

// TestOpsReloadUpstreams: an upstream changed in the file (here its port,
// as after moving a provider or rotating to a new endpoint) is used after
// SIGHUP, like the users, keys and certificate are.
func TestOpsReloadUpstreams(t *testing.T) {
	t.Parallel()
	// Started first, so that its cleanup (which wants every session
	// closed) comes after the daemon's.
	newUp := testsmtp.Start(t, testsmtp.Options{})
	d := launch(t, opsCfg(opsOpts{}))
	oldUp := d.up
	d.opsConfig(opsOpts{upPort: newUp.Port()})
	d.reload("msg=reloaded")
	d.mustSend("moved", "x")
	waitFor(t, 10*time.Second, "the message at one of the upstreams", func() bool {
		return len(newUp.Messages())+len(oldUp.Messages()) > 0
	})
	if n := len(oldUp.Messages()); n != 0 {
		t.Errorf("after SIGHUP the message went to the upstream removed from the file (%d messages there)", n)
	}
	if len(newUp.Messages()) != 1 {
		t.Errorf("the upstream now in the file got %d messages, want 1", len(newUp.Messages()))
	}
}
