// Package config is the schema of sluice.yaml: the typed values every other
// package is handed at construction, their defaults, and validation whose
// errors name file, line and key. Only cmd/sluice loads a file; the packages
// along the journey (relay, policy, signing, queue, upstream) read these
// structs and never touch YAML or the environment themselves.
package config

import "time"

// Config is one loaded, validated configuration.
type Config struct {
	Path string `yaml:"-"` // the file it came from ("" for the embedded dev config)

	Hostname        string        `yaml:"hostname"`
	StateDir        string        `yaml:"state_dir"`
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`

	TLS       TLS                `yaml:"tls"`
	Listeners []Listener         `yaml:"listeners"`
	Users     []User             `yaml:"users"`
	UsersFile string             `yaml:"users_file"`
	Policies  map[string]*Policy `yaml:"policies"`
	Routes    []Route            `yaml:"routes"`
	DKIM      []DKIMKey          `yaml:"dkim"`
	Upstreams []Upstream         `yaml:"upstreams"`
	Queue     Queue              `yaml:"queue"`
	HTTP      HTTP               `yaml:"http"`
	Journal   Journal            `yaml:"journal"`
	RateLimit RateLimit          `yaml:"ratelimit"`
	Log       Log                `yaml:"log"`

	// DKIMCheckInterval is how often serve looks up the DKIM records
	// (pending managed keys become active; metrics); default 5m.
	DKIMCheckInterval time.Duration `yaml:"dkim_check_interval"`
	// DKIMRetireAfter is how long a replaced managed key stays retiring
	// (its record must stay published) before it is retired; default 7d.
	DKIMRetireAfter time.Duration `yaml:"dkim_retire_after"`
	DNS             DNS           `yaml:"dns"`

	Suppression Suppression `yaml:"suppression"`
	Hooks       Hooks       `yaml:"hooks"`
}

// TLS is the certificate the relay presents on STARTTLS and implicit-TLS listeners.
type TLS struct {
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	SelfSigned bool   `yaml:"self_signed"`
	MinVersion string `yaml:"min_version"` // "1.2" (default) or "1.3"
}

// Listener modes.
const (
	TLSStartTLS = "starttls"
	TLSImplicit = "implicit"
	TLSNone     = "none"
	// upstream only: STARTTLS when offered, else plaintext.
	TLSStartTLSOptional = "starttls-optional"

	AuthRequired = "required"
	AuthNone     = "none"
)

// Listener is one address the relay accepts submissions on.
type Listener struct {
	Name                string   `yaml:"name"`
	Address             string   `yaml:"address"`
	TLS                 string   `yaml:"tls"`  // starttls | implicit | none
	Auth                string   `yaml:"auth"` // required | none
	TrustedNetworks     []string `yaml:"trusted_networks"`
	Policy              string   `yaml:"policy"` // policy for clients accepted by network (auth: none)
	ProxyProtocol       bool     `yaml:"proxy_protocol"`
	TrustedProxies      []string `yaml:"trusted_proxies"`
	MaxConnections      int      `yaml:"max_connections"`        // default 1000
	MaxConnectionsPerIP int      `yaml:"max_connections_per_ip"` // default 50
	// AllowInsecureAuth lets a tls: none listener offer AUTH (passwords in
	// cleartext; warned at start). Without it AUTH is offered only over TLS.
	AllowInsecureAuth bool `yaml:"allow_insecure_auth"`
	Line              int  `yaml:"-"` // line in the file, for later errors
}

// User is one SMTP AUTH identity. Users from users_file are appended to
// Config.Users by the loader, with File/Line naming where they came from.
type User struct {
	Name         string `yaml:"name"`
	PasswordHash string `yaml:"password_hash"`
	Policy       string `yaml:"policy"` // default "default"
	File         string `yaml:"-"`
	Line         int    `yaml:"-"`
}

// Policy is what one class of sender may do.
type Policy struct {
	AllowedSenders    []string   `yaml:"allowed_senders"`    // empty: any
	AllowedRecipients []string   `yaml:"allowed_recipients"` // empty: any
	DeniedRecipients  []string   `yaml:"denied_recipients"`
	MaxMessageSize    Size       `yaml:"max_message_size"` // default 25MB
	MaxRecipients     int        `yaml:"max_recipients"`   // default 100
	Rate              PolicyRate `yaml:"rate"`
	Upstreams         []string   `yaml:"upstreams"` // empty: every upstream, by priority
	RemoveHeaders     []string   `yaml:"remove_headers"`
	RequireDKIM       bool       `yaml:"require_dkim"`
	// KeepBcc keeps Bcc: and Resent-Bcc: header fields, which are
	// otherwise removed before signing (they would show blind copies to
	// every recipient).
	KeepBcc bool `yaml:"keep_bcc"`
	// AllowPercentHack accepts recipients whose local part holds % or !
	// (source routing: user%host@relay, host!user@relay), refused
	// otherwise with 553 5.1.3.
	AllowPercentHack bool `yaml:"allow_percent_hack"`
	// IgnoreSuppression lets this policy's clients send to suppressed
	// addresses (e.g. monitoring that must always try).
	IgnoreSuppression bool `yaml:"ignore_suppression"`
	// Masquerade rewrites matching sender addresses (envelope sender, and
	// header From:, Sender:, Return-Path:) before allowed_senders is
	// checked and before signing; the first matching rule applies.
	Masquerade []Masquerade `yaml:"masquerade"`
}

// Masquerade is one rewrite rule: Match is an address pattern (as in
// allowed_senders), To a template of the new address where {local} is the
// original local part and {user} the authenticated user.
type Masquerade struct {
	Match string `yaml:"match"`
	To    string `yaml:"to"`
}

// PolicyRate holds per-user rate limits; a zero Rate is unlimited.
type PolicyRate struct {
	Messages   Rate `yaml:"messages"`
	Recipients Rate `yaml:"recipients"`
}

// Route picks upstreams by sender domain, user or recipient domain, before
// the policy's list. Every key given must match; a route with
// RecipientDomains applies to the recipients in those domains only, so one
// message may be split across routes (DESIGN §8.5).
type Route struct {
	SenderDomains    []string `yaml:"sender_domains"`
	Users            []string `yaml:"users"`
	RecipientDomains []string `yaml:"recipient_domains"`
	Upstreams        []string `yaml:"upstreams"`
}

// DKIMKey is one signing key for one domain and selector (key_file), or,
// with Managed, every key Sluice keeps for the domain under
// state_dir/dkim/DOMAIN/ (`sluice dkim rotate`; DESIGN §8.4).
type DKIMKey struct {
	Domain     string   `yaml:"domain"`
	Selector   string   `yaml:"selector"`
	KeyFile    string   `yaml:"key_file"`
	Managed    bool     `yaml:"managed"`
	Algorithms []string `yaml:"algorithms"` // managed only: rsa, ed25519 (default both)
}

// DKIM key algorithms of managed keys.
const (
	AlgoRSA     = "rsa"
	AlgoEd25519 = "ed25519"
)

// DNS is how Sluice asks DNS (DKIM records of managed keys, sluice doctor).
type DNS struct {
	// Resolver is host:port of a recursive (or the zone's authoritative)
	// name server; "" means the name servers of /etc/resolv.conf.
	Resolver string        `yaml:"resolver"`
	Timeout  time.Duration `yaml:"timeout"` // per query; default 5s
}

// Upstream types.
const (
	UpstreamSMTP    = "smtp"
	UpstreamMaildir = "maildir"
)

// Upstream is one provider or smarthost Sluice forwards to.
type Upstream struct {
	Name                  string        `yaml:"name"`
	Type                  string        `yaml:"type"` // smtp (default) | maildir
	Path                  string        `yaml:"path"` // maildir only
	Host                  string        `yaml:"host"`
	Ports                 []int         `yaml:"ports"` // default by tls: starttls [587], implicit [465], none [25]
	TLS                   string        `yaml:"tls"`   // starttls (default) | implicit | none | starttls-optional
	TLSCAFile             string        `yaml:"tls_ca_file"`
	TLSServerName         string        `yaml:"tls_server_name"`
	TLSInsecureSkipVerify bool          `yaml:"tls_insecure_skip_verify"`
	Profile               string        `yaml:"profile"` // generic (default) | ses | sendgrid | postmark | mailgun
	Username              string        `yaml:"username"`
	Password              string        `yaml:"password"`       // also filled from password_file
	AuthMechanism         string        `yaml:"auth_mechanism"` // plain (default) | login | xoauth2
	OAuth2                OAuth2        `yaml:"oauth2"`
	Priority              int           `yaml:"priority"`        // lower first; default 10
	Weight                int           `yaml:"weight"`          // default 1
	MaxConnections        int           `yaml:"max_connections"` // default 10
	Rate                  Rate          `yaml:"rate"`
	BreakerBackoff        time.Duration `yaml:"breaker_backoff"` // default 30s
	FailoverOn5xx         bool          `yaml:"failover_on_5xx"`
	Timeout               time.Duration `yaml:"timeout"`          // per command; default 60s
	ConnectTimeout        time.Duration `yaml:"connect_timeout"`  // default 15s
	GreetingTimeout       time.Duration `yaml:"greeting_timeout"` // the 220 banner; default 20s

	// HTTPS API upstreams (DESIGN §8.5): api names the provider; the SMTP
	// keys above (host, ports, tls, auth) do not apply to them.
	API             string `yaml:"api"`      // ses | mailgun | graph; "" for SMTP and maildir
	Endpoint        string `yaml:"endpoint"` // base URL override (tests, private endpoints)
	Region          string `yaml:"region"`   // ses: AWS region (required); mailgun: us (default) | eu
	AccessKeyID     string `yaml:"access_key_id"`
	SecretAccessKey string `yaml:"secret_access_key"` // also secret_access_key_file; both empty: the AWS chain
	Domain          string `yaml:"domain"`            // mailgun: the sending domain
	APIKey          string `yaml:"api_key"`           // mailgun; also api_key_file
	TenantID        string `yaml:"tenant_id"`         // graph
	ClientID        string `yaml:"client_id"`         // graph
	ClientSecret    string `yaml:"client_secret"`     // graph; also client_secret_file
	User            string `yaml:"user"`              // graph: the mailbox that sends
}

// API upstream providers.
const (
	APISES     = "ses"
	APIMailgun = "mailgun"
	APIGraph   = "graph"
)

// TLSOnly reports whether the upstream never carries a message in
// plaintext: STARTTLS or implicit TLS (neither falls back), or a local
// maildir. Only such upstreams may carry a REQUIRETLS message (RFC 8689).
func (u Upstream) TLSOnly() bool {
	return u.Type == UpstreamMaildir || u.API != "" || u.TLS == TLSStartTLS || u.TLS == TLSImplicit
}

// OAuth2 is how an xoauth2 upstream obtains access tokens.
type OAuth2 struct {
	TokenURL     string `yaml:"token_url"`
	ClientID     string `yaml:"client_id"`
	ClientSecret string `yaml:"client_secret"` // also client_secret_file
	RefreshToken string `yaml:"refresh_token"` // also refresh_token_file
	Scope        string `yaml:"scope"`
}

// Queue is the spool's retry and expiry behaviour.
type Queue struct {
	Retry         []time.Duration `yaml:"retry"`   // default 1m 5m 15m 30m 1h 2h 4h
	MaxAge        time.Duration   `yaml:"max_age"` // default 5d
	Workers       int             `yaml:"workers"` // default 32
	BounceFrom    string          `yaml:"bounce_from"`
	DelayWarning  time.Duration   `yaml:"delay_warning"` // 0: off
	Webhook       string          `yaml:"webhook"`
	WebhookSecret string          `yaml:"webhook_secret"`
	MinFreeSpace  Size            `yaml:"min_free_space"` // default 100MB: below it new mail gets 451 4.3.0
	// WebhookEvents are the events POSTed to Webhook (DESIGN §8.1); default
	// DefaultWebhookEvents.
	WebhookEvents []string `yaml:"webhook_events"`
}

// HTTP serves /metrics, /healthz and /readyz, and the status page.
type HTTP struct {
	Address string `yaml:"address"` // "" : off
	// Status serves the status page on / (DESIGN §8.3), behind HTTP basic
	// auth by StatusUsers (name: password hash, as in users).
	Status      bool              `yaml:"status"`
	StatusUsers map[string]string `yaml:"status_users"`
}

// Journal bounds the delivery journal under state_dir/journal (DESIGN §8.1).
type Journal struct {
	Retention time.Duration `yaml:"retention"` // default 7d
	MaxSize   Size          `yaml:"max_size"`  // default 1GB
}

// RateLimit says where per-user limits and auth-failure counters live.
type RateLimit struct {
	Redis    string `yaml:"redis"`
	FailOpen *bool  `yaml:"fail_open"` // default true
}

// Suppression is the list of addresses that bounced hard or complained
// (DESIGN §8.2): RCPT to one of them is refused until its entry expires.
type Suppression struct {
	Enabled *bool         `yaml:"enabled"` // default true
	TTL     time.Duration `yaml:"ttl"`     // default 30d
}

// On reports whether the suppression list is in use.
func (s Suppression) On() bool { return s.Enabled == nil || *s.Enabled }

// Hooks are the providers' event webhooks on the HTTP listener; they are
// served only when Token is set.
type Hooks struct {
	Token             string        `yaml:"token"`               // also token_file
	MailgunSigningKey string        `yaml:"mailgun_signing_key"` // also mailgun_signing_key_file
	IndexTTL          time.Duration `yaml:"index_ttl"`           // how long a Message-ID stays matchable; default 7d
}

// Log is the log format and level.
type Log struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// Size is a byte count parsed from "25MB", "25MiB" or a plain number.
type Size int64

// Rate is N events per Per with a burst; the zero Rate means unlimited.
type Rate struct {
	N     int
	Per   time.Duration
	Burst int // defaults to N
}

// Unlimited reports whether r sets no limit.
func (r Rate) Unlimited() bool { return r.N == 0 }
