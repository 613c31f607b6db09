package dnsclient

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testdns"
)

func lookup(t *testing.T, c *Client, name string) ([]string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return c.LookupTXT(ctx, name)
}

func TestLookupTXT(t *testing.T) {
	t.Parallel()
	srv := testdns.Start(t)
	c, err := New(srv.Addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("A", 600) // three strings, and over 512 bytes: TCP retry
	srv.SetValue("big._domainkey.example.com", "v=DKIM1; k=rsa; p="+long)
	srv.SetTXT("example.com", []string{"v=spf1 ", "include:amazonses.com -all"}, []string{"google-site-verification=x"})
	srv.SetCNAME("sel._domainkey.example.com", "sel.dkim.provider.net")
	srv.SetValue("sel.dkim.provider.net", "v=DKIM1; k=ed25519; p=abc")
	srv.SetCNAME("chain.example.com", "loop.example.com")
	srv.SetCNAME("loop.example.com", "chain.example.com")
	srv.SetTXT("fail.example.com", []string{"x"})
	srv.SetFail("fail.example.com", true)
	srv.SetCNAME("dangling.example.com", "nowhere.example.com")

	for _, tc := range []struct {
		name    string
		want    []string
		wantErr string
		missing bool
	}{
		{name: "big._domainkey.example.com", want: []string{"v=DKIM1; k=rsa; p=" + long}},
		{name: "Example.COM.", want: []string{"v=spf1 include:amazonses.com -all", "google-site-verification=x"}},
		{name: "sel._domainkey.example.com", want: []string{"v=DKIM1; k=ed25519; p=abc"}},
		{name: "absent.example.com", missing: true, wantErr: "NXDOMAIN"},
		{name: "dangling.example.com", missing: true, wantErr: "nowhere.example.com: no such record (NXDOMAIN)"},
		{name: "chain.example.com", wantErr: "CNAME chain longer than 8"},
		{name: "fail.example.com", wantErr: "SERVFAIL for fail.example.com"},
		{name: "bad name..", wantErr: "not a domain name"},
	} {
		got, err := lookup(t, c, tc.name)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: err %v, want %q", tc.name, err, tc.wantErr)
			}
			if errors.Is(err, ErrNotFound) != tc.missing {
				t.Errorf("%s: errors.Is(ErrNotFound) = %v, want %v", tc.name, !tc.missing, tc.missing)
			}
			continue
		}
		if err != nil || strings.Join(got, "|") != strings.Join(tc.want, "|") {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}

	// A recursive resolver answers the whole chain at once.
	srv.SetChase(true)
	before := srv.Queries.Load()
	got, err := lookup(t, c, "sel._domainkey.example.com")
	if err != nil || len(got) != 1 || got[0] != "v=DKIM1; k=ed25519; p=abc" {
		t.Fatalf("chased CNAME: %q, %v", got, err)
	}
	if n := srv.Queries.Load() - before; n != 1 {
		t.Errorf("chased CNAME took %d queries, want 1", n)
	}

	// A name with records but no TXT is NODATA: not found.
	srv.SetCNAME("dangling.example.com", "")
	srv.SetTXT("only-cname.example.com")
	if _, err := lookup(t, c, "only-cname.example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("NODATA: %v", err)
	}
}

func TestTimeout(t *testing.T) {
	t.Parallel()
	// A UDP socket that never answers.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, _ := New(pc.LocalAddr().String(), 200*time.Millisecond)
	start := time.Now()
	_, err = lookup(t, c, "example.com")
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("silent server: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timeout 200ms took %v", d)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	if _, err := New("no-port", 0); err == nil {
		t.Error("New accepted a resolver without a port")
	}
	c, err := New("", 0)
	if err != nil || len(c.Servers()) == 0 {
		t.Errorf("system resolver: %v %v", c.Servers(), err)
	}
}
