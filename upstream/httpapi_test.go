package upstream

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

// apiServer is a local HTTPS server that checks what a provider checks and
// stores the raw messages it accepted.
type apiServer struct {
	*httptest.Server
	mu     sync.Mutex
	msgs   [][]byte
	rcpts  [][]string
	status int // answer instead of 200 when set
}

func (s *apiServer) stored() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]byte(nil), s.msgs...)
}

func (s *apiServer) keep(msg []byte, rcpts []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs, s.rcpts = append(s.msgs, msg), append(s.rcpts, rcpts)
}

func (s *apiServer) answer(w http.ResponseWriter) bool {
	s.mu.Lock()
	st := s.status
	s.mu.Unlock()
	if st != 0 {
		http.Error(w, `{"message":"refused by the test"}`, st)
		return true
	}
	return false
}

func startAPI(t *testing.T, h func(s *apiServer) http.HandlerFunc) *apiServer {
	s := &apiServer{}
	s.Server = httptest.NewTLSServer(h(s))
	t.Cleanup(s.Close)
	return s
}

func (s *apiServer) roots() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(s.Certificate())
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

var testCreds = aws.Credentials{AccessKeyID: "AKIDTEST", SecretAccessKey: "test-secret"}

// sesHandler verifies the SigV4 signature with the test key, as SES does.
func sesHandler(t *testing.T) func(s *apiServer) http.HandlerFunc {
	return func(s *apiServer) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			sum := sha256.Sum256(body)
			at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
			if err != nil || r.URL.Path != "/v2/email/outbound-emails" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			check, _ := http.NewRequest(r.Method, "https://"+r.Host+r.URL.RequestURI(), nil)
			check.Header.Set("Content-Type", r.Header.Get("Content-Type"))
			check.ContentLength = int64(len(body))
			if err := v4.NewSigner().SignHTTP(context.Background(), testCreds, check, hex.EncodeToString(sum[:]), "ses", "eu-west-1", at); err != nil {
				t.Error(err)
			}
			if got, want := r.Header.Get("Authorization"), check.Header.Get("Authorization"); got == "" || got != want {
				http.Error(w, `{"message":"The request signature we calculated does not match"}`, http.StatusForbidden)
				return
			}
			if s.answer(w) {
				return
			}
			var req struct {
				Content     struct{ Raw struct{ Data []byte } }
				Destination struct{ ToAddresses []string }
			}
			if err := json.Unmarshal(body, &req); err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			s.keep(req.Content.Raw.Data, req.Destination.ToAddresses)
			io.WriteString(w, `{"MessageId":"0100-test"}`)
		}
	}
}

func mailgunHandler(s *apiServer) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "api" || p != "key-test" || r.URL.Path != "/v3/example.com/messages.mime" {
			http.Error(w, "Forbidden", http.StatusUnauthorized)
			return
		}
		if s.answer(w) {
			return
		}
		if err := r.ParseMultipartForm(1 << 20); err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		f, _, err := r.FormFile("message")
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		b, _ := io.ReadAll(f)
		s.keep(b, r.MultipartForm.Value["to"])
		io.WriteString(w, `{"id":"<x@mailgun>","message":"Queued. Thank you."}`)
	}
}

func graphHandler(s *apiServer) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/tenant-1/oauth2/v2.0/token":
			r.ParseForm()
			if r.Form.Get("grant_type") != "client_credentials" || r.Form.Get("client_secret") != "graph-secret" {
				http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
				return
			}
			io.WriteString(w, `{"access_token":"graph-token","expires_in":3600}`)
		case "/v1.0/users/sender@example.com/sendMail":
			if r.Header.Get("Authorization") != "Bearer graph-token" {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			if s.answer(w) {
				return
			}
			b, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, r.Body))
			if err != nil {
				http.Error(w, err.Error(), 400)
				return
			}
			s.keep(b, nil)
			w.WriteHeader(http.StatusAccepted)
		default:
			http.NotFound(w, r)
		}
	}
}

func sesUp(s *apiServer, prio int) config.Upstream {
	return config.Upstream{Name: "ses", API: config.APISES, Endpoint: s.URL, Region: "eu-west-1",
		AccessKeyID: testCreds.AccessKeyID, SecretAccessKey: testCreds.SecretAccessKey, Priority: prio}
}

// signedMessage is a DKIM-signed message and a lookup that verifies it.
func signedMessage(t *testing.T) (string, func(string) ([]string, error)) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	var b bytes.Buffer
	raw := "From: sender@example.com\r\nTo: rcpt@example.org\r\nSubject: api\r\nMessage-ID: <api@example.com>\r\n\r\nhello over https\r\n"
	if err := dkim.Sign(&b, strings.NewReader(raw), &dkim.SignOptions{Domain: "example.com", Selector: "t", Signer: priv}); err != nil {
		t.Fatal(err)
	}
	rec := "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
	return b.String(), func(string) ([]string, error) { return []string{rec}, nil }
}

func verifies(t *testing.T, raw []byte, lookup func(string) ([]string, error)) {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{LookupTXT: lookup})
	if err != nil || len(vs) == 0 || vs[0].Err != nil {
		t.Fatalf("stored message does not verify: %v %+v", err, vs)
	}
}

// TestAPIUpstreamsDeliverSignedBytes: SES (SigV4 checked with the test
// key), Mailgun (basic auth) and Graph (client-credentials bearer token)
// each receive the signed message unchanged: it verifies with go-msgauth.
func TestAPIUpstreamsDeliverSignedBytes(t *testing.T) {
	t.Parallel()
	raw, lookup := signedMessage(t)
	for _, tc := range []struct {
		name string
		srv  *apiServer
		up   func(s *apiServer) config.Upstream
	}{
		{"ses", startAPI(t, sesHandler(t)), func(s *apiServer) config.Upstream { return sesUp(s, 10) }},
		{"mailgun", startAPI(t, mailgunHandler), func(s *apiServer) config.Upstream {
			return config.Upstream{Name: "mailgun", API: config.APIMailgun, Endpoint: s.URL, Domain: "example.com", APIKey: "key-test"}
		}},
		{"graph", startAPI(t, graphHandler), func(s *apiServer) config.Upstream {
			return config.Upstream{Name: "graph", API: config.APIGraph, Endpoint: s.URL, TenantID: "tenant-1",
				ClientID: "app-1", ClientSecret: "graph-secret", User: "sender@example.com"}
		}},
	} {
		d := newDispatcher(t, Options{Upstreams: []config.Upstream{tc.up(tc.srv)}, RootCAs: tc.srv.roots()})
		m := msg("api-"+tc.name, raw, "rcpt@example.org", "other@example.org")
		m.SMTPUTF8 = true // API upstreams take UTF-8
		r := mustDeliver(t, d, m)
		got := tc.srv.stored()
		if r.Upstream != tc.name || len(got) != 1 || string(got[0]) != raw {
			t.Fatalf("%s: delivered by %s, stored %d messages, bytes equal: %v", tc.name, r.Upstream, len(got), len(got) == 1 && string(got[0]) == raw)
		}
		verifies(t, got[0], lookup)
		if tc.name != "graph" && strings.Join(tc.srv.rcpts[0], ",") != "rcpt@example.org,other@example.org" {
			t.Errorf("%s: recipients %v", tc.name, tc.srv.rcpts[0])
		}
	}
}

// TestAPIUpstreamFailover: every SMTP port closed → the API upstream
// delivers; a 429 opens its breaker and the next upstream takes over; a
// 400 bounces the message; a 401 defers it and says "credentials".
func TestAPIUpstreamFailover(t *testing.T) {
	t.Parallel()
	ses := startAPI(t, sesHandler(t))
	smtpDown := config.Upstream{Name: "smtp-blocked", Host: "127.0.0.1", TLS: config.TLSNone,
		Ports: []int{testsmtp.ClosedPort(t), testsmtp.ClosedPort(t)}, Priority: 10, ConnectTimeout: time.Second}
	backup := testsmtp.Start(t, testsmtp.Options{})
	clk := newClock()
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{smtpDown, sesUp(ses, 20), smtpUp("backup", backup, 30)},
		RootCAs: ses.roots(), Now: clk.Now})
	if r := mustDeliver(t, d, msg("m1", body)); r.Upstream != "ses" || len(ses.stored()) != 1 {
		t.Fatalf("with SMTP blocked: delivered by %s", r.Upstream)
	}

	ses.mu.Lock()
	ses.status = 429
	ses.mu.Unlock()
	if r := mustDeliver(t, d, msg("m2", body)); r.Upstream != "backup" {
		t.Fatalf("after 429: delivered by %s", r.Upstream)
	}
	if st := status(d, "ses"); st.Breaker != "open" || !strings.Contains(st.LastError, "HTTP 429") {
		t.Fatalf("after 429 the API upstream is %+v, want open", st)
	}

	for _, tc := range []struct {
		status    int
		temporary bool
		text      string
	}{
		{400, false, "554 5.6.0 HTTP 400"},
		{401, true, "credentials error: HTTP 401"},
		{403, true, "credentials error: HTTP 403"},
		{500, true, "451 4.3.0 HTTP 500"},
	} {
		ses.mu.Lock()
		ses.status = tc.status
		ses.mu.Unlock()
		only := newDispatcher(t, Options{Upstreams: []config.Upstream{sesUp(ses, 10)}, RootCAs: ses.roots()})
		r := only.Deliver(context.Background(), msg("m3", body))
		var e *Error
		if !errors.As(r.Errs[0], &e) || e.Temporary() != tc.temporary || !strings.Contains(e.Error(), tc.text) {
			t.Errorf("HTTP %d: got %v, want temporary=%v and %q", tc.status, r.Errs[0], tc.temporary, tc.text)
		}
	}
}

// TestAPIBodyStreamed: a 25 MB message through SES and Mailgun allocates a
// small fraction of its size (the body is streamed from the spool, twice
// for SES — once to hash it for SigV4 — never held whole; DESIGN §8.5 asks
// for less than 3× its size).
func TestAPIBodyStreamed(t *testing.T) {
	big := "From: a@example.com\r\nSubject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 76)+"\r\n", 25<<20/78)
	path := t.TempDir() + "/big.eml"
	if err := os.WriteFile(path, []byte(big), 0o600); err != nil {
		t.Fatal(err)
	}
	big = "" // only the file holds it now
	var got atomic.Int64
	count := func(s *apiServer) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/v3/example.com/messages.mime" {
				mr, _ := r.MultipartReader()
				for p, err := mr.NextPart(); err == nil; p, err = mr.NextPart() {
					n, _ := io.Copy(io.Discard, p)
					got.Add(n)
				}
				return
			}
			n, _ := io.Copy(io.Discard, r.Body)
			got.Add(n)
		}
	}
	for _, up := range []func(s *apiServer) config.Upstream{
		func(s *apiServer) config.Upstream { return sesUp(s, 10) },
		func(s *apiServer) config.Upstream {
			return config.Upstream{Name: "mailgun", API: config.APIMailgun, Endpoint: s.URL, Domain: "example.com", APIKey: "key-test"}
		},
	} {
		srv := startAPI(t, count)
		d := newDispatcher(t, Options{Upstreams: []config.Upstream{up(srv)}, RootCAs: srv.roots()})
		m := &Message{ID: "big", From: "a@example.com", To: []string{"b@example.org"},
			Open: func() (io.ReadCloser, error) { return os.Open(path) }}
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		mustDeliver(t, d, m)
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("%s: 25 MiB message, %d bytes received, %.1f MiB allocated in all (client and test server)",
			up(srv).Name, got.Load(), float64(alloc)/(1<<20))
		if alloc > 25<<20 {
			t.Errorf("%s: %d MiB allocated for a 25 MiB message: the body is not streamed", up(srv).Name, alloc>>20)
		}
		got.Store(0)
	}
}
