package upstream

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"testing"
	"time"

	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

// probeHandler answers the read-only calls doctor makes: SES GetAccount
// (SigV4 checked with the test key) and Mailgun's domain (basic auth); the
// Graph token endpoint is graphHandler's. account is GetAccount's answer;
// denied makes SES refuse it as an IAM policy would.
func probeHandler(t *testing.T, account string, denied bool) func(s *apiServer) http.HandlerFunc {
	return func(s *apiServer) http.HandlerFunc {
		graph := graphHandler(s)
		return func(w http.ResponseWriter, r *http.Request) {
			switch r.URL.Path {
			case "/v2/email/account":
				at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
				if err != nil || r.Method != http.MethodGet {
					http.Error(w, "bad request", http.StatusBadRequest)
					return
				}
				check, _ := http.NewRequest(r.Method, "https://"+r.Host+r.URL.RequestURI(), nil)
				if err := v4.NewSigner().SignHTTP(context.Background(), testCreds, check, emptySHA256, "ses", "eu-west-1", at); err != nil {
					t.Error(err)
				}
				if got := r.Header.Get("Authorization"); got == "" || got != check.Header.Get("Authorization") {
					http.Error(w, `{"message":"The request signature we calculated does not match"}`, http.StatusForbidden)
					return
				}
				if denied {
					w.Header().Set("X-Amzn-Errortype", "AccessDeniedException")
					http.Error(w, `{"message":"User is not authorized to perform: ses:GetAccount","__type":"AccessDeniedException"}`, http.StatusForbidden)
					return
				}
				io.WriteString(w, account)
			case "/v3/domains/example.com":
				if u, p, ok := r.BasicAuth(); !ok || u != "api" || p != "key-test" {
					http.Error(w, "Forbidden", http.StatusUnauthorized)
					return
				}
				io.WriteString(w, `{"domain":{"name":"example.com","state":"active"},"receiving_dns_records":[]}`)
			default:
				graph(w, r)
			}
		}
	}
}

// TestProbeAPI: doctor's read-only call to each API upstream tells working
// credentials (with what the provider reports) from refused ones and from
// an endpoint that does not answer, and sends nothing.
func TestProbeAPI(t *testing.T) {
	t.Parallel()
	const production = `{"SendingEnabled":true,"ProductionAccessEnabled":true,"SendQuota":{"Max24HourSend":50000,"MaxSendRate":14,"SentLast24Hours":12}}`
	const sandbox = `{"SendingEnabled":true,"ProductionAccessEnabled":false,"SendQuota":{"Max24HourSend":200,"MaxSendRate":1,"SentLast24Hours":0}}`
	prod := startAPI(t, probeHandler(t, production, false))
	sand := startAPI(t, probeHandler(t, sandbox, false))
	denied := startAPI(t, probeHandler(t, production, true))
	mailgun := func(s *apiServer, key string) config.Upstream {
		return config.Upstream{Name: "mailgun", API: config.APIMailgun, Endpoint: s.URL, Domain: "example.com", APIKey: key}
	}
	graph := func(s *apiServer, secret string) config.Upstream {
		return config.Upstream{Name: "graph", API: config.APIGraph, Endpoint: s.URL, TenantID: "tenant-1",
			ClientID: "app-1", ClientSecret: secret, User: "sender@example.com"}
	}
	wrongKey := sesUp(prod, 1)
	wrongKey.SecretAccessKey = "not-the-secret"
	down := sesUp(prod, 1)
	down.Endpoint = "https://127.0.0.1:" + strconv.Itoa(testsmtp.ClosedPort(t))
	for _, tc := range []struct {
		name   string
		srv    *apiServer
		up     config.Upstream
		detail string
		warn   bool
		stage  Stage // "": the credentials were accepted
	}{
		{"ses production", prod, sesUp(prod, 1), "sending enabled; quota 50000 a day (12 sent), 14 msg/s", false, ""},
		{"ses sandbox", sand, sesUp(sand, 1), "sending enabled, sandbox (only verified recipients); quota 200 a day (0 sent), 1 msg/s", true, ""},
		{"ses may not read the account", denied, sesUp(denied, 1), "credentials accepted, but they may not call ses:GetAccount; sending needs ses:SendEmail (or SendRawEmail), which only a message tests", true, ""},
		{"ses wrong secret", prod, wrongKey, "", false, StageAuth},
		{"ses endpoint down", prod, down, "", false, StageConnect},
		{"mailgun", prod, mailgun(prod, "key-test"), "domain example.com is active", false, ""},
		{"mailgun wrong key", prod, mailgun(prod, "key-wrong"), "", false, StageAuth},
		{"graph", prod, graph(prod, "graph-secret"), "token issued to client app-1; Mail.Send as sender@example.com is checked by the first message", false, ""},
		{"graph wrong secret", prod, graph(prod, "wrong"), "", false, StageAuth},
	} {
		opts := Options{Hostname: "relay.example.com", RootCAs: tc.srv.roots(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
		p, err := ProbeAPI(context.Background(), opts, tc.up.WithDefaults())
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var stage Stage
		if p.Err != nil {
			stage = p.Err.Stage
		}
		if stage != tc.stage || p.Detail != tc.detail || p.Warn != tc.warn {
			t.Errorf("%s: stage %q detail %q warn %v (err %v); want stage %q detail %q warn %v", tc.name, stage, p.Detail, p.Warn, p.Err, tc.stage, tc.detail, tc.warn)
		}
	}
	for _, s := range []*apiServer{prod, sand, denied} {
		if n := len(s.stored()); n != 0 {
			t.Errorf("the probe sent %d messages", n)
		}
	}
}
