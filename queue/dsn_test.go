package queue

import (
	"flag"
	"path/filepath"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/golden"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestDSNGolden(t *testing.T) {
	t.Parallel()
	arrival := time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)
	orig := []byte("From: alice@example.com\r\nTo: bob@example.org, nobody@example.org\r\nSubject: report\r\n\r\n")
	for _, tc := range []struct {
		name string
		d    dsn
	}{
		{"dsn-failed.golden", dsn{
			Hostname: "relay.example.com", From: "MAILER-DAEMON@relay.example.com", To: "alice@example.com",
			QueueID: "0SZ5V4M7K1ABCDEF", EnvID: "env-42", Arrival: arrival, Date: arrival.Add(2 * time.Minute),
			MessageID: "0SZ5V4M7K1ABCDEF.1a2b3c4d@relay.example.com", Boundary: "0SZ5V4M7K1ABCDEF/0011223344556677/relay.example.com",
			Rcpts: []dsnRcpt{
				{Addr: "nobody@example.org", ORCPT: "rfc822;Nobody@Example.org", Action: "failed", Status: "5.1.1", Diag: "550 5.1.1 no such user"},
				{Addr: "late@example.org", Action: "failed", Status: "4.4.7", Diag: "delivery time expired after 120h0m0s; last error: 421 4.7.0 throttled"},
			},
			Original: orig,
		}},
		{"dsn-delayed.golden", dsn{
			Hostname: "relay.example.com", From: "MAILER-DAEMON@relay.example.com", To: "alice@example.com",
			QueueID: "0SZ5V4M7K1ABCDEF", Arrival: arrival, Date: arrival.Add(4 * time.Hour),
			MessageID: "0SZ5V4M7K1ABCDEF.5e6f7a8b@relay.example.com", Boundary: "b1",
			Rcpts:    []dsnRcpt{{Addr: "bob@example.org", Action: "delayed", Status: "4.7.0", Diag: "421 4.7.0 throttled"}},
			Original: append(orig, "Body.\r\n"...), Full: true,
		}},
	} {
		golden.Check(t, filepath.Join("testdata", tc.name), tc.d.build(), *update)
	}
	// A provider's later report (SES, through the webhook): the original
	// left the spool long ago, so its Message-ID stands for its headers.
	pb := ProviderBounce{QueueID: "0SZ5V4M7K1ABCDEF", MessageID: "custom-message-ID", Sender: "john@example.com",
		Received: arrival, Recipient: "jane@example.com", Status: "5.1.1", Diag: "550 5.1.1 <jane@example.com>... User",
		Remote: "email.example.com", Provider: "ses"}
	d := providerDSN(pb, "relay.example.com", "MAILER-DAEMON@relay.example.com", arrival.Add(3*time.Hour), [12]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	golden.Check(t, filepath.Join("testdata", "dsn-provider.golden"), d.build(), *update)
	// No enhanced status, or a 4.x.x one: the report says 5.0.0, it is final.
	pb.Status, pb.Diag = "4.2.0", ""
	if r := providerDSN(pb, "h", "f@h", arrival, [12]byte{}).Rcpts[0]; r.Status != "5.0.0" || r.Diag != "permanent failure reported by ses" {
		t.Errorf("provider DSN without a status: %+v", r)
	}
}

func TestWantsDSN(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		notify []string
		action string
		want   bool
	}{
		{nil, "failed", true},
		{nil, "delayed", true},
		{[]string{"NEVER"}, "failed", false},
		{[]string{"SUCCESS"}, "failed", false},
		{[]string{"failure"}, "failed", true},
		{[]string{"FAILURE"}, "delayed", false},
		{[]string{"SUCCESS", "DELAY"}, "delayed", true},
	} {
		if got := wantsDSN(RcptDSN{Notify: tc.notify}, tc.action); got != tc.want {
			t.Errorf("wantsDSN(%v, %s) = %v", tc.notify, tc.action, got)
		}
	}
}
