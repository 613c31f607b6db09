package policy

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/internal/testclock"
)

// clock is an injected time source that only moves when told.
type clock = testclock.Clock

func newClock() *clock { return testclock.New(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)) }

func newEngine(t testing.TB, cfg *config.Config, c *clock) *Engine {
	t.Helper()
	e, err := New(cfg, Options{Now: c.Now, Metrics: &metrics.Registry{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return e
}

func mustRate(n int, per time.Duration, burst int) config.Rate {
	return config.Rate{N: n, Per: per, Burst: burst}
}

func TestPatternMatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, user, addr string
		want                bool
	}{
		{"scanner@example.com", "", "scanner@example.com", true},
		{"scanner@example.com", "", "Scanner@EXAMPLE.com", true},
		{"SCANNER@Example.COM", "", "scanner@example.com", true},
		{"scanner@example.com", "", "scanner2@example.com", false},
		{"scanner@example.com", "", "scanner@example.com.evil", false},
		{"*@example.com", "", "anyone@example.com", true},
		{"*@example.com", "", "anyone@EXAMPLE.COM", true},
		{"*@example.com", "", "anyone@sub.example.com", false},
		{"*@example.com", "", "anyone@notexample.com", false},
		{"*@example.com", "", "example.com", false},
		{"postmaster@*", "", "postmaster@anything.org", true},
		{"postmaster@*", "", "postmistress@anything.org", false},
		{"*", "", "x@y.z", true},
		{"*", "", "", false},
		{"<>", "", "", true},
		{"<>", "", "a@b.c", false},
		{"*@example.com", "", "", false},
		{"{user}@example.com", "alice", "alice@example.com", true},
		{"{user}@example.com", "Alice", "alice@Example.com", true},
		{"{user}@example.com", "alice", "bob@example.com", false},
		{"{user}@example.com", "", "@example.com", false},
		{"{user}@example.com", "*", "bob@example.com", false},
		{"{user}", "alice@example.com", "alice@example.com", true},
		{"{user}", "alice@example.com", "bob@example.com", false},
		{"{user}", "alice", "alice", false},
		{"*@{user}.example.com", "tenant1", "x@tenant1.example.com", true},
		{"*@{user}.example.com", "tenant1", "x@tenant2.example.com", false},
		{`"odd@local"@example.com`, "", `"odd@local"@example.com`, true},
	}
	for _, tt := range tests {
		p, err := compilePattern(tt.pattern)
		if err != nil {
			t.Errorf("compile %q: %v", tt.pattern, err)
			continue
		}
		if got := p.match(tt.user, tt.addr); got != tt.want {
			t.Errorf("%q.match(user %q, %q) = %v, want %v", tt.pattern, tt.user, tt.addr, got, tt.want)
		}
	}
}

func TestPatternErrors(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "  ", "example.com", "@example.com", "user@", "a*@example.com",
		"*@*.example.com", "*@*", "{username}@example.com", "a b@example.com", "<a@b.c>"} {
		if _, err := compilePattern(bad); err == nil {
			t.Errorf("compilePattern(%q): no error", bad)
		}
	}
	cfg := &config.Config{Policies: map[string]*config.Policy{
		"p": {AllowedSenders: []string{"ok@example.com", "bad*@example.com"}},
	}}
	_, err := New(cfg, Options{})
	if err == nil || !strings.Contains(err.Error(), "policies.p.allowed_senders[1]") {
		t.Errorf("New with a bad pattern: err = %v, want one naming policies.p.allowed_senders[1]", err)
	}
}

// denied_recipients must not be bypassed by the fully qualified spelling of
// the same domain: "ceo@example.com." is delivered to ceo@example.com by
// every MTA that accepts it (Postfix strips the trailing dot).
func TestDeniedRecipientTrailingDot(t *testing.T) {
	t.Parallel()
	p, err := compilePolicy("default", &config.Policy{DeniedRecipients: []string{"ceo@example.com", "*@blocked.example"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"ceo@example.com.", "x@blocked.example."} {
		if d := p.CheckRecipient("u", rcpt, 0); d == nil {
			t.Errorf("RCPT TO:<%s> allowed despite denied_recipients", rcpt)
		}
	}
}

// TestNewRefusesBadPattern: the engine refuses what the loader refuses
// (config.CheckAddressPattern is their one definition).
func TestNewRefusesBadPattern(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{Policies: map[string]*config.Policy{"default": {AllowedSenders: []string{"*.example.com"}}}}
	if _, err := New(cfg, Options{}); err == nil {
		t.Error("New accepts allowed_senders [\"*.example.com\"]")
	}
}

func TestKindString(t *testing.T) {
	t.Parallel()
	want := map[Kind]string{SenderDenied: "sender", HeaderFromDenied: "header_from", RecipientDenied: "recipient",
		TooManyRecipients: "recipients", TooLarge: "size", RateLimited: "rate", DKIMRequired: "dkim", Unavailable: "unavailable"}
	for k, s := range want {
		if k.String() != s {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), k.String(), s)
		}
	}
}

func checksConfig() *config.Config {
	return &config.Config{
		Users: []config.User{{Name: "printer", Policy: "printer"}, {Name: "alice"}},
		Policies: map[string]*config.Policy{
			"default": {AllowedSenders: []string{"{user}@example.com"}, MaxMessageSize: 25_000_000, MaxRecipients: 100},
			"printer": {
				AllowedSenders:    []string{"scanner@example.com"},
				AllowedRecipients: []string{"*@example.com"},
				DeniedRecipients:  []string{"ceo@example.com"},
				MaxMessageSize:    10_000_000,
				MaxRecipients:     2,
				RequireDKIM:       true,
			},
			"bounces": {AllowedSenders: []string{"<>", "*@example.com"}},
			"open":    {},
		},
	}
}

// TestEveryKind produces each Kind through the check that owns it.
func TestEveryKind(t *testing.T) {
	t.Parallel()
	e := newEngine(t, checksConfig(), newClock())
	pr := e.Lookup("printer")
	def := e.UserPolicy("alice")
	if pr == nil || def == nil || def.Name != "default" || e.UserPolicy("nobody") != nil {
		t.Fatalf("Lookup/UserPolicy: printer=%v alice=%v", pr, def)
	}
	tests := []struct {
		name string
		d    *Denial
		want Kind // 0: allowed
	}{
		{"sender ok", pr.CheckSender("printer", "scanner@example.com"), 0},
		{"sender brackets ok", pr.CheckSender("printer", "<scanner@example.com>"), 0},
		{"sender other", pr.CheckSender("printer", "ceo@example.com"), SenderDenied},
		{"null sender default", pr.CheckSender("printer", ""), SenderDenied},
		{"null sender <>", pr.CheckSender("printer", "<>"), SenderDenied},
		{"null sender open policy", e.Lookup("open").CheckSender("x", ""), SenderDenied},
		{"null sender listed", e.Lookup("bounces").CheckSender("x", ""), 0},
		{"open policy any sender", e.Lookup("open").CheckSender("x", "who@ever.org"), 0},
		{"{user} sender", def.CheckSender("alice", "alice@example.com"), 0},
		{"{user} other user", def.CheckSender("alice", "bob@example.com"), SenderDenied},
		{"header from ok", pr.CheckHeaderFrom("printer", []string{"scanner@example.com"}), 0},
		{"header sender spoofed", pr.CheckHeaderFrom("printer", []string{"scanner@example.com", "ceo@example.com"}), HeaderFromDenied},
		{"header none", pr.CheckHeaderFrom("printer", nil), HeaderFromDenied},
		{"header empty addr with <>", e.Lookup("bounces").CheckHeaderFrom("x", []string{""}), HeaderFromDenied},
		{"header open", e.Lookup("open").CheckHeaderFrom("x", nil), 0},
		{"rcpt ok", pr.CheckRecipient("printer", "staff@example.com", 0), 0},
		{"rcpt outside", pr.CheckRecipient("printer", "friend@gmail.com", 0), RecipientDenied},
		{"rcpt denied wins", pr.CheckRecipient("printer", "CEO@example.com", 0), RecipientDenied},
		{"rcpt count below", pr.CheckRecipient("printer", "staff@example.com", 1), 0},
		{"rcpt count reached", pr.CheckRecipient("printer", "staff@example.com", 2), TooManyRecipients},
		{"size ok", pr.CheckSize(10_000_000), 0},
		{"size over", pr.CheckSize(10_000_001), TooLarge},
		{"dkim signed", pr.CheckDKIM(true), 0},
		{"dkim unsigned", pr.CheckDKIM(false), DKIMRequired},
		{"dkim not required", def.CheckDKIM(false), 0},
	}
	for _, tt := range tests {
		switch {
		case tt.want == 0 && tt.d != nil:
			t.Errorf("%s: denied (%v), want allowed", tt.name, tt.d)
		case tt.want != 0 && tt.d == nil:
			t.Errorf("%s: allowed, want %v", tt.name, tt.want)
		case tt.want != 0 && tt.d.Kind != tt.want:
			t.Errorf("%s: %v, want %v", tt.name, tt.d.Kind, tt.want)
		case tt.d != nil && tt.d.Rule == "":
			t.Errorf("%s: denial without a rule", tt.name)
		}
	}
	if got := e.MaxMessageSize(); got != 25_000_000 {
		t.Errorf("MaxMessageSize = %d, want 25000000", got)
	}
	// Rate and Unavailable kinds are produced in the rate-limit and Redis tests.
}

func rateConfig(messages, recipients config.Rate) *config.Config {
	return &config.Config{
		Users: []config.User{{Name: "app"}, {Name: "other"}},
		Policies: map[string]*config.Policy{"default": {
			Rate: config.PolicyRate{Messages: messages, Recipients: recipients},
		}},
	}
}

// rateEngine is an engine on a test clock with rateConfig's users, and its
// default policy.
func rateEngine(t *testing.T, messages, recipients config.Rate) (*Engine, *Policy, *clock) {
	c := newClock()
	e := newEngine(t, rateConfig(messages, recipients), c)
	return e, e.Lookup("default"), c
}

func TestRateMessages(t *testing.T) {
	t.Parallel()
	e, p, c := rateEngine(t, mustRate(3, time.Minute, 0), config.Rate{})
	ctx := context.Background()
	for i := range 3 {
		if r, d := e.ReserveMessage(ctx, p, "app"); d != nil || r == nil {
			t.Fatalf("message %d: %v", i+1, d)
		}
	}
	r, d := e.ReserveMessage(ctx, p, "app")
	if d == nil || r != nil {
		t.Fatalf("4th message: allowed, want RateLimited")
	}
	if d.Kind != RateLimited || d.RetryAfter != 20*time.Second || d.Rule != "rate.messages 3/1m" {
		t.Errorf("4th message: %+v, want RateLimited, RetryAfter 20s, rule rate.messages 3/1m", d)
	}
	if _, d := e.ReserveMessage(ctx, p, "other"); d != nil {
		t.Errorf("another user: %v, want allowed", d)
	}
	if _, d := e.ReserveMessageIP(ctx, p, "10.0.0.1"); d != nil {
		t.Errorf("a network client: %v, want allowed", d)
	}
	c.Advance(19 * time.Second)
	if _, d := e.ReserveMessage(ctx, p, "app"); d == nil || d.RetryAfter != time.Second {
		t.Errorf("after 19s: %v, want denied with 1s to go", d)
	}
	c.Advance(time.Second)
	if _, d := e.ReserveMessage(ctx, p, "app"); d != nil {
		t.Errorf("after 20s: %v, want allowed", d)
	}
	if _, d := e.ReserveMessage(ctx, p, "app"); d == nil {
		t.Errorf("second message after 20s: allowed, want denied")
	}
	// Unlimited: a no-op reservation.
	e2 := newEngine(t, rateConfig(config.Rate{}, config.Rate{}), c)
	for range 1000 {
		r, d := e2.ReserveMessage(ctx, e2.Lookup("default"), "app")
		if d != nil || r == nil {
			t.Fatalf("unlimited: %v", d)
		}
		r.Cancel()
	}
}

func TestRateBurst(t *testing.T) {
	t.Parallel()
	e, p, _ := rateEngine(t, mustRate(10, time.Minute, 2), config.Rate{})
	ctx := context.Background()
	for i := range 2 {
		if _, d := e.ReserveMessage(ctx, p, "app"); d != nil {
			t.Fatalf("message %d: %v", i+1, d)
		}
	}
	_, d := e.ReserveMessage(ctx, p, "app")
	if d == nil || d.RetryAfter != 6*time.Second || d.Rule != "rate.messages 10/1m burst 2" {
		t.Fatalf("3rd message with burst 2: %+v, want denied for 6s", d)
	}
}

func TestReservationCancel(t *testing.T) {
	t.Parallel()
	e, p, c := rateEngine(t, mustRate(2, time.Hour, 0), config.Rate{})
	ctx := context.Background()
	r1, _ := e.ReserveMessage(ctx, p, "app")
	r2, _ := e.ReserveMessage(ctx, p, "app")
	if _, d := e.ReserveMessage(ctx, p, "app"); d == nil {
		t.Fatal("3rd of 2/1h allowed")
	}
	c.Advance(time.Minute) // a refund later than the reservation still counts
	r2.Cancel()
	r2.Cancel() // twice gives back one, not two
	var nilRes *Reservation
	nilRes.Cancel()
	if _, d := e.ReserveMessage(ctx, p, "app"); d != nil {
		t.Fatalf("after Cancel: %v, want allowed", d)
	}
	if _, d := e.ReserveMessage(ctx, p, "app"); d == nil {
		t.Fatal("double Cancel gave back two messages")
	}
	_ = r1
}

func TestRecipientsChargedNotRefunded(t *testing.T) {
	t.Parallel()
	e, p, _ := rateEngine(t, mustRate(10, time.Hour, 0), mustRate(3, time.Hour, 0))
	ctx := context.Background()
	r, _ := e.ReserveMessage(ctx, p, "app")
	for i := range 3 {
		if d := e.ChargeRecipient(ctx, p, "app"); d != nil {
			t.Fatalf("recipient %d: %v", i+1, d)
		}
	}
	r.Cancel() // the message was abandoned: its recipients stay charged
	d := e.ChargeRecipient(ctx, p, "app")
	if d == nil || d.Kind != RateLimited || d.Rule != "rate.recipients 3/1h" || d.RetryAfter != 20*time.Minute {
		t.Fatalf("4th recipient after Cancel: %+v, want RateLimited for 20m", d)
	}
	if d := e.ChargeRecipient(ctx, p, "other"); d != nil {
		t.Errorf("other user: %v", d)
	}
	if d := e.ChargeRecipientIP(ctx, p, "10.0.0.1"); d != nil {
		t.Errorf("network client: %v", d)
	}
	// Messages and recipients are separate buckets.
	if _, d := e.ReserveMessage(ctx, p, "app"); d != nil {
		t.Errorf("message after recipients ran out: %v, want allowed", d)
	}
}

func TestEvictionBoundsMemory(t *testing.T) {
	t.Parallel()
	c := newClock()
	e, err := New(rateConfig(mustRate(1, time.Hour, 0), config.Rate{}), Options{Now: c.Now, MaxKeys: 640})
	if err != nil {
		t.Fatal(err)
	}
	p := e.Lookup("default")
	ctx := context.Background()
	if _, d := e.ReserveMessage(ctx, p, "early"); d != nil {
		t.Fatal(d)
	}
	allowed := 0
	for i := range 5000 {
		if _, d := e.ReserveMessage(ctx, p, "user"+strconv.Itoa(i)); d == nil {
			allowed++
		}
	}
	// 640 keys (10 per shard) plus at most one overflow bucket per shard.
	if n := e.buckets.len(); n > 640+gcraShards {
		t.Errorf("%d buckets after 5000 users, want at most %d", n, 640+gcraShards)
	}
	// Users beyond the cap share overflow buckets: limited, not handed fresh bursts.
	if allowed >= 5000 || allowed < 640 {
		t.Errorf("%d of 5000 users allowed, want between 640 and 4999", allowed)
	}
	// A drained bucket is never evicted: "early" must not get a new burst.
	e.buckets.sweep(c.Now())
	if _, d := e.ReserveMessage(ctx, p, "early"); d == nil {
		t.Error("early user allowed again after a sweep: its drained bucket was evicted")
	}
	c.Advance(time.Hour)
	e.buckets.sweep(c.Now())
	if n := e.buckets.len(); n != 0 {
		t.Errorf("%d buckets after every bucket refilled, want 0", n)
	}
}

func TestRoute(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{
		Users: []config.User{{Name: "marketing", Policy: "marketing"}, {Name: "app"}},
		Policies: map[string]*config.Policy{
			"default":   {},
			"marketing": {Upstreams: []string{"sendgrid", "mailgun"}},
		},
		Routes: []config.Route{
			{SenderDomains: []string{"News.Example.com"}, Upstreams: []string{"mailgun"}},
			{Users: []string{"app"}, SenderDomains: []string{"billing.example.com"}, Upstreams: []string{"postmark"}},
			{Users: []string{"marketing"}, Upstreams: []string{"ses", "sendgrid"}},
		},
		Upstreams: []config.Upstream{
			{Name: "ses", Profile: "ses"}, {Name: "sendgrid", Profile: "sendgrid"},
			{Name: "mailgun", Profile: "mailgun"}, {Name: "postmark", Profile: "postmark"}, {Name: "plain"},
		},
	}
	e := newEngine(t, cfg, newClock())
	def, mkt := e.Lookup("default"), e.Lookup("marketing")
	const all = "ses,sendgrid,mailgun,postmark,plain"
	tests := []struct {
		p            *Policy
		user, domain string
		want         string
		profile      string
	}{
		{def, "app", "news.example.COM", "mailgun", "mailgun"},       // by domain, any case
		{mkt, "marketing", "news.example.com", "mailgun", "mailgun"}, // first match wins
		{def, "app", "billing.example.com", "postmark", "postmark"},  // user and domain
		{def, "other", "billing.example.com", all, "ses"},            // domain alone is not enough
		{mkt, "marketing", "example.com", "ses,sendgrid", "ses"},     // by user; strictest profile
		{def, "app", "example.com", all, "ses"},                      // every upstream: strictest of all
	}
	for _, tt := range tests {
		r := e.Route(tt.p, tt.user, tt.domain)
		if strings.Join(r.Upstreams, ",") != tt.want || r.Profile != tt.profile {
			t.Errorf("Route(%s, %s, %s) = %v %s, want [%s] %s", tt.p.Name, tt.user, tt.domain, r.Upstreams, r.Profile, tt.want, tt.profile)
		}
	}
	// Without a matching route, the policy's own upstreams.
	cfg.Routes = cfg.Routes[:1]
	e = newEngine(t, cfg, newClock())
	if r := e.Route(e.Lookup("marketing"), "marketing", "example.com"); strings.Join(r.Upstreams, ",") != "sendgrid,mailgun" || r.Profile != "mailgun" {
		t.Errorf("policy route = %v %s, want [sendgrid mailgun] mailgun", r.Upstreams, r.Profile)
	}
	cfg.Upstreams = []config.Upstream{{Name: "plain", TLS: config.TLSStartTLS}, {Name: "mailgun", TLS: config.TLSStartTLSOptional}}
	e = newEngine(t, cfg, newClock())
	if r := e.Route(e.Lookup("default"), "app", "example.com"); r.Profile != "generic" || strings.Join(r.TLSOnly, ",") != "plain" {
		t.Errorf("route of unprofiled upstreams = %+v, want profile generic, TLS-only [plain]", r)
	}
	cfg.Routes = []config.Route{{Upstreams: []string{"nope"}}}
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("route to an unknown upstream: err = %v", err)
	}
}

// TestInheritKeepsLimits: a reload (a new Engine that inherits the old one)
// gives no fresh burst and unblocks no address.
func TestInheritKeepsLimits(t *testing.T) {
	t.Parallel()
	c := newClock()
	cfg := rateConfig(mustRate(2, time.Hour, 0), config.Rate{})
	old := newEngine(t, cfg, c)
	ctx := context.Background()
	for range 2 {
		if _, d := old.ReserveMessage(ctx, old.Lookup("default"), "app"); d != nil {
			t.Fatal(d)
		}
	}
	for range 10 {
		old.AuthFailed(ctx, "192.0.2.9")
	}
	fresh := newEngine(t, cfg, c)
	fresh.Inherit(old)
	if _, d := fresh.ReserveMessage(ctx, fresh.Lookup("default"), "app"); d == nil || d.Kind != RateLimited {
		t.Errorf("after reload: %v, want RateLimited", d)
	}
	if !fresh.Blocked(ctx, "192.0.2.9") {
		t.Error("after reload: a blocked address is unblocked")
	}
}

func TestSplit(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{
		Users: []config.User{{Name: "app"}, {Name: "bulk"}},
		Policies: map[string]*config.Policy{
			"default": {Upstreams: []string{"primary"}},
		},
		Routes: []config.Route{
			{Users: []string{"bulk"}, Upstreams: []string{"mailgun"}}, // a sender route first: it wins for every recipient
			{RecipientDomains: []string{"Gmail.test", "googlemail.test"}, Upstreams: []string{"gmail"}},
			{RecipientDomains: []string{"corp.test"}, SenderDomains: []string{"example.com"}, Upstreams: []string{"corp"}},
		},
		Upstreams: []config.Upstream{
			{Name: "primary", Profile: "sendgrid"}, {Name: "gmail", Profile: "ses"},
			{Name: "mailgun", Profile: "mailgun"}, {Name: "corp"},
		},
	}
	e := newEngine(t, cfg, newClock())
	def := e.Lookup("default")
	show := func(gs []Group) string {
		var parts []string
		for _, g := range gs {
			parts = append(parts, strings.Join(g.Upstreams, ",")+":"+strings.Join(g.Recipients, ","))
		}
		return strings.Join(parts, " ")
	}
	tests := []struct {
		user, domain string
		rcpts        []string
		want         string
		profile      string
	}{
		// Split in the order of the first recipient of each group; the
		// signing profile is the strictest of every group.
		{"app", "example.com", []string{"r2@other.test", "r1@GMAIL.TEST", "r3@googlemail.test.", "r4@other.test"},
			"primary:r2@other.test,r4@other.test gmail:r1@GMAIL.TEST,r3@googlemail.test.", "ses"},
		// Every key must match: corp.test routes only for example.com senders.
		{"app", "example.com", []string{"a@corp.test", "b@gmail.test"}, "corp:a@corp.test gmail:b@gmail.test", "ses"},
		{"app", "example.org", []string{"a@corp.test", "b@other.test"}, "primary:a@corp.test,b@other.test", "sendgrid"},
		// The first matching route wins: bulk's sender route precedes the recipient routes.
		{"bulk", "example.com", []string{"a@gmail.test", "b@other.test"}, "mailgun:a@gmail.test,b@other.test", "mailgun"},
		// A recipient without a domain takes the sender's route.
		{"app", "example.com", []string{"postmaster", "a@gmail.test"}, "primary:postmaster gmail:a@gmail.test", "ses"},
		// No recipients: the sender's route.
		{"app", "example.com", nil, "primary:", "sendgrid"},
	}
	for _, tt := range tests {
		gs, profile := e.Split(def, tt.user, tt.domain, tt.rcpts)
		if got := show(gs); got != tt.want || profile != tt.profile {
			t.Errorf("Split(%s, %s, %q) = %s %s, want %s %s", tt.user, tt.domain, tt.rcpts, got, profile, tt.want, tt.profile)
		}
	}
	// Route, the sender's route, never takes a recipient route.
	if r := e.Route(def, "app", "example.com"); strings.Join(r.Upstreams, ",") != "primary" {
		t.Errorf("Route = %v, want [primary]", r.Upstreams)
	}
}

func TestMasquerade(t *testing.T) {
	t.Parallel()
	cfg := &config.Config{
		Users: []config.User{{Name: "app"}},
		Policies: map[string]*config.Policy{"default": {Masquerade: []config.Masquerade{
			{Match: "*@corp.local", To: "{local}@example.com"},
			{Match: "build@*", To: "{user}+build@example.com"},
			{Match: "{user}@hosts.local", To: "{user}@example.org"},
		}}},
	}
	e := newEngine(t, cfg, newClock())
	p := e.Lookup("default")
	for _, tt := range []struct{ user, addr, want string }{
		{"app", "scanner@corp.local", "scanner@example.com"},
		{"app", "<Scanner@CORP.local>", "Scanner@example.com"}, // the local part keeps its case
		{"", "scanner@corp.local", "scanner@example.com"},      // a client admitted by network
		{"app", "build@ci.local", "app+build@example.com"},
		{"", "build@ci.local", ""}, // {user} needs a user: the next rule, none
		{"app", "app@hosts.local", "app@example.org"},
		{"app", "other@hosts.local", ""},
		{"app", "scanner@example.com", ""},
		{"app", "", ""}, // the null sender is never rewritten
	} {
		got, ok := p.Masquerade(tt.user, tt.addr)
		if got != tt.want || ok != (tt.want != "") {
			t.Errorf("Masquerade(%q, %q) = %q %v, want %q", tt.user, tt.addr, got, ok, tt.want)
		}
	}
}

// TestPatternUTF8: patterns match UTF-8 addresses (SMTPUTF8, DESIGN §8.5),
// case-folded as ASCII ones are; the fold never merges two different names.
func TestPatternUTF8(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern, addr string
		want          bool
	}{
		{"jörg@bücher.example", "jörg@bücher.example", true},
		{"jörg@bücher.example", "JÖRG@BÜCHER.example", true},
		{"JÖRG@Bücher.example", "jörg@bücher.example", true},
		{"*@bücher.example", "δοκιμή@bücher.example", true},
		{"*@bücher.example", "jörg@bucher.example", false},
		{"jörg@*", "jorg@bücher.example", false},
		{"*@例え.jp", "用户@例え.jp", true},
		{"*@例え.jp", "用户@例え.jpx", false},
	}
	for _, tt := range tests {
		p, err := compilePattern(tt.pattern)
		if err != nil {
			t.Fatalf("compile %q: %v", tt.pattern, err)
		}
		if got := p.match("", tt.addr); got != tt.want {
			t.Errorf("%q.match(%q) = %v, want %v", tt.pattern, tt.addr, got, tt.want)
		}
	}
}
