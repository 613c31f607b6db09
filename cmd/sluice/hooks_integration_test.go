package main

// Provider webhooks end to end with the real binary: each provider's
// documented sample payload (hooks/testdata) is posted to /hooks/…; a wrong
// or missing token changes nothing; a hard bounce reaches the original
// sender as one DSN however often it is posted, and the recipient is then
// refused at RCPT until `sluice suppression remove`.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testredis"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

const hookToken = "hook-secret-3f9a"

func hookFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "hooks", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hookPost posts body to http://addr/hooks/provider, with the token in the
// query (auth "query"), as the basic-auth password ("basic"), or none, and
// returns the status code.
func hookPost(t *testing.T, addr, provider string, body []byte, auth, token string) int {
	t.Helper()
	url := "http://" + addr + "/hooks/" + provider
	if auth == "query" {
		url += "?token=" + token
	}
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if auth == "basic" {
		req.SetBasicAuth(provider, token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// mailgunSigned re-signs a Mailgun payload with key (the fixture carries
// the documentation's signature, made with a key we do not have).
func mailgunSigned(t *testing.T, body []byte, key string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	sig := m["signature"].(map[string]any)
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write([]byte(sig["timestamp"].(string) + sig["token"].(string)))
	sig["signature"] = hex.EncodeToString(mac.Sum(nil))
	out, _ := json.Marshal(m)
	return out
}

// dsnsFor returns the DSNs the upstream got for sender that name rcpt.
func dsnsFor(t *testing.T, up *testsmtp.Server, sender, rcpt string) []opsReport {
	var out []opsReport
	for _, m := range up.Messages() {
		if m.From != "" || len(m.To) != 1 || m.To[0] != sender {
			continue
		}
		r := opsParseReport(t, m.Data)
		if r.rcpt(rcpt) != nil {
			out = append(out, r)
		}
	}
	return out
}

func TestHooksProviders(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{extra: "hooks:\n  token: " + hookToken + "\n  mailgun_signing_key: key-mg-test\n"}))
	smtpAddr, httpAddr := d.addrs["submission"], d.httpAddr()
	today := time.Now().UTC().Format("2006-01-02")

	cases := []struct {
		provider, fixture, auth string
		sender, rcpt, msgID     string
		status, diag            string
	}{
		{"ses", "ses-bounce.json", "query", "john@example.com", "jane@example.com", "custom-message-ID", "5.1.1", "550 5.1.1 <jane@example.com>... User"},
		{"mailgun", "mailgun-failed-permanent.json", "basic", "bob@example.com", "alice@example.org", "20130503192659.13651.20287@mg.example.com", "5.5.0", "Requested action not taken: mailbox unavailable"},
		{"sendgrid", "sendgrid-bounce.json", "query", "app@example.com", "alex@example.com", "14c5d75ce93.dfd.64b469@ismtpd-555", "5.0.0", "500 unknown recipient"},
		// Postmark's payload carries only its own message ID: matched as
		// the last message to the recipient.
		{"postmark", "postmark-bounce.json", "basic", "sender@example.com", "john@example.com", "pm-original-1@example.com", "5.0.0", "Test bounce details"},
	}
	for _, c := range cases {
		body := hookFixture(t, c.fixture)
		if c.provider == "mailgun" {
			body = mailgunSigned(t, body, "key-mg-test")
		}
		data := "From: <" + c.sender + ">\r\nTo: <" + c.rcpt + ">\r\nSubject: hook test\r\nMessage-ID: <" + c.msgID + ">\r\n\r\nbody\r\n"
		if _, err := send(smtpAddr, d.tlsConfig(), "app", c.sender, []string{c.rcpt}, data); err != nil {
			t.Fatalf("%s: send: %v", c.provider, err)
		}
		waitQueueEmpty(t, d.env) // delivered: the provider said 250

		// A wrong or missing token: 401, and nothing changes.
		for _, tok := range []string{"", "wrong"} {
			auth := c.auth
			if tok == "" {
				auth = "none"
			}
			if code := hookPost(t, httpAddr, c.provider, body, auth, tok); code != 401 {
				t.Fatalf("%s: token %q: %d, want 401", c.provider, tok, code)
			}
		}
		if c.provider == "mailgun" {
			if code := hookPost(t, httpAddr, c.provider, mailgunSigned(t, body, "not-the-key"), c.auth, hookToken); code != 401 {
				t.Fatalf("mailgun: a wrong signature: %d, want 401", code)
			}
		}
		if code := hookPost(t, httpAddr, c.provider, []byte(`{"not": json`), c.auth, hookToken); code != 400 {
			t.Fatalf("%s: malformed JSON: %d, want 400", c.provider, code)
		}
		if _, _, code := suppCmd(t, "check", c.rcpt, "-c", d.cfg); code != 1 {
			t.Fatalf("%s: %s suppressed after refused posts", c.provider, c.rcpt)
		}
		if n := len(dsnsFor(t, d.up, c.sender, c.rcpt)); n != 0 {
			t.Fatalf("%s: %d DSNs after refused posts", c.provider, n)
		}

		// The real thing, three times (providers retry and repeat).
		for i := 0; i < 3; i++ {
			if code := hookPost(t, httpAddr, c.provider, body, c.auth, hookToken); code != 200 {
				t.Fatalf("%s: post %d: %d, want 200", c.provider, i, code)
			}
		}
		// Every DSN a post makes is spooled before its 200: once the queue
		// is empty, the upstream has all there will be.
		waitQueueEmpty(t, d.env)
		dsns := dsnsFor(t, d.up, c.sender, c.rcpt)
		if len(dsns) != 1 {
			t.Fatalf("%s: %d DSNs to %s for %s after three posts, want exactly 1", c.provider, len(dsns), c.sender, c.rcpt)
		}
		h := dsns[0].rcpt(c.rcpt)
		if h.Get("Action") != "failed" || h.Get("Status") != c.status || !strings.Contains(h.Get("Diagnostic-Code"), c.diag) {
			t.Errorf("%s: DSN Action %q Status %q Diagnostic-Code %q; want failed, %s, %q", c.provider,
				h.Get("Action"), h.Get("Status"), h.Get("Diagnostic-Code"), c.status, c.diag)
		}
		if !strings.Contains(dsns[0].origHeaders, "Message-ID: <"+c.msgID+">") {
			t.Errorf("%s: DSN does not name the original Message-ID:\n%s", c.provider, dsns[0].origHeaders)
		}

		err := suppRcpt(d, c.rcpt)
		if got, want := suppReply(err), "550 5.1.1 <"+c.rcpt+">: suppressed after a hard bounce on "+today; got != want {
			t.Fatalf("%s: RCPT after the bounce: %q, want %q", c.provider, got, want)
		}
		if out, stderr, code := suppCmd(t, "remove", c.rcpt, "-c", d.cfg); code != 0 {
			t.Fatalf("%s: remove: %d %s %s", c.provider, code, out, stderr)
		}
		if got := suppReply(suppRcpt(d, c.rcpt)); got != "accepted" {
			t.Fatalf("%s: RCPT after remove: %s", c.provider, got)
		}
	}

	// A complaint suppresses without a DSN; a delivery only journals.
	if code := hookPost(t, httpAddr, "ses", hookFixture(t, "ses-complaint.json"), "query", hookToken); code != 200 {
		t.Fatalf("complaint: %d", code)
	}
	if code := hookPost(t, httpAddr, "ses", hookFixture(t, "ses-delivery.json"), "query", hookToken); code != 200 {
		t.Fatalf("delivery: %d", code)
	}
	// richard@ was not among the SES message's recipients: the complaint is
	// unmatched, journaled and answered 200, and suppresses nothing.
	if _, _, code := suppCmd(t, "check", "richard@example.com", "-c", d.cfg); code != 1 {
		t.Fatal("an unmatched complaint suppressed its recipient")
	}
	data := "From: <john@example.com>\r\nTo: <mary@example.com>\r\nSubject: c\r\nMessage-ID: <complaint-1@example.com>\r\n\r\nbody\r\n"
	if _, err := send(smtpAddr, d.tlsConfig(), "app", "john@example.com", []string{"mary@example.com"}, data); err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, d.env)
	complaint := bytes.ReplaceAll(bytes.ReplaceAll(hookFixture(t, "ses-complaint.json"), []byte("richard@example.com"), []byte("mary@example.com")),
		[]byte("custom-message-ID"), []byte("complaint-1@example.com"))
	if code := hookPost(t, httpAddr, "ses", complaint, "query", hookToken); code != 200 {
		t.Fatalf("matched complaint: %d", code)
	}
	if got := suppReply(suppRcpt(d, "mary@example.com")); got != "550 5.1.1 <mary@example.com>: suppressed after a complaint on "+today {
		t.Fatalf("RCPT after a complaint: %q", got)
	}
	waitQueueEmpty(t, d.env)
	if n := len(dsnsFor(t, d.up, "john@example.com", "mary@example.com")); n != 0 {
		t.Fatalf("a complaint made %d DSNs, want none", n)
	}

	// SNS subscription: logged with its URL, answered 200, never fetched.
	if code := hookPost(t, httpAddr, "ses", hookFixture(t, "ses-subscription-confirmation.json"), "query", hookToken); code != 200 {
		t.Fatalf("subscription confirmation: %d", code)
	}
	if !d.waitLog("msg=sns_subscription_confirmation", 5*time.Second) || !d.waitLog("Action=ConfirmSubscription", time.Second) {
		t.Fatal("the SubscribeURL was not logged")
	}

	// The journal tells the story: sluice trace finds the provider event
	// and the DSN under the original's Message-ID.
	out, stderr, code := runCmd(t, "", "trace", "custom-message-ID", "--json", "-c", d.cfg)
	if code != 0 || !strings.Contains(out, `"event":"provider_event"`) || !strings.Contains(out, `"event":"dsn_sent"`) || !strings.Contains(out, `"kind":"delivery"`) {
		t.Errorf("trace custom-message-ID: exit %d\n%s%s", code, out, stderr)
	}
}

// TestHooksTwoInstancesRedis (DESIGN §6): two instances share one
// redis-server. A message relayed by A bounces at SES; the report is posted
// to B (and then to both, repeatedly): B matches it through the index in
// Redis, one DSN is sent in all, and both instances refuse the address. An
// upstream's own 5.1.1 on B suppresses at A too.
func TestHooksTwoInstancesRedis(t *testing.T) {
	t.Parallel()
	r := testredis.Start(t)
	extra := "ratelimit:\n  redis: " + r.URL + "\nhooks:\n  token: " + hookToken + "\n"
	a := launch(t, opsCfg(opsOpts{extra: extra}), failRcpt("gone@example.org", 550, [3]int{5, 1, 1}, "no such user"))
	b := launch(t, opsCfg(opsOpts{extra: extra}), sinkOf(a))
	today := time.Now().UTC().Format("2006-01-02")

	data := "From: <john@example.com>\r\nTo: <jane@example.com>\r\nSubject: two\r\nMessage-ID: <custom-message-ID>\r\n\r\nbody\r\n"
	if _, err := send(a.addrs["submission"], a.tlsConfig(), "app", "john@example.com", []string{"jane@example.com"}, data); err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, a.env)
	body := hookFixture(t, "ses-bounce.json")
	// Posted to the instance that did not relay the message: B matches it
	// through Redis and sends the DSN itself.
	if code := hookPost(t, b.httpAddr(), "ses", body, "query", hookToken); code != 200 {
		t.Fatalf("post to B: %d, want 200", code)
	}
	if !b.waitLog("msg=dsn_sent", 10*time.Second) {
		t.Fatalf("B did not send the DSN:\n%s", b.stderr.String())
	}
	// Then repeated to both.
	for _, p := range []*testDaemon{a, b, a} {
		if code := hookPost(t, p.httpAddr(), "ses", body, "query", hookToken); code != 200 {
			t.Fatalf("post: %d, want 200", code)
		}
	}
	waitQueueEmpty(t, a.env)
	waitQueueEmpty(t, b.env)
	dsns := dsnsFor(t, a.up, "john@example.com", "jane@example.com")
	if len(dsns) != 1 {
		t.Fatalf("%d DSNs across two instances and four posts, want exactly 1", len(dsns))
	}
	if st := dsns[0].rcpt("jane@example.com").Get("Status"); st != "5.1.1" {
		t.Errorf("DSN Status %q, want 5.1.1", st)
	}
	want := "550 5.1.1 <jane@example.com>: suppressed after a hard bounce on " + today
	for name, d := range map[string]*testDaemon{"A": a, "B": b} {
		if got := suppReply(suppRcpt(d, "jane@example.com")); got != want {
			t.Errorf("instance %s: RCPT %q, want %q", name, got, want)
		}
	}

	// An upstream's 5.1.1 on B lists the address for A.
	if _, err := b.sendMsg("two-gone", "bounces", "gone@example.org"); err != nil {
		t.Fatal(err)
	}
	waitQueueEmpty(t, b.env)
	if got := suppReply(suppRcpt(a, "gone@example.org")); !strings.HasPrefix(got, "550 5.1.1 <gone@example.org>: suppressed after a hard bounce on ") {
		t.Errorf("instance A after B's upstream bounce: %q", got)
	}

	// Removed through B's socket, let through by A.
	if out, stderr, code := suppCmd(t, "remove", "jane@example.com", "-c", b.cfg); code != 0 {
		t.Fatalf("remove via B: %d %s %s", code, out, stderr)
	}
	if got := suppReply(suppRcpt(a, "jane@example.com")); got != "accepted" {
		t.Fatalf("instance A after the removal: %s", got)
	}
	out, _, code := suppCmd(t, "list", "--json", "-c", a.cfg)
	if code != 0 || strings.Contains(out, "jane@example.com") || !strings.Contains(out, `"address":"gone@example.org"`) {
		t.Errorf("list via A: exit %d\n%s", code, out)
	}
}
