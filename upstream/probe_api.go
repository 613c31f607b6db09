package upstream

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/sluicemail/sluice/config"
)

// APIProbe is what one read-only call to an API upstream found: Err is nil
// when the provider accepted the credentials. Detail says what it reported
// (the account's sending state, the domain's state, the token).
type APIProbe struct {
	URL    string // what was asked, without credentials
	Detail string
	Err    *Error
	// Warn: the credentials were accepted, but what the provider reported
	// needs a look (SES sandbox or sending disabled, a Mailgun domain not
	// active, or credentials that may send but not read the account).
	Warn bool
}

// ProbeAPI makes one authenticated, read-only call to API upstream u —
// SES GetAccount, Mailgun's domain, a Graph token — so `sluice doctor` can
// tell an endpoint, a credential or a region problem from a working
// upstream without sending anything.
func ProbeAPI(ctx context.Context, opts Options, u config.Upstream) (APIProbe, error) {
	opts.Upstreams = []config.Upstream{u}
	opts.StatusFile = ""
	d, err := New(opts)
	if err != nil {
		return APIProbe{}, err
	}
	defer d.Close()
	up := d.ups[0]
	if up.api == nil {
		return APIProbe{}, fmt.Errorf("upstream %s: not an API upstream", u.Name)
	}
	if g, ok := up.api.(*graphAPI); ok {
		// Graph: the token is the credential check; Mail.Send is only
		// exercised by a message.
		p := APIProbe{URL: g.tokens.cfg.TokenURL}
		if _, err := g.tokens.get(ctx, true); err != nil {
			p.Err = &Error{Upstream: u.Name, Stage: StageAuth, Message: err.Error(), Err: err}
			return p, nil
		}
		p.Detail = fmt.Sprintf("token issued to client %s; Mail.Send as %s is checked by the first message", u.ClientID, u.User)
		return p, nil
	}
	req, err := up.probeRequest(ctx)
	if err != nil {
		return APIProbe{}, err
	}
	p := APIProbe{URL: req.URL.String()}
	resp, err := up.http.Do(req)
	if err != nil {
		p.Err = &Error{Upstream: u.Name, Stage: StageConnect, Message: err.Error(), Err: err}
		return p, nil
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<10))
	resp.Body.Close()
	if p.Err = classifyHTTP(u.Name, resp.StatusCode, string(body)); p.Err != nil {
		if _, ok := up.api.(*sesAPI); ok && resp.StatusCode == http.StatusForbidden && strings.Contains(string(body), "AccessDenied") {
			p.Err, p.Warn = nil, true
			p.Detail = "credentials accepted, but they may not call ses:GetAccount; sending needs ses:SendEmail (or SendRawEmail), which only a message tests"
		}
		return p, nil
	}
	p.Detail, p.Warn = describeAPI(up.api, body)
	return p, nil
}

// probeRequest is the read-only request ProbeAPI makes to SES or Mailgun.
func (u *upstream) probeRequest(ctx context.Context) (*http.Request, error) {
	switch a := u.api.(type) {
	case *mailgunAPI:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/v3/domains/"+url.PathEscape(a.domain), nil)
		if err != nil {
			return nil, err
		}
		req.SetBasicAuth("api", a.key)
		return req, nil
	case *sesAPI:
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.base+"/v2/email/account", nil)
		if err != nil {
			return nil, err
		}
		creds, err := a.creds.Retrieve(ctx)
		if err != nil {
			return nil, fmt.Errorf("aws credentials: %w", err)
		}
		if err := a.signer.SignHTTP(ctx, creds, req, emptySHA256, "ses", a.region, a.now()); err != nil {
			return nil, fmt.Errorf("sigv4: %w", err)
		}
		return req, nil
	}
	return nil, fmt.Errorf("upstream %s: no probe for this API", u.cfg.Name)
}

// emptySHA256 is the hex SHA-256 of an empty body, which SigV4 signs for a GET.
const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// describeAPI turns a probe's answer into one line for doctor, and whether
// it needs a look.
func describeAPI(api apiSender, body []byte) (string, bool) {
	switch api.(type) {
	case *sesAPI:
		var acct struct {
			SendingEnabled          bool
			ProductionAccessEnabled bool
			SendQuota               struct{ Max24HourSend, MaxSendRate, SentLast24Hours float64 }
		}
		if json.Unmarshal(body, &acct) != nil {
			return "account answered", false
		}
		s := "sending enabled"
		if !acct.SendingEnabled {
			s = "sending DISABLED for this account"
		}
		if !acct.ProductionAccessEnabled {
			s += ", sandbox (only verified recipients)"
		}
		q := acct.SendQuota
		return fmt.Sprintf("%s; quota %.0f a day (%.0f sent), %g msg/s", s, q.Max24HourSend, q.SentLast24Hours, q.MaxSendRate),
			!acct.SendingEnabled || !acct.ProductionAccessEnabled
	case *mailgunAPI:
		var dom struct {
			Domain struct{ Name, State string }
		}
		if json.Unmarshal(body, &dom) != nil || dom.Domain.Name == "" {
			return "domain answered", false
		}
		return fmt.Sprintf("domain %s is %s", dom.Domain.Name, dom.Domain.State), dom.Domain.State != "active"
	}
	return "", false
}
