package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/sluicemail/sluice/config"
)

// loginClient is AUTH LOGIN without an initial response that answers the
// username, then the password, whatever the prompts say. go-sasl's client
// sends the username as initial response and insists on the prompt
// "Password:", which some servers word differently.
type loginClient struct {
	user, pass string
	step       int
}

func (a *loginClient) Start() (string, []byte, error) { return sasl.Login, nil, nil }

func (a *loginClient) Next(_ []byte) ([]byte, error) {
	a.step++
	switch a.step {
	case 1:
		return []byte(a.user), nil
	case 2:
		return []byte(a.pass), nil
	}
	return nil, sasl.ErrUnexpectedServerChallenge
}

// xoauth2Client is Google's and Microsoft's XOAUTH2. A refused token gets a
// 334 with a JSON error, which is answered with an empty line so the server
// ends the exchange with its 535.
type xoauth2Client struct{ user, token string }

func (a *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + a.user + "\x01auth=Bearer " + a.token + "\x01\x01"), nil
}

func (a *xoauth2Client) Next(_ []byte) ([]byte, error) { return []byte{}, nil }

// tokenSource fetches and caches an OAuth2 access token from a refresh
// token, or with client credentials when there is none. Tokens and secrets never reach a log or an error text.
type tokenSource struct {
	cfg    config.OAuth2
	client *http.Client
	now    func() time.Time

	mu      sync.Mutex
	token   string
	expires time.Time
}

// errInvalidGrant is a refresh token the provider no longer accepts: only a
// person can fix it, so the message says what to do.
type oauthError struct {
	status int
	code   string
	desc   string
}

func (e *oauthError) Error() string {
	if e.code == "invalid_grant" {
		return "oauth2: refresh token rejected (invalid_grant: revoked or expired); authorize the account again and update oauth2.refresh_token"
	}
	s := fmt.Sprintf("oauth2: token endpoint answered %d", e.status)
	if e.code != "" {
		s += " " + e.code
	}
	if e.desc != "" {
		s += ": " + e.desc
	}
	return s
}

// get returns a cached token unless it expires within a minute or force is set.
func (ts *tokenSource) get(ctx context.Context, force bool) (string, error) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if !force && ts.token != "" && ts.now().Before(ts.expires.Add(-time.Minute)) {
		return ts.token, nil
	}
	form := url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {ts.cfg.RefreshToken},
		"client_id":     {ts.cfg.ClientID},
	}
	if ts.cfg.RefreshToken == "" {
		// An application's own token (Microsoft Graph): client credentials.
		form = url.Values{"grant_type": {"client_credentials"}, "client_id": {ts.cfg.ClientID}}
	}
	if ts.cfg.ClientSecret != "" {
		form.Set("client_secret", ts.cfg.ClientSecret)
	}
	if ts.cfg.Scope != "" {
		form.Set("scope", ts.cfg.Scope)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ts.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("oauth2: token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := ts.client.Do(req)
	if err != nil {
		// url.Error carries the URL only (no form values), so it is safe to show.
		return "", fmt.Errorf("oauth2: token request: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("oauth2: read token response: %w", err)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	jerr := json.Unmarshal(body, &tr)
	if resp.StatusCode != http.StatusOK || tr.Error != "" {
		return "", &oauthError{status: resp.StatusCode, code: tr.Error, desc: tr.Description}
	}
	if jerr != nil || tr.AccessToken == "" {
		return "", fmt.Errorf("oauth2: token response without access_token")
	}
	if tr.ExpiresIn <= 0 {
		tr.ExpiresIn = 3600
	}
	ts.token = tr.AccessToken
	ts.expires = ts.now().Add(time.Duration(tr.ExpiresIn) * time.Second)
	return ts.token, nil
}
