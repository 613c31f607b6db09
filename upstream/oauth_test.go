package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

// tokenEndpoint is a local OAuth2 token endpoint handing out tok-1, tok-2, …
type tokenEndpoint struct {
	mu      sync.Mutex
	issued  int
	revoked bool
}

func (te *tokenEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	te.mu.Lock()
	defer te.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.Form.Get("grant_type") != "refresh_token" || r.Form.Get("client_id") != "cid" || r.Form.Get("client_secret") != "csecret" {
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"error":"invalid_client"}`)
		return
	}
	if te.revoked || r.Form.Get("refresh_token") != "refresh" {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprint(w, `{"error":"invalid_grant","error_description":"Token has been expired or revoked."}`)
		return
	}
	te.issued++
	fmt.Fprintf(w, `{"access_token":"tok-%d","expires_in":3600,"token_type":"Bearer"}`, te.issued)
}

func TestXOAUTH2(t *testing.T) {
	t.Parallel()
	te := &tokenEndpoint{}
	hs := httptest.NewServer(te)
	t.Cleanup(hs.Close)
	s := testsmtp.Start(t, testsmtp.Options{Username: "me@example.com", Password: "unused", BearerToken: "tok-1"})
	clk := newClock()
	u := smtpUp("o365", s, 10)
	u.AuthMechanism, u.Username = "xoauth2", "me@example.com"
	u.OAuth2 = config.OAuth2{TokenURL: hs.URL, ClientID: "cid", ClientSecret: "csecret", RefreshToken: "refresh", Scope: "https://outlook.office.com/SMTP.Send"}
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{u}, Now: clk.Now})
	mustDeliver(t, d, msg("m1", body))
	d.reapAll()
	mustDeliver(t, d, msg("m2", body)) // cached: no second token
	if te.issued != 1 {
		t.Fatalf("%d tokens fetched, want 1 (cached)", te.issued)
	}

	// The token expires: a new one is fetched before AUTH.
	s.SetAuth("me@example.com", "unused", "tok-2")
	clk.Advance(time.Hour)
	d.reapAll()
	mustDeliver(t, d, msg("m3", body))
	if te.issued != 2 {
		t.Fatalf("%d tokens fetched after expiry, want 2", te.issued)
	}

	// Revoked early on the server: AUTH fails, one refresh, success.
	s.SetAuth("me@example.com", "unused", "tok-3")
	d.reapAll()
	mustDeliver(t, d, msg("m4", body))

	// The refresh token itself is revoked: a clear temporary error at auth.
	te.mu.Lock()
	te.revoked = true
	te.mu.Unlock()
	s.SetAuth("me@example.com", "unused", "tok-never")
	d.reapAll()
	r := d.Deliver(context.Background(), msg("m5", body))
	var e *Error
	if !errors.As(r.Errs[0], &e) || e.Stage != StageAuth || !e.Temporary() || !strings.Contains(e.Error(), "invalid_grant") {
		t.Fatalf("revoked refresh token: %v", r.Errs[0])
	}
	if strings.Contains(e.Error(), "refresh") && strings.Contains(e.Error(), "tok-") || strings.Contains(e.Error(), "csecret") {
		t.Fatalf("secret in error: %v", e)
	}
	if n := len(s.Messages()); n != 4 {
		t.Fatalf("%d delivered", n)
	}
}
