package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Policy returns the named policy, or nil if there is none.
func (c *Config) Policy(name string) *Policy {
	if c == nil {
		return nil
	}
	return c.Policies[name]
}

// Summary is what `sluice check-config` prints on success: the settings an
// operator wants to confirm at a glance, in a fixed order (map keys sorted)
// so the output can be diffed and golden-tested. It never prints a secret.
func Summary(c *Config) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	file := c.Path
	if file == "" {
		file = "(built in)"
	}
	fmt.Fprintf(w, "config:\t%s\n", file)
	fmt.Fprintf(w, "hostname:\t%s\n", c.Hostname)
	fmt.Fprintf(w, "state_dir:\t%s\n", c.StateDir)
	tlsLine := "none"
	switch {
	case c.TLS.CertFile != "":
		tlsLine = c.TLS.CertFile
	case c.TLS.SelfSigned:
		tlsLine = "self-signed"
	}
	fmt.Fprintf(w, "tls:\t%s (min %s)\n", tlsLine, c.TLS.MinVersion)
	w.Flush()

	fmt.Fprintf(&b, "listeners: %d\n", len(c.Listeners))
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, l := range c.Listeners {
		extra := ""
		if l.Auth == AuthNone {
			extra = " trusted=" + strings.Join(l.TrustedNetworks, ",") + " policy=" + l.Policy
		}
		if l.ProxyProtocol {
			extra += " proxy=" + strings.Join(l.TrustedProxies, ",")
		}
		if l.AllowInsecureAuth {
			extra += " allow_insecure_auth"
		}
		fmt.Fprintf(w, "  %s\t%s\t%s\tauth=%s\tconns %d/%d per ip%s\n",
			l.Name, l.Address, l.TLS, l.Auth, l.MaxConnections, l.MaxConnectionsPerIP, extra)
	}
	w.Flush()

	fmt.Fprintf(&b, "users: %d\n", len(c.Users))

	names := make([]string, 0, len(c.Policies))
	for n := range c.Policies {
		names = append(names, n)
	}
	slices.Sort(names)
	fmt.Fprintf(&b, "policies: %d\n", len(names))
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, n := range names {
		p := c.Policies[n]
		if p == nil {
			continue // only a hand-built Config has one; the loader fills them
		}
		route := "all upstreams"
		if len(p.Upstreams) > 0 {
			route = strings.Join(p.Upstreams, ",")
		}
		flags := ""
		if p.KeepBcc {
			flags += " keep_bcc"
		}
		if p.AllowPercentHack {
			flags += " allow_percent_hack"
		}
		fmt.Fprintf(w, "  %s\tmax %s\t%d rcpts\tmessages %s\trecipients %s\t-> %s%s\n",
			n, p.MaxMessageSize, p.MaxRecipients, p.Rate.Messages, p.Rate.Recipients, route, flags)
	}
	w.Flush()

	if len(c.Routes) > 0 {
		fmt.Fprintf(&b, "routes: %d\n", len(c.Routes))
		for _, r := range c.Routes {
			var match []string
			if len(r.SenderDomains) > 0 {
				match = append(match, "domains "+strings.Join(r.SenderDomains, ","))
			}
			if len(r.Users) > 0 {
				match = append(match, "users "+strings.Join(r.Users, ","))
			}
			if len(r.RecipientDomains) > 0 {
				match = append(match, "recipient domains "+strings.Join(r.RecipientDomains, ","))
			}
			fmt.Fprintf(&b, "  %s -> %s\n", strings.Join(match, " "), strings.Join(r.Upstreams, ","))
		}
	}

	fmt.Fprintf(&b, "dkim keys: %d\n", len(c.DKIM))
	for _, d := range c.DKIM {
		if d.Managed {
			fmt.Fprintf(&b, "  %s managed (%s)\n", d.Domain, strings.Join(d.Algorithms, ", "))
			continue
		}
		fmt.Fprintf(&b, "  %s/%s\n", d.Domain, d.Selector)
	}
	if c.DNS.Resolver != "" {
		fmt.Fprintf(&b, "dns resolver: %s\n", c.DNS.Resolver)
	}

	fmt.Fprintf(&b, "upstreams: %d\n", len(c.Upstreams))
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, u := range c.Upstreams {
		if u.Type == UpstreamMaildir {
			fmt.Fprintf(w, "  %s\tmaildir %s\t\tpriority %d/weight %d\n", u.Name, u.Path, u.Priority, u.Weight)
			continue
		}
		if u.API != "" {
			where := "api " + u.API
			if u.Endpoint != "" {
				where += " " + u.Endpoint
			}
			fmt.Fprintf(w, "  %s\t%s\thttps\t%s\tpriority %d/weight %d\n", u.Name, where, u.Profile, u.Priority, u.Weight)
			continue
		}
		ports := make([]string, len(u.Ports))
		for i, p := range u.Ports {
			ports[i] = strconv.Itoa(p)
		}
		rate := ""
		if !u.Rate.Unlimited() {
			rate = " rate " + u.Rate.String()
		}
		fmt.Fprintf(w, "  %s\t%s:%s\t%s\t%s\tpriority %d/weight %d%s\n",
			u.Name, u.Host, strings.Join(ports, ","), u.TLS, u.Profile, u.Priority, u.Weight, rate)
	}
	w.Flush()
	// The connection limits and timeouts of the SMTP upstreams, one line
	// each below the table so that its columns stay readable.
	for _, u := range c.Upstreams {
		if u.Type == UpstreamMaildir || u.API != "" {
			continue
		}
		failover := ""
		if u.FailoverOn5xx {
			failover = ", failover_on_5xx"
		}
		fmt.Fprintf(&b, "  %s: max_connections %d, timeout %s, connect_timeout %s, greeting_timeout %s, breaker_backoff %s%s\n",
			u.Name, u.MaxConnections, FormatDuration(u.Timeout), FormatDuration(u.ConnectTimeout),
			FormatDuration(u.GreetingTimeout), FormatDuration(u.BreakerBackoff), failover)
	}

	q := c.Queue
	retry := make([]string, len(q.Retry))
	for i, d := range q.Retry {
		retry[i] = FormatDuration(d)
	}
	delayWarning := "off"
	if q.DelayWarning > 0 {
		delayWarning = FormatDuration(q.DelayWarning)
	}
	fmt.Fprintf(&b, "queue: retry %s, max_age %s, delay_warning %s, workers %d, bounce_from %s, min_free_space %s\n",
		strings.Join(retry, " "), FormatDuration(q.MaxAge), delayWarning, q.Workers, q.BounceFrom, q.MinFreeSpace)
	if q.Webhook != "" {
		fmt.Fprintf(&b, "webhook: %s (%s)\n", q.Webhook, strings.Join(q.WebhookEvents, ","))
	}
	httpAddr := c.HTTP.Address
	if httpAddr == "" {
		httpAddr = "off"
	} else if c.HTTP.Status {
		httpAddr += fmt.Sprintf(" (status page, %d users)", len(c.HTTP.StatusUsers))
	}
	fmt.Fprintf(&b, "http: %s\n", httpAddr)
	fmt.Fprintf(&b, "journal: retention %s, max_size %s\n", FormatDuration(c.Journal.Retention), c.Journal.MaxSize)
	redis := "local"
	if c.RateLimit.Redis != "" {
		redis = redactURL(c.RateLimit.Redis)
		if c.RateLimit.FailOpen != nil && !*c.RateLimit.FailOpen {
			redis += " (fail closed)"
		}
	}
	fmt.Fprintf(&b, "ratelimit: %s\n", redis)
	supp := "off"
	if c.Suppression.On() {
		supp = "ttl " + FormatDuration(c.Suppression.TTL)
	}
	fmt.Fprintf(&b, "suppression: %s\n", supp)
	hooks := "off"
	if c.Hooks.Token != "" {
		hooks = "/hooks/{ses,mailgun,sendgrid,postmark}, index_ttl " + FormatDuration(c.Hooks.IndexTTL)
		if c.Hooks.MailgunSigningKey != "" {
			hooks += ", mailgun signatures checked"
		}
	}
	fmt.Fprintf(&b, "hooks: %s\n", hooks)
	fmt.Fprintf(&b, "log: %s %s\n", c.Log.Format, c.Log.Level)
	fmt.Fprintf(&b, "shutdown_timeout: %s\n", FormatDuration(c.ShutdownTimeout))
	return b.String()
}

// redactURL hides a password in a redis:// URL.
func redactURL(s string) string {
	at := strings.LastIndex(s, "@")
	scheme := strings.Index(s, "://")
	if at < 0 || scheme < 0 || at < scheme {
		return s
	}
	return s[:scheme+3] + "***" + s[at:]
}
