package config

import (
	"cmp"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/golden"
)

var update = flag.Bool("update", false, "rewrite golden files (testdata/bad/*.err, testdata/good/*.summary)")

// testLoader has a fixed environment and host name, so tests run in parallel
// and never depend on the machine.
func testLoader(env map[string]string) *Loader {
	return &Loader{
		Getenv: func(name string) (string, bool) {
			v, ok := env[name]
			return v, ok
		},
		Hostname: func() (string, error) { return "mx.test.example", nil },
	}
}

var testEnv = map[string]string{
	"SES_USER":         "AKIAEXAMPLE",
	"MAILGUN_PASSWORD": "mg-secret",
	"WEBHOOK_SECRET":   "hook-secret",
}

// TestBad loads every testdata/bad/NN-name.yaml and compares the complete
// error text with NN-name.err.
func TestBad(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad configs: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			t.Parallel()
			c, err := testLoader(map[string]string{"SES_USER": "u", "EMPTY_HOSTNAME": ""}).Load(f)
			if err == nil {
				t.Fatalf("loaded without error:\n%s", Summary(c))
			}
			var es Errors
			if !errors.As(err, &es) {
				t.Fatalf("error is %T, want config.Errors", err)
			}
			golden.Check(t, strings.TrimSuffix(f, ".yaml")+".err", []byte(err.Error()+"\n"), *update)
		})
	}
}

func loadGood(t *testing.T, name string) *Config {
	t.Helper()
	c, err := testLoader(testEnv).Load(filepath.Join("testdata/good", name))
	if err != nil {
		t.Fatalf("load %s:\n%v", name, err)
	}
	return c
}

// TestFull loads DESIGN §2's example and checks what each package will read.
func TestFull(t *testing.T) {
	t.Parallel()
	c := loadGood(t, "full.yaml")
	dir := "testdata/good"
	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", what, got, want)
		}
	}
	check("Path", c.Path, "testdata/good/full.yaml")
	check("Hostname", c.Hostname, "relay.example.com")
	check("StateDir", c.StateDir, "testdata/state")
	check("ShutdownTimeout", c.ShutdownTimeout, 30*time.Second)
	check("TLS", c.TLS, TLS{CertFile: "testdata/keys/fullchain.pem", KeyFile: "testdata/keys/privkey.pem", MinVersion: "1.2"})

	check("listeners", len(c.Listeners), 4)
	check("listeners[0]", c.Listeners[0], Listener{Name: "submission", Address: ":587", TLS: "starttls", Auth: "required",
		Policy: "default", MaxConnections: 1000, MaxConnectionsPerIP: 50, Line: 14})
	check("listeners[1].TLS", c.Listeners[1].TLS, "implicit")
	legacy := c.Listeners[3]
	check("legacy.TrustedNetworks", legacy.TrustedNetworks, []string{"10.20.0.0/16", "192.0.2.15/32", "2001:db8::1/128"})
	check("legacy.Policy", legacy.Policy, "legacy")
	check("legacy.TrustedProxies", legacy.TrustedProxies, []string{})
	check("legacy.Line", legacy.Line, 26)

	check("users", c.Users, []User{
		{Name: "billing-app", PasswordHash: "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
			Policy: "transactional", File: "testdata/good/full.yaml", Line: 38},
		{Name: "cron", PasswordHash: "$argon2id$v=19$m=19456,t=1,p=1$c29tZXNhbHQxMjM0$Rr1KkWXRDO7v1R3NV0OdaVBvSOW7xJpl9kAdo5zjCQU",
			Policy: "default", File: dir + "/full.users", Line: 2},
		{Name: "printer", PasswordHash: "$2b$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
			Policy: "legacy", File: dir + "/full.users", Line: 4},
	})
	check("UsersFile", c.UsersFile, dir+"/full.users")

	def := c.Policy("default")
	check("default policy", *def, Policy{
		AllowedSenders:    []string{"*@example.com"},
		AllowedRecipients: []string{},
		DeniedRecipients:  []string{},
		MaxMessageSize:    25_000_000,
		MaxRecipients:     100,
		Rate: PolicyRate{
			Messages:   Rate{N: 100, Per: time.Minute, Burst: 20},
			Recipients: Rate{N: 5000, Per: 24 * time.Hour, Burst: 5000},
		},
		Upstreams:     []string{"primary", "backup"},
		RemoveHeaders: []string{"X-Originating-IP"},
	})
	tr := c.Policy("transactional")
	check("transactional.MaxMessageSize", tr.MaxMessageSize, Size(10<<20))
	check("transactional.MaxRecipients", tr.MaxRecipients, 100)
	check("transactional.Rate.Messages", tr.Rate.Messages, Rate{N: 3, Per: time.Minute, Burst: 3})
	check("transactional.Rate.Recipients unlimited", tr.Rate.Recipients.Unlimited(), true)
	check("legacy.RequireDKIM", c.Policy("legacy").RequireDKIM, true)
	check("legacy.AllowPercentHack", c.Policy("legacy").AllowPercentHack, true)
	check("transactional.KeepBcc", tr.KeepBcc, true)
	if c.Policy("nope") != nil {
		t.Error(`Policy("nope") is not nil`)
	}

	check("routes", c.Routes, []Route{{SenderDomains: []string{"news.example.com"}, Upstreams: []string{"mailgun-news"}}})
	check("dkim", c.DKIM, []DKIMKey{
		{Domain: "example.com", Selector: "s2026r", KeyFile: "testdata/keys/example.com.rsa.pem"},
		{Domain: "example.com", Selector: "s2026e", KeyFile: "testdata/keys/example.com.ed25519.pem"},
	})

	check("upstreams", len(c.Upstreams), 4)
	check("primary", c.Upstreams[0], Upstream{
		Name: "primary", Type: "smtp", Host: "email-smtp.eu-west-1.amazonaws.com", Ports: []int{587, 2525},
		TLS: "starttls", Profile: "ses", Username: "AKIAEXAMPLE", Password: "AKIAEXAMPLESESPASSWORD",
		AuthMechanism: "plain", Priority: 10, Weight: 1, MaxConnections: 10,
		Rate: Rate{N: 14, Per: time.Second, Burst: 14}, BreakerBackoff: 30 * time.Second,
		Timeout: 60 * time.Second, ConnectTimeout: 15 * time.Second, GreetingTimeout: 20 * time.Second,
	})
	check("backup.Ports", c.Upstreams[1].Ports, []int{25, 2525, 587})
	check("backup.Priority", c.Upstreams[1].Priority, 20)
	check("backup.Profile", c.Upstreams[1].Profile, "generic")
	check("backup.FailoverOn5xx", c.Upstreams[1].FailoverOn5xx, true)
	check("backup timeouts", []time.Duration{c.Upstreams[1].Timeout, c.Upstreams[1].ConnectTimeout, c.Upstreams[1].GreetingTimeout},
		[]time.Duration{2 * time.Minute, 10 * time.Second, 30 * time.Second})
	mg := c.Upstreams[2]
	check("mailgun.Ports (default)", mg.Ports, []int{587, 2525})
	check("mailgun.Password (${ENV})", mg.Password, "mg-secret")
	local := c.Upstreams[3]
	check("local.Type", local.Type, "maildir")
	check("local.Path", local.Path, "testdata/good/sluice-dev/mail")
	check("local.Ports", local.Ports, []int(nil))

	check("queue", c.Queue, Queue{
		Retry: []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, 30 * time.Minute,
			time.Hour, 2 * time.Hour, 4 * time.Hour},
		MaxAge: 5 * 24 * time.Hour, Workers: 32, BounceFrom: "MAILER-DAEMON@relay.example.com", DelayWarning: 4 * time.Hour,
		WebhookEvents: DefaultWebhookEvents(),
		WebhookSecret: "hook-secret", MinFreeSpace: 100_000_000,
	})
	check("http", c.HTTP.Address, "127.0.0.1:8025")
	check("ratelimit.fail_open", *c.RateLimit.FailOpen, true)
	check("log", c.Log, Log{Format: "text", Level: "info"})

	golden.Check(t, "testdata/good/full.summary", []byte(Summary(c)), *update)
}

// TestMinimal checks every default a short file leaves to the loader.
func TestMinimal(t *testing.T) {
	t.Parallel()
	c := loadGood(t, "minimal.yaml")
	if c.Hostname != "mx.test.example" || c.StateDir != "/var/lib/sluice" || c.ShutdownTimeout != 30*time.Second {
		t.Errorf("hostname, state_dir, shutdown_timeout = %q, %q, %v", c.Hostname, c.StateDir, c.ShutdownTimeout)
	}
	if c.TLS.MinVersion != "1.2" {
		t.Errorf("tls.min_version = %q", c.TLS.MinVersion)
	}
	l := c.Listeners[0]
	if l.TLS != "starttls" || l.Auth != "required" || l.Policy != "default" || l.MaxConnections != 1000 || l.MaxConnectionsPerIP != 50 {
		t.Errorf("listener defaults: %+v", l)
	}
	p := c.Policy("default")
	if p == nil || p.MaxMessageSize != 25_000_000 || p.MaxRecipients != 100 || !p.Rate.Messages.Unlimited() {
		t.Errorf("default policy: %+v", p)
	}
	wantPorts := map[string][]int{"ses": {587, 2587}, "pm": {587, 2525}, "imp": {465, 2465}, "plain": {25}}
	for _, u := range c.Upstreams {
		if !slices.Equal(u.Ports, wantPorts[u.Name]) {
			t.Errorf("upstream %s ports = %v, want %v", u.Name, u.Ports, wantPorts[u.Name])
		}
		if u.Type != "smtp" || u.AuthMechanism != "plain" || u.Priority != 10 || u.Weight != 1 ||
			u.MaxConnections != 10 || u.BreakerBackoff != 30*time.Second || u.Timeout != time.Minute ||
			u.ConnectTimeout != 15*time.Second {
			t.Errorf("upstream %s defaults: %+v", u.Name, u)
		}
	}
	if c.Upstreams[3].TLS != "none" || c.Upstreams[0].TLS != "starttls" {
		t.Errorf("upstream tls: %q, %q", c.Upstreams[3].TLS, c.Upstreams[0].TLS)
	}
	q := c.Queue
	if !slices.Equal(q.Retry, DefaultRetry()) || q.MaxAge != 5*24*time.Hour || q.Workers != 32 ||
		q.BounceFrom != "MAILER-DAEMON@mx.test.example" || q.MinFreeSpace != 100_000_000 {
		t.Errorf("queue defaults: %+v", q)
	}
	if c.RateLimit.FailOpen == nil || !*c.RateLimit.FailOpen || c.Log != (Log{"text", "info"}) {
		t.Errorf("ratelimit/log defaults: %v %+v", c.RateLimit.FailOpen, c.Log)
	}
}

const base = `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
upstreams: [{name: u, host: smtp.example.com}]
`

func parse(t *testing.T, env map[string]string, files map[string]string, yaml string) (*Config, error) {
	t.Helper()
	l := testLoader(env)
	l.ReadFile = func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, &os.PathError{Op: "open", Path: p, Err: os.ErrNotExist}
	}
	return l.Parse([]byte(yaml), "/etc/sluice/sluice.yaml")
}

func TestEnvAndSecrets(t *testing.T) {
	t.Parallel()
	env := map[string]string{"USER_NAME": "alice", "EMPTY": ""}
	files := map[string]string{
		"/etc/sluice/pw":            "s3cret\n",
		"/run/secrets/refresh":      "rt\r\n",
		"/etc/sluice/client-secret": "cs",
		"/etc/sluice/hook":          "hk\n",
	}
	c, err := parse(t, env, files, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
users:
  - name: ${USER_NAME}${EMPTY}
    password_hash: "$2y$10$abc$def"
users_file: ""
queue: {webhook: "https://hooks.example.com/x", webhook_secret_file: hook}
upstreams:
  - name: u
    host: smtp.example.com
    username: ${USER_NAME}
    password_file: pw
  - name: o
    host: smtp.office365.com
    auth_mechanism: xoauth2
    username: alice@example.com
    oauth2:
      token_url: https://login.example.com/token
      client_id: id
      client_secret_file: client-secret
      refresh_token_file: /run/secrets/refresh
`)
	if err != nil {
		t.Fatal(err)
	}
	if u := c.Users[0]; u.Name != "alice" || u.PasswordHash != "$2y$10$abc$def" {
		t.Errorf("user = %+v", u)
	}
	if c.Upstreams[0].Username != "alice" || c.Upstreams[0].Password != "s3cret" {
		t.Errorf("upstream credentials = %q, %q", c.Upstreams[0].Username, c.Upstreams[0].Password)
	}
	if o := c.Upstreams[1].OAuth2; o.ClientSecret != "cs" || o.RefreshToken != "rt" {
		t.Errorf("oauth2 = %+v", o)
	}
	if c.Queue.WebhookSecret != "hk" {
		t.Errorf("webhook secret = %q", c.Queue.WebhookSecret)
	}
}

// TestDollarKept: a "$" not followed by "{" is data (bcrypt and argon2 hashes).
func TestDollarKept(t *testing.T) {
	t.Parallel()
	const hash = "$argon2id$v=19$m=19456,t=1,p=1$c2FsdA$aGFzaA"
	c, err := parse(t, nil, nil, base+"users: [{name: a, password_hash: '"+hash+"'}]\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.Users[0].PasswordHash != hash {
		t.Errorf("hash = %q, want %q", c.Users[0].PasswordHash, hash)
	}
}

func TestErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		env   map[string]string
		files map[string]string
		yaml  string
		want  string
	}{
		{"both password and password_file", nil, map[string]string{"/etc/sluice/pw": "x"}, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
upstreams:
  - name: u
    host: h
    username: n
    password: p
    password_file: pw
`, "/etc/sluice/sluice.yaml:9: upstreams[0].password_file: password and password_file are both set; use one"},
		{"missing secret file", nil, nil, base + "queue: {webhook_secret_file: /nope}\n",
			"/etc/sluice/sluice.yaml:5: queue.webhook_secret_file: open /nope: file does not exist"},
		{"empty secret file", nil, map[string]string{"/s": "\n"}, base + "queue: {webhook_secret_file: /s}\n",
			"/etc/sluice/sluice.yaml:5: queue.webhook_secret_file: /s is empty"},
		{"unterminated", nil, nil, base + "hostname: ${HOST\n",
			`/etc/sluice/sluice.yaml:5: hostname: unterminated "${HOST"`},
		{"bad name", nil, nil, base + "hostname: ${1X}\n",
			`/etc/sluice/sluice.yaml:5: hostname: bad variable name in "${1X}"`},
		{"duplicate key", nil, nil, base + "hostname: a\nhostname: b\n",
			"/etc/sluice/sluice.yaml:6: hostname: duplicate key"},
		{"yaml syntax", nil, nil, "listeners: [\n",
			"/etc/sluice/sluice.yaml:1: yaml: did not find expected node content"},
		{"yaml indent", nil, nil, "hostname: a\nlisteners:\n  - name: s\n    address: x\n   tls: none\nlog: {}\n",
			"/etc/sluice/sluice.yaml:5: yaml: did not find expected '-' indicator"},
		{"two documents", nil, nil, base + "---\nhostname: x\n",
			"/etc/sluice/sluice.yaml:5: yaml: only one document is allowed"},
		{"postmark implicit", nil, nil, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
upstreams: [{name: pm, host: smtp.postmarkapp.com, profile: postmark, tls: implicit}]
`, "/etc/sluice/sluice.yaml:4: upstreams[0].tls: profile postmark does not offer implicit TLS"},
		{"xoauth2 incomplete", nil, nil, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
upstreams:
  - name: o
    host: h
    auth_mechanism: xoauth2
    oauth2: {client_id: x}
`, "/etc/sluice/sluice.yaml:5: upstreams[0].username: xoauth2 needs username (the mailbox)\n" +
			"/etc/sluice/sluice.yaml:8: upstreams[0].oauth2.refresh_token: xoauth2 needs oauth2.refresh_token\n" +
			"/etc/sluice/sluice.yaml:8: upstreams[0].oauth2.token_url: xoauth2 needs oauth2.token_url"},
		{"explicit zero", nil, nil, base + "queue: {workers: 0, retry: []}\n",
			"/etc/sluice/sluice.yaml:5: queue.retry: must list at least one interval\n" +
				"/etc/sluice/sluice.yaml:5: queue.workers: must be at least 1"},
		{"merge keys", nil, nil, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
base: &b {host: h, tls: implicit}
upstreams: [{<<: *b, name: u, bogus: 1}]
`, "/etc/sluice/sluice.yaml:4: base: unknown key\n" +
			"/etc/sluice/sluice.yaml:5: upstreams[0].bogus: unknown key"},
		{"negative duration", nil, nil, base + "shutdown_timeout: -5s\n",
			`/etc/sluice/sluice.yaml:5: shutdown_timeout: duration "-5s" must not be negative`},
		{"no proxies", nil, nil, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587", proxy_protocol: true, max_connections: 0}]
upstreams: [{name: u, host: h}]
`, "/etc/sluice/sluice.yaml:3: listeners[0].max_connections: must be at least 1\n" +
			"/etc/sluice/sluice.yaml:3: listeners[0].proxy_protocol: proxy_protocol needs trusted_proxies"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := parse(t, tt.env, tt.files, tt.yaml)
			if err == nil {
				t.Fatal("no error")
			}
			if err.Error() != tt.want {
				t.Errorf("got:\n%s\nwant:\n%s", err, tt.want)
			}
		})
	}
}

// TestMergeKeys: a merged mapping supplies values an item does not set itself.
func TestMergeKeys(t *testing.T) {
	t.Parallel()
	c, err := parse(t, nil, nil, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
upstreams:
  - &sg {name: a, host: smtp.sendgrid.net, profile: sendgrid, priority: 5}
  - {<<: *sg, name: b, priority: 6}
`)
	if err != nil {
		t.Fatal(err)
	}
	b := c.Upstreams[1]
	if b.Name != "b" || b.Host != "smtp.sendgrid.net" || b.Profile != "sendgrid" || b.Priority != 6 {
		t.Errorf("merged upstream = %+v", b)
	}
}

// TestRevalidate: a loaded config passes validation again unchanged, which
// is what callers that adjust a loaded Config rely on.
func TestRevalidate(t *testing.T) {
	t.Parallel()
	c := loadGood(t, "full.yaml")
	v := &validator{l: testLoader(testEnv), file: c.Path}
	v.validate(c)
	if len(v.errs) > 0 {
		t.Fatal(v.errs)
	}
}

func TestLoadMissingFile(t *testing.T) {
	t.Parallel()
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if err == nil || !strings.HasSuffix(err.Error(), "nope.yaml: cannot read: no such file or directory") {
		t.Errorf("err = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	// Small seeds: the fuzzer minimises every interesting input, and the
	// full example (RSA key, certificate) costs milliseconds per run.
	for _, name := range []string{"good/minimal.yaml", "bad/01-unknown-key.yaml", "bad/13-several-errors.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(string(b))
	}
	f.Add(base)
	f.Add(base + "users_file: users\nusers: [{name: a, password_hash: $2a$x, policy: p}]\npolicies: {p: {rate: {messages: 3/1m}}}\n")
	f.Add(base + "routes: [{sender_domains: [x.example], upstreams: [u]}]\nqueue: {retry: [1m, 1d], webhook_secret_file: s}\n")
	f.Add(base + "x: &a {<<: *a}\n")
	f.Add("a: &a [*a, *a]\n")
	l := testLoader(testEnv)
	files := map[string]string{
		"testdata/good/users": "b:$argon2id$x\n# c\nc:$2b$y:p\n",
		"testdata/good/s":     "secret\n",
	}
	l.ReadFile = func(p string) ([]byte, error) {
		if s, ok := files[p]; ok {
			return []byte(s), nil
		}
		return nil, os.ErrNotExist
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := l.Parse([]byte(s), "testdata/good/fuzz.yaml")
		if err != nil {
			var es Errors
			if !errors.As(err, &es) || len(es) == 0 {
				t.Fatalf("error %T %v is not a non-empty config.Errors", err, err)
			}
			if !slices.IsSortedFunc(es, func(a, b Error) int {
				return cmp.Or(strings.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line))
			}) {
				t.Fatalf("errors not sorted:\n%v", err)
			}
			return
		}
		if Summary(c) == "" {
			t.Fatal("empty summary")
		}
		v := &validator{l: l, file: c.Path}
		v.validate(c)
		if len(v.errs) > 0 {
			t.Fatalf("a loaded config fails validation again:\n%v\ninput:\n%s", v.errs, s)
		}
	})
}

// TestDocsExample keeps the example in docs/configuration.md valid and its
// printed summary true.
func TestDocsExample(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "## A complete example")
	if !ok {
		t.Fatal("no example section")
	}
	_, rest, _ = strings.Cut(rest, "```yaml\n")
	example, rest, _ := strings.Cut(rest, "```")
	_, rest, _ = strings.Cut(rest, "```\n")
	summary, _, _ := strings.Cut(rest, "```")

	files := map[string]string{
		"/etc/sluice/tls/fullchain.pem":            "testdata/keys/fullchain.pem",
		"/etc/sluice/tls/privkey.pem":              "testdata/keys/privkey.pem",
		"/etc/sluice/dkim/example.com.rsa.pem":     "testdata/keys/example.com.rsa.pem",
		"/etc/sluice/dkim/example.com.ed25519.pem": "testdata/keys/example.com.ed25519.pem",
		"/etc/sluice/users":                        "testdata/good/full.users",
		"/run/secrets/ses":                         "testdata/good/ses.secret",
	}
	l := testLoader(map[string]string{"SES_USER": "u", "SENDGRID_API_KEY": "k"})
	l.ReadFile = func(p string) ([]byte, error) {
		if f, ok := files[p]; ok {
			return os.ReadFile(f)
		}
		return nil, &os.PathError{Op: "open", Path: p, Err: os.ErrNotExist}
	}
	c, err := l.Parse([]byte(example), "/etc/sluice/sluice.yaml")
	if err != nil {
		t.Fatalf("the documented example does not load:\n%v", err)
	}
	got := Summary(c)
	for _, line := range strings.Split(strings.TrimSpace(summary), "\n") {
		if line != "…" && !strings.Contains(got, line+"\n") {
			t.Errorf("documented summary line %q not in:\n%s", line, got)
		}
	}
}

// TestSummaryZero: Summary of a hand-built, unvalidated Config (as cmd/sluice
// might print in dev mode) does not panic and names what it has.
func TestSummaryZero(t *testing.T) {
	t.Parallel()
	s := Summary(&Config{Policies: map[string]*Policy{"default": nil}})
	if !strings.Contains(s, "config:     (built in)\n") || !strings.Contains(s, "listeners: 0\n") {
		t.Errorf("summary:\n%s", s)
	}
}

// TestSummaryInsecureAuth: a listener that offers AUTH without TLS says so
// in the check-config summary, next to its connection limits.
func TestSummaryInsecureAuth(t *testing.T) {
	t.Parallel()
	s := Summary(&Config{Listeners: []Listener{{Name: "lan", Address: ":25", TLS: "none", Auth: AuthRequired,
		MaxConnections: 100, MaxConnectionsPerIP: 5, AllowInsecureAuth: true}}})
	if want := "  lan  :25  none  auth=required  conns 100/5 per ip allow_insecure_auth\n"; !strings.Contains(s, want) {
		t.Errorf("summary lacks %q:\n%s", want, s)
	}
}
