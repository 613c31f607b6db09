package policy

import (
	"flag"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/golden"
	"github.com/sluicemail/sluice/internal/metrics"
)

var update = flag.Bool("update", false, "rewrite testdata/explain/*.golden")

func explainConfig() *config.Config {
	return &config.Config{
		Users: []config.User{
			{Name: "printer", Policy: "printer"},
			{Name: "billing-app"},
			{Name: "marketing", Policy: "marketing"},
		},
		Policies: map[string]*config.Policy{
			"default": {
				AllowedSenders: []string{"*@example.com", "{user}@apps.example.com"},
				MaxMessageSize: 25_000_000,
				MaxRecipients:  100,
				Rate: config.PolicyRate{
					Messages:   config.Rate{N: 100, Per: time.Minute, Burst: 20},
					Recipients: config.Rate{N: 5000, Per: 24 * time.Hour},
				},
				Upstreams: []string{"primary", "backup"},
				Masquerade: []config.Masquerade{
					{Match: "*@corp.local", To: "{local}@example.com"},
					{Match: "*@build.local", To: "{user}@apps.example.com"},
				},
			},
			"printer": {
				AllowedSenders:    []string{"scanner@example.com"},
				AllowedRecipients: []string{"*@example.com"},
				DeniedRecipients:  []string{"all-staff@example.com"},
				MaxMessageSize:    10_000_000,
				MaxRecipients:     5,
				RequireDKIM:       true,
				Rate:              config.PolicyRate{Messages: config.Rate{N: 10, Per: time.Hour}},
			},
			"marketing": {
				AllowedSenders: []string{"*@news.example.com"},
				MaxMessageSize: 25_000_000,
				Rate:           config.PolicyRate{Recipients: config.Rate{N: 10000, Per: 24 * time.Hour}},
				Upstreams:      []string{"mailgun-news"},
			},
		},
		Routes: []config.Route{
			{SenderDomains: []string{"news.example.com"}, Upstreams: []string{"mailgun-news"}},
			{RecipientDomains: []string{"gmail.test", "googlemail.test"}, Upstreams: []string{"gmail-relay"}},
		},
		DKIM: []config.DKIMKey{{Domain: "example.com", Selector: "s1"}},
		Upstreams: []config.Upstream{
			{Name: "primary", Profile: "ses"},
			{Name: "backup", Profile: "sendgrid"},
			{Name: "mailgun-news", Profile: "mailgun"},
			{Name: "gmail-relay", Profile: "sendgrid"},
		},
	}
}

func TestExplain(t *testing.T) {
	t.Parallel()
	e := newEngine(t, explainConfig(), newClock())
	tests := []struct {
		name, user, from string
		to               []string
		size             int64
		allowed          bool
	}{
		{"allowed", "billing-app", "invoices@example.com", []string{"customer@gmail.com"}, 20_000, true},
		{"user-address", "billing-app", "billing-app@apps.example.com", []string{"customer@gmail.com"}, 0, true},
		{"sender-denied", "billing-app", "ceo@other.org", []string{"customer@gmail.com"}, 0, false},
		{"printer-allowed", "printer", "scanner@example.com", []string{"alice@example.com"}, 2_000_000, true},
		{"printer-denied", "printer", "ceo@example.com", []string{"all-staff@example.com"}, 20_000_000, false},
		{"no-dkim-key", "printer", "scanner@example.org", []string{"alice@example.com"}, 0, false},
		{"route", "marketing", "offers@news.example.com", []string{"subscriber@gmail.com"}, 0, true},
		{"null-sender", "billing-app", "", []string{"customer@gmail.com"}, 0, false},
		{"unknown-user", "mallory", "a@example.com", []string{"b@example.com"}, 0, false},
		{"recipient-route", "billing-app", "invoices@example.com", []string{"r1@GMAIL.test"}, 0, true},
		{"masquerade", "billing-app", "scanner@CORP.local", []string{"alice@example.com"}, 0, true},
		{"masquerade-user", "billing-app", "ci@build.local", []string{"alice@example.com"}, 0, true},
		{"split", "billing-app", "invoices@example.com", []string{"r1@gmail.test", "r2@other.test", "<r3@googlemail.test.>"}, 0, true},
		{"split-sender-route-first", "marketing", "offers@news.example.com", []string{"r1@gmail.test", "r2@other.test"}, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, allowed := e.Explain(tt.user, tt.from, tt.to, tt.size)
			if allowed != tt.allowed {
				t.Errorf("allowed = %v, want %v\n%s", allowed, tt.allowed, got)
			}
			golden.Check(t, filepath.Join("testdata", "explain", tt.name+".golden"), []byte(got), *update)
		})
	}
}

// A managed DKIM domain signs only once a key is active: until then
// explain must say the message goes unsigned (or is denied by
// require_dkim), as the signer would do.
func TestExplainManagedKeys(t *testing.T) {
	t.Parallel()
	cfg := explainConfig()
	cfg.Policies["default"].AllowedSenders = append(cfg.Policies["default"].AllowedSenders, "*@pending.test", "*@active.test")
	cfg.Policies["printer"].AllowedSenders = append(cfg.Policies["printer"].AllowedSenders, "scanner@pending.test")
	cfg.DKIM = append(cfg.DKIM,
		config.DKIMKey{Domain: "pending.test", Managed: true},
		config.DKIMKey{Domain: "active.test", Managed: true})
	e, err := New(cfg, Options{Now: newClock().Now, Metrics: &metrics.Registry{},
		ManagedKeyActive: func(domain string) bool { return domain == "active.test" }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	tests := []struct {
		user, from, want string
		allowed          bool
	}{
		{"billing-app", "a@active.test", "dkim:        signed with the keys for active.test\n", true},
		{"billing-app", "a@pending.test", "dkim:        no active managed key for pending.test yet (`sluice dkim status`): sent unsigned\n", true},
		{"printer", "scanner@pending.test", "dkim:        no active managed key for pending.test yet (`sluice dkim status`): DENIED by require_dkim\n", false},
	}
	for _, tt := range tests {
		got, allowed := e.Explain(tt.user, tt.from, []string{"alice@example.com"}, 0)
		if !strings.Contains(got, tt.want) || allowed != tt.allowed {
			t.Errorf("Explain(%s, %s): allowed %v, want %v; want the line %q in:\n%s", tt.user, tt.from, allowed, tt.allowed, tt.want, got)
		}
	}
}
