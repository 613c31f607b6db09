package upstream

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/sluicemail/sluice/config"
)

// apiSender sends one message through a provider's HTTPS API (DESIGN §8.5).
// The bytes sent are the signed message, unchanged, streamed from the spool
// (never held whole in memory); only the provider's wrapping differs.
type apiSender interface {
	// request builds the request for m to rcpts; its body streams the message.
	request(ctx context.Context, m *Message, rcpts []string) (*http.Request, error)
}

// newAPI prepares u's API client.
func (u *upstream) newAPI(ctx context.Context) error {
	c := u.cfg
	u.http = &http.Client{
		Timeout:   c.ConnectTimeout + c.Timeout,
		Transport: &http.Transport{TLSClientConfig: u.tls, Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: max(c.MaxConnections, 1)},
	}
	switch c.API {
	case config.APIMailgun:
		base := "https://api.mailgun.net"
		if c.Region == "eu" {
			base = "https://api.eu.mailgun.net"
		}
		u.api = &mailgunAPI{base: endpoint(c, base), domain: c.Domain, key: c.APIKey}
	case config.APIGraph:
		base := endpoint(c, "https://graph.microsoft.com")
		login := "https://login.microsoftonline.com"
		if c.Endpoint != "" {
			login = base // tests: one local server answers both
		}
		ts := &tokenSource{client: u.http, now: u.d.now, cfg: config.OAuth2{
			TokenURL: login + "/" + url.PathEscape(c.TenantID) + "/oauth2/v2.0/token",
			ClientID: c.ClientID, ClientSecret: c.ClientSecret, Scope: "https://graph.microsoft.com/.default"}}
		u.api = &graphAPI{base: base, user: c.User, tokens: ts}
	case config.APISES:
		var creds aws.CredentialsProvider
		if c.AccessKeyID != "" {
			creds = credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, "")
		} else {
			// The standard chain: environment, shared files, IAM roles (EC2, ECS, EKS).
			ac, err := awsconfig.LoadDefaultConfig(ctx, awsconfig.WithRegion(c.Region))
			if err != nil {
				return fmt.Errorf("upstream: %s: aws credentials: %w", c.Name, err)
			}
			creds = ac.Credentials
		}
		u.api = &sesAPI{base: endpoint(c, "https://email."+c.Region+".amazonaws.com"), region: c.Region,
			creds: aws.NewCredentialsCache(creds), signer: v4.NewSigner(), now: u.d.now}
	}
	return nil
}

func endpoint(c config.Upstream, def string) string {
	if c.Endpoint != "" {
		return strings.TrimRight(c.Endpoint, "/")
	}
	return def
}

// deliverAPI makes one attempt through u's API, under its connection limit
// and rate like an SMTP attempt.
func (u *upstream) deliverAPI(ctx context.Context, m *Message, rcpts []string) txOutcome {
	out := txOutcome{rcptErrs: make([]error, len(rcpts)), tls: "https"}
	req, err := u.api.request(ctx, m, rcpts)
	if err != nil {
		out.err = &Error{Upstream: u.cfg.Name, Stage: StageAuth, Message: err.Error(), Err: err}
		if errors.Is(err, context.Canceled) {
			out.err.Stage = StageDial
		}
		return out
	}
	resp, err := u.http.Do(req)
	if err != nil {
		out.err = &Error{Upstream: u.cfg.Name, Stage: StageData, Err: err}
		return out
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	out.err = classifyHTTP(u.cfg.Name, resp.StatusCode, string(body))
	if out.err == nil {
		out.reply = fmt.Sprintf("HTTP %d", resp.StatusCode)
	} else if out.err.Stage == StageAuth {
		u.d.log.Warn("upstream credentials error", "upstream", u.cfg.Name, "status", resp.StatusCode)
	}
	return out
}

// classifyHTTP maps an API reply to the outcome of an attempt (DESIGN §8.5),
// in SMTP terms so the queue, DSNs and breakers treat it as any other: 2xx
// delivered; 429 and 503 throttling (breaker); 400, 413 and 422 refuse the
// message (bounce); 401 and 403 are our credentials, temporary (never a
// bounce for our own mistake); anything else temporary.
func classifyHTTP(name string, status int, body string) *Error {
	if status >= 200 && status < 300 {
		return nil
	}
	text := fmt.Sprintf("HTTP %d", status)
	if b := strings.Join(strings.Fields(body), " "); b != "" {
		text += ": " + truncate(b, 200)
	}
	e := &Error{Upstream: name, Stage: StageData, Message: text}
	switch status {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable:
		e.Code, e.Enhanced, e.Throttled = 451, [3]int{4, 7, 0}, true
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		e.Code, e.Enhanced = 554, [3]int{5, 6, 0}
	case http.StatusRequestEntityTooLarge:
		e.Code, e.Enhanced = 552, [3]int{5, 3, 4}
	case http.StatusUnauthorized, http.StatusForbidden:
		e.Stage, e.Code, e.Enhanced = StageAuth, 451, [3]int{4, 7, 0}
		e.Message = "credentials error: " + text
	default:
		e.Code, e.Enhanced = 451, [3]int{4, 3, 0}
	}
	return e
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// streamed returns a body that write produces into, in a goroutine, as the
// HTTP client reads it: the message is copied from the spool once, in
// 32 KiB pieces.
func streamed(write func(w io.Writer) error) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(write(pw)) }()
	return pr
}

func copyMessage(w io.Writer, m *Message) error {
	rc, err := m.Open()
	if err != nil {
		return fmt.Errorf("open message %s: %w", m.ID, err)
	}
	defer rc.Close()
	_, err = io.Copy(w, rc)
	return err
}

// copyBase64 writes the message to w in standard base64 (the JSON and
// text bodies of Graph and SES).
func copyBase64(w io.Writer, m *Message) error {
	enc := base64.NewEncoder(base64.StdEncoding, w)
	if err := copyMessage(enc, m); err != nil {
		return err
	}
	return enc.Close()
}

// mailgunAPI posts to the MIME endpoint: the message as a file part, the
// envelope recipients as "to" fields, HTTP basic auth "api:KEY".
type mailgunAPI struct{ base, domain, key string }

func (a *mailgunAPI) request(ctx context.Context, m *Message, rcpts []string) (*http.Request, error) {
	b := multipart.NewWriter(io.Discard).Boundary() // random, as each part writer needs the same one
	body := streamed(func(w io.Writer) error {
		mw := multipart.NewWriter(w)
		if err := mw.SetBoundary(b); err != nil {
			return err
		}
		for _, r := range rcpts {
			if err := mw.WriteField("to", r); err != nil {
				return err
			}
		}
		fw, err := mw.CreateFormFile("message", "message.eml")
		if err != nil {
			return err
		}
		if err := copyMessage(fw, m); err != nil {
			return err
		}
		return mw.Close()
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"/v3/"+url.PathEscape(a.domain)+"/messages.mime", body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "multipart/form-data; boundary="+b)
	req.SetBasicAuth("api", a.key)
	return req, nil
}

// graphAPI calls Microsoft Graph sendMail with the MIME message, base64
// encoded, as the mailbox user, with an application token (client
// credentials). Graph takes the recipients from the message's headers.
type graphAPI struct {
	base, user string
	tokens     *tokenSource
}

func (a *graphAPI) request(ctx context.Context, m *Message, _ []string) (*http.Request, error) {
	tok, err := a.tokens.get(ctx, false)
	if err != nil {
		return nil, err
	}
	body := streamed(func(w io.Writer) error { return copyBase64(w, m) })
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"/v1.0/users/"+url.PathEscape(a.user)+"/sendMail", body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Authorization", "Bearer "+tok)
	return req, nil
}

// sesAPI calls SES v2 SendEmail with raw content, signed with SigV4. The
// JSON body is generated twice from the spool — once to hash it for the
// signature, once to send it — so memory stays flat whatever the size.
type sesAPI struct {
	base, region string
	creds        aws.CredentialsProvider
	signer       *v4.Signer
	now          func() time.Time
}

func (a *sesAPI) request(ctx context.Context, m *Message, rcpts []string) (*http.Request, error) {
	write := func(w io.Writer) error {
		if _, err := io.WriteString(w, `{"Content":{"Raw":{"Data":"`); err != nil {
			return err
		}
		if err := copyBase64(w, m); err != nil {
			return err
		}
		tail := `"}},"Destination":{"ToAddresses":` + jsonStrings(rcpts) + `}`
		if m.From != "" {
			tail += `,"FromEmailAddress":` + strings.Trim(jsonStrings([]string{m.From}), "[]")
		}
		_, err := io.WriteString(w, tail+"}")
		return err
	}
	h := sha256.New()
	cw := &countWriter{w: h}
	if err := write(cw); err != nil {
		return nil, err
	}
	body := streamed(write)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.base+"/v2/email/outbound-emails", body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = cw.n
	req.Header.Set("Content-Type", "application/json")
	creds, err := a.creds.Retrieve(ctx)
	if err != nil {
		body.Close()
		return nil, fmt.Errorf("aws credentials: %w", err)
	}
	if err := a.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(h.Sum(nil)), "ses", a.region, a.now()); err != nil {
		body.Close()
		return nil, fmt.Errorf("sigv4: %w", err)
	}
	return req, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func jsonStrings(ss []string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, r := range s {
			switch {
			case r == '"' || r == '\\':
				b.WriteByte('\\')
				b.WriteRune(r)
			case r < 0x20:
				fmt.Fprintf(&b, `\u%04x`, r)
			default:
				b.WriteRune(r)
			}
		}
		b.WriteByte('"')
	}
	b.WriteByte(']')
	return b.String()
}
