package relay

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/internal/testsmtp"
)

// TestRouteAndSESProfile: mail from news.example.com goes only through its
// route's upstream, with that upstream's credentials; the route's SES
// profile makes one signature without Date and Message-ID, so it still
// verifies after the upstream replaces both, as SES does. Other mail keeps
// the default route and dual signatures.
func TestRouteAndSESProfile(t *testing.T) {
	t.Parallel()
	news := testsmtp.Start(t, testsmtp.Options{Username: "news-user", Password: "news-secret"})
	tr := startRelay(t, relayOpts{
		upstreams: fmt.Sprintf(`  - name: news
    host: 127.0.0.1
    ports: [%d]
    tls: none
    profile: ses
    username: news-user
    password: news-secret
    priority: 50
`, news.Port()),
		routes: "routes:\n  - sender_domains: [news.example.com]\n    upstreams: [news]\n",
	})
	c := tr.dial(t, "submission", "alice")
	for i := 0; i < 3; i++ {
		if _, err := send(c, "letters@news.example.com", []string{"r@example.org"}, msg("letters@news.example.com", "r@example.org", fmt.Sprintf("news%d", i), "weekly")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := send(c, "a@example.com", []string{"r@example.org"}, msg("a@example.com", "r@example.org", "plain", "x")); err != nil {
		t.Fatal(err)
	}
	got := news.WaitMessages(t, 3, 10*time.Second)
	// All four accepted messages have arrived (3 + 1), so none can still
	// be on its way to the wrong upstream.
	tr.up.WaitMessages(t, 1, 10*time.Second)
	for _, m := range tr.up.Messages() {
		if bytes.Contains(m.Data, []byte("news.example.com")) {
			t.Errorf("routed mail reached the default upstream")
		}
	}
	if n := len(news.Messages()); n != 3 {
		t.Errorf("route upstream got %d messages, want 3 (only the routed ones)", n)
	}
	dateRE := regexp.MustCompile(`(?m)^Date: .*\r\n`)
	idRE := regexp.MustCompile(`(?m)^Message-ID: .*\r\n`)
	for _, m := range got {
		if m.User != "news-user" {
			t.Errorf("route upstream authenticated as %q, want news-user", m.User)
		}
		if n := strings.Count(string(m.Data), "DKIM-Signature:"); n != 1 {
			t.Errorf("ses profile: %d signatures, want 1", n)
		}
		// What SES does: new Message-ID and Date.
		rewritten := idRE.ReplaceAll(m.Data, []byte("Message-ID: <0100018c@email.amazonses.com>\r\n"))
		rewritten = dateRE.ReplaceAll(rewritten, []byte("Date: Mon, 30 Nov 2026 01:02:03 +0000\r\n"))
		for _, v := range tr.verify(t, rewritten) {
			if v.Err != nil {
				t.Errorf("signature after SES's rewrite: %v", v.Err)
			}
		}
	}
}

// TestRequireTLSNotDowngraded: a client that sends MAIL ... REQUIRETLS
// over TLS asks that the message never travel in clear (RFC 8689). A route
// with only a plaintext (tls: none) upstream must not carry it.
func TestRequireTLSNotDowngraded(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	c := tr.dial(t, "submission", "alice")
	if ok, _ := c.Extension("REQUIRETLS"); !ok {
		t.Fatal("REQUIRETLS not advertised after STARTTLS")
	}
	if err := c.Mail("a@example.com", &smtp.MailOptions{RequireTLS: true}); err != nil {
		t.Fatalf("MAIL REQUIRETLS over TLS: %s", codeOf(err))
	}
	if err := c.Rcpt("r@example.org", nil); err != nil {
		t.Fatalf("RCPT: %s", codeOf(err))
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %s", codeOf(err))
	}
	fmt.Fprint(w, msg("a@example.com", "r@example.org", "requiretls", "secret"))
	// Every upstream of this relay is tls: none: the message has no route
	// that keeps it encrypted, so it is refused, not queued.
	if _, err := w.CloseWithResponse(); codeOf(err) != "550 5.7.10" {
		t.Fatalf("end of data with REQUIRETLS and only plaintext upstreams: %s, want 550 5.7.10", codeOf(err))
	}
	// A sentinel without REQUIRETLS: once it arrived, the refused message
	// (never queued) cannot arrive after it.
	if _, err := send(c, "a@example.com", []string{"r@example.org"}, msg("a@example.com", "r@example.org", "sentinel", "x")); err != nil {
		t.Fatal(err)
	}
	tr.up.WaitMessages(t, 1, 10*time.Second)
	for _, m := range tr.up.Messages() {
		if bytes.Contains(m.Data, []byte("Subject: requiretls")) {
			t.Fatalf("REQUIRETLS message delivered to the upstream in clear:\n%.200s", m.Data)
		}
	}
}
