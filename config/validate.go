package config

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/sluicemail/sluice/internal/passwd"
)

// validator checks a Config with defaults filled. lines gives each dotted
// key's line (a missing key takes its nearest parent's); bad holds keys that
// already failed to decode, so one mistake is reported once.
type validator struct {
	l     *Loader
	file  string
	lines map[string]int
	bad   map[string]bool
	errs  Errors
}

func (v *validator) line(key string) int {
	for {
		if n, ok := v.lines[key]; ok {
			return n
		}
		if key == "" {
			return 0
		}
		i := max(strings.LastIndexAny(key, ".["), 0)
		key = key[:i]
	}
}

// skip reports whether key or a parent of it failed to decode.
func (v *validator) skip(key string) bool {
	for {
		if v.bad[key] {
			return true
		}
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			return false
		}
		key = key[:i]
	}
}

func (v *validator) errorf(key, format string, args ...any) {
	if v.skip(key) {
		return
	}
	v.errs = append(v.errs, Error{File: v.file, Line: v.line(key), Key: key, Problem: fmt.Sprintf(format, args...)})
}

// at reports a problem located by File/Line rather than by key (users read
// from users_file).
func (v *validator) at(file string, line int, key, format string, args ...any) {
	if v.skip(key) {
		return
	}
	v.errs = append(v.errs, Error{File: file, Line: line, Key: key, Problem: fmt.Sprintf(format, args...)})
}

func oneOf(s string, allowed ...string) bool { return slices.Contains(allowed, s) }

func hostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("address %q: want host:port (e.g. \":587\" or 127.0.0.1:8025)", s)
	}
	if strings.ContainsAny(host, " /") {
		return fmt.Errorf("address %q: bad host %q", s, host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("address %q: port %q must be a number from 0 to 65535", s, port)
	}
	return nil
}

// normalizeNets checks a list of CIDRs or bare IPs and rewrites each to its
// canonical prefix ("192.0.2.15" → "192.0.2.15/32", "10.20.1.0/16" →
// "10.20.0.0/16"), so the relay can use netip.ParsePrefix on every entry.
// atLeastOne checks a count that must be at least 1.
func (v *validator) atLeastOne(key string, n int) {
	if n < 1 {
		v.errorf(key, "must be at least 1")
	}
}

// positive checks a duration that must be above zero.
func (v *validator) positive(key string, d time.Duration) {
	if d <= 0 {
		v.errorf(key, "must be positive")
	}
}

func (v *validator) normalizeNets(list []string, key string) {
	for i, s := range list {
		k := fmt.Sprintf("%s[%d]", key, i)
		// An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) means the IPv4
		// network: clients are compared by their IPv4 address.
		if p, err := netip.ParsePrefix(s); err == nil {
			if p.Addr().Is4In6() {
				if p.Bits() < 96 {
					v.errorf(k, "%q mixes IPv4-mapped and other IPv6 addresses; write the IPv4 network", s)
					continue
				}
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			list[i] = p.Masked().String()
		} else if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
			a = a.Unmap()
			list[i] = netip.PrefixFrom(a, a.BitLen()).String()
		} else {
			v.errorf(k, "%q is not an IP address or CIDR network", s)
		}
	}
}

func (v *validator) validate(c *Config) {
	if strings.TrimSpace(c.Hostname) == "" || strings.ContainsAny(c.Hostname, " \t\r\n") {
		v.errorf("hostname", "%q is not a host name", c.Hostname)
	}
	if c.StateDir == "" {
		v.errorf("state_dir", "must not be empty")
	}
	v.validateTLS(c)
	v.validateListeners(c)
	v.validateUsers(c)
	v.validatePolicies(c)
	v.validateDKIM(c)
	v.validateUpstreams(c)
	v.validateRoutes(c)
	v.validateQueue(c)
	if c.HTTP.Address != "" {
		if err := hostPort(c.HTTP.Address); err != nil {
			v.errorf("http.address", "%v", err)
		}
	}
	v.validateStatus(c)
	v.positive("journal.retention", c.Journal.Retention)
	if c.Journal.MaxSize < MinJournalMaxSize {
		v.errorf("journal.max_size", "%s is below the minimum of %s", c.Journal.MaxSize, MinJournalMaxSize)
	}
	if r := c.RateLimit.Redis; r != "" {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			v.errorf("ratelimit.redis", "%q is not a redis:// or rediss:// URL", r)
		}
	}
	v.positive("suppression.ttl", c.Suppression.TTL)
	v.positive("hooks.index_ttl", c.Hooks.IndexTTL)
	if c.Hooks.MailgunSigningKey != "" && c.Hooks.Token == "" {
		v.errorf("hooks.mailgun_signing_key", "needs hooks.token: the hooks are served only with a token")
	}
	if c.Hooks.Token != "" && c.HTTP.Address == "" {
		v.errorf("hooks.token", "needs http.address: the hooks are served on the HTTP listener")
	}
	if !oneOf(c.Log.Format, "text", "json") {
		v.errorf("log.format", "%q is not one of text, json", c.Log.Format)
	}
	if !oneOf(c.Log.Level, "debug", "info", "warn", "error") {
		v.errorf("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
}

func (v *validator) validateTLS(c *Config) {
	if !oneOf(c.TLS.MinVersion, "1.2", "1.3") {
		v.errorf("tls.min_version", "%q is not one of \"1.2\", \"1.3\"", c.TLS.MinVersion)
	}
	cert, key := c.TLS.CertFile, c.TLS.KeyFile
	switch {
	case cert != "" && key == "":
		v.errorf("tls.key_file", "cert_file is set but key_file is not")
	case cert == "" && key != "":
		v.errorf("tls.cert_file", "key_file is set but cert_file is not")
	case cert != "" && key != "":
		cb, err1 := v.l.readFile(cert)
		if err1 != nil {
			v.errorf("tls.cert_file", "cannot read: %v", err1)
		}
		kb, err2 := v.l.readFile(key)
		if err2 != nil {
			v.errorf("tls.key_file", "cannot read: %v", err2)
		}
		if err1 == nil && err2 == nil {
			// check-config should catch a mismatched pair, not the first
			// client's STARTTLS.
			if _, err := tls.X509KeyPair(cb, kb); err != nil {
				v.errorf("tls.cert_file", "%v", err)
			}
		}
	}
}

func (v *validator) validateListeners(c *Config) {
	if len(c.Listeners) == 0 {
		v.errorf("listeners", "at least one listener is required")
	}
	names := map[string]string{}
	addrs := map[string]string{}
	for i, ls := range c.Listeners {
		k := fmt.Sprintf("listeners[%d]", i)
		v.uniqueName(names, k, "listener", ls.Name)
		if err := hostPort(ls.Address); err != nil {
			v.errorf(k+".address", "%v", err)
		} else if prev, dup := addrs[ls.Address]; dup && !strings.HasSuffix(ls.Address, ":0") {
			v.errorf(k+".address", "%q is also the address of %s", ls.Address, prev)
		} else {
			addrs[ls.Address] = k
		}
		if !oneOf(ls.TLS, TLSStartTLS, TLSImplicit, TLSNone) {
			v.errorf(k+".tls", "%q is not one of starttls, implicit, none", ls.TLS)
		} else if ls.TLS != TLSNone && c.TLS.CertFile == "" && !c.TLS.SelfSigned {
			v.errorf(k+".tls", "%s needs a certificate: set tls.cert_file and tls.key_file (or tls.self_signed for development)", ls.TLS)
		}
		if !oneOf(ls.Auth, AuthRequired, AuthNone) {
			v.errorf(k+".auth", "%q is not one of required, none", ls.Auth)
		} else if ls.Auth == AuthNone && len(ls.TrustedNetworks) == 0 {
			v.errorf(k+".auth", "auth: none needs trusted_networks (else this is an open relay)")
		} else if ls.Auth == AuthRequired && ls.TLS == TLSNone && !ls.AllowInsecureAuth {
			v.errorf(k+".auth", "auth: required on a tls: none listener takes passwords in cleartext; set allow_insecure_auth: true to allow it, or use tls: starttls")
		}
		if ls.AllowInsecureAuth && ls.TLS != TLSNone {
			v.errorf(k+".allow_insecure_auth", "only for a tls: none listener (AUTH is offered over TLS anyway)")
		}
		v.normalizeNets(ls.TrustedNetworks, k+".trusted_networks")
		v.normalizeNets(ls.TrustedProxies, k+".trusted_proxies")
		if ls.ProxyProtocol && len(ls.TrustedProxies) == 0 {
			v.errorf(k+".proxy_protocol", "proxy_protocol needs trusted_proxies")
		}
		if c.Policy(ls.Policy) == nil {
			v.errorf(k+".policy", "unknown policy %q", ls.Policy)
		}
		v.atLeastOne(k+".max_connections", ls.MaxConnections)
		v.atLeastOne(k+".max_connections_per_ip", ls.MaxConnectionsPerIP)
	}
}

func (v *validator) validateUsers(c *Config) {
	type where struct {
		name string
		file string
		line int
	}
	seen := map[string]where{}
	for i, u := range c.Users {
		// Inline users are named by key; users from users_file by their
		// file and line.
		fromFile := u.File != "" && u.File != v.file
		report := func(field, format string, args ...any) {
			if fromFile {
				v.at(u.File, u.Line, "users_file", format, args...)
				return
			}
			k := fmt.Sprintf("users[%d].%s", i, field)
			line := v.line(k)
			if line == 0 {
				line = u.Line
			}
			v.at(v.file, line, k, format, args...)
		}
		file, line := u.File, u.Line
		if u.Name == "" {
			report("name", "must not be empty")
		} else if strings.ContainsAny(u.Name, ": \t") {
			report("name", "user name %q must not contain ':' or spaces", u.Name)
		} else if prev, dup := seen[strings.ToLower(u.Name)]; dup {
			// Names differing only in case are refused too: clients and
			// admins treat user names as case-insensitive, so one of the
			// two would be reachable by a typo of the other.
			if prev.name != u.Name {
				report("name", "user %q differs from %q (%s:%d) only in case; user names must differ in more than case", u.Name, prev.name, prev.file, prev.line)
			} else {
				report("name", "duplicate user %q (first at %s:%d)", u.Name, prev.file, prev.line)
			}
		} else {
			seen[strings.ToLower(u.Name)] = where{u.Name, file, line}
		}
		if !passwd.Supported(u.PasswordHash) {
			report("password_hash", "password hash of %q must be bcrypt ($2a$, $2b$, $2y$) or argon2id ($argon2id$); make one with `sluice passwd`", u.Name)
		}
		if c.Policy(u.Policy) == nil {
			report("policy", "user %q: unknown policy %q", u.Name, u.Policy)
		}
	}
}

func (v *validator) validatePolicies(c *Config) {
	names := make([]string, 0, len(c.Policies))
	for n := range c.Policies {
		names = append(names, n)
	}
	sort.Strings(names)
	upstreams := map[string]bool{}
	for _, u := range c.Upstreams {
		upstreams[u.Name] = true
	}
	for _, n := range names {
		p := c.Policies[n]
		k := "policies." + n
		if strings.TrimSpace(n) == "" {
			v.errorf(k, "policy name must not be empty")
		}
		if p.MaxMessageSize < 1 {
			v.errorf(k+".max_message_size", "must be at least 1 byte")
		}
		v.atLeastOne(k+".max_recipients", p.MaxRecipients)
		for _, list := range []struct {
			key      string
			patterns []string
		}{{"allowed_senders", p.AllowedSenders}, {"allowed_recipients", p.AllowedRecipients}, {"denied_recipients", p.DeniedRecipients}} {
			for i, s := range list.patterns {
				if err := CheckAddressPattern(s); err != nil {
					v.errorf(fmt.Sprintf("%s.%s[%d]", k, list.key, i), "%v", err)
				}
			}
		}
		for i, m := range p.Masquerade {
			mk := fmt.Sprintf("%s.masquerade[%d]", k, i)
			if m.Match == "" {
				v.errorf(mk+".match", "required")
			} else if err := CheckAddressPattern(m.Match); err != nil || strings.TrimSpace(m.Match) == "<>" {
				if err == nil {
					err = fmt.Errorf("the null sender is never rewritten")
				}
				v.errorf(mk+".match", "%v", err)
			}
			if err := CheckMasqueradeTemplate(m.To); err != nil {
				v.errorf(mk+".to", "%v", err)
			}
		}
		for i, h := range p.RemoveHeaders {
			if h == "" || strings.ContainsAny(h, ": \t") {
				v.errorf(fmt.Sprintf("%s.remove_headers[%d]", k, i), "%q is not a header field name", h)
			}
		}
		for i, u := range p.Upstreams {
			if !upstreams[u] {
				v.errorf(fmt.Sprintf("%s.upstreams[%d]", k, i), "unknown upstream %q", u)
			}
		}
	}
}

func (v *validator) validateDKIM(c *Config) {
	seen := map[string]string{}
	managed := map[string]string{}
	for i, d := range c.DKIM {
		k := fmt.Sprintf("dkim[%d]", i)
		if d.Domain == "" {
			v.errorf(k+".domain", "is required")
		} else if !ValidDomainName(d.Domain) {
			v.errorf(k+".domain", "%q is not a domain name", d.Domain)
		}
		if d.Managed {
			if d.Selector != "" {
				v.errorf(k+".selector", "a managed domain's selectors are chosen by `sluice dkim rotate`; remove selector")
			}
			if d.KeyFile != "" {
				v.errorf(k+".key_file", "a managed domain's keys live in state_dir/dkim/%s/; remove key_file", d.Domain)
			}
			if len(d.Algorithms) == 0 && v.lines[k+".algorithms"] != 0 {
				v.errorf(k+".algorithms", "must name at least one of rsa, ed25519")
			}
			algos := map[string]bool{}
			for j, a := range d.Algorithms {
				switch {
				case a != AlgoRSA && a != AlgoEd25519:
					v.errorf(fmt.Sprintf("%s.algorithms[%d]", k, j), "%q is not rsa or ed25519", a)
				case algos[a]:
					v.errorf(fmt.Sprintf("%s.algorithms[%d]", k, j), "%s is listed twice", a)
				}
				algos[a] = true
			}
			id := strings.ToLower(strings.TrimSuffix(d.Domain, "."))
			if prev, dup := managed[id]; dup && d.Domain != "" {
				v.errorf(k+".domain", "%s is already managed by %s", d.Domain, prev)
			}
			managed[id] = k
			continue
		}
		if len(d.Algorithms) > 0 {
			v.errorf(k+".algorithms", "only a managed domain takes algorithms (the key_file decides)")
		}
		if d.Selector == "" {
			v.errorf(k+".selector", "is required")
		}
		id := strings.ToLower(d.Selector + "._domainkey." + d.Domain)
		if d.Domain != "" && d.Selector != "" {
			if prev, dup := seen[id]; dup {
				v.errorf(k+".selector", "selector %q for %s is also %s", d.Selector, d.Domain, prev)
			}
			seen[id] = k
		}
		if d.KeyFile == "" {
			v.errorf(k+".key_file", "is required")
			continue
		}
		b, err := v.l.readFile(d.KeyFile)
		if err != nil {
			v.errorf(k+".key_file", "cannot read: %v", err)
			continue
		}
		if err := checkPrivateKey(b); err != nil {
			v.errorf(k+".key_file", "%s: %v", d.KeyFile, err)
		}
	}
	if c.DKIMCheckInterval < time.Second {
		v.errorf("dkim_check_interval", "must be at least 1s")
	}
	if c.DNS.Resolver != "" {
		if err := hostPort(c.DNS.Resolver); err != nil {
			v.errorf("dns.resolver", "%v", err)
		} else if h, _, _ := net.SplitHostPort(c.DNS.Resolver); h == "" {
			v.errorf("dns.resolver", "address %q: a host is required (e.g. 127.0.0.1:53)", c.DNS.Resolver)
		}
	}
	v.positive("dns.timeout", c.DNS.Timeout)
}

// ValidDomainName reports whether d can name a DNS domain and a directory
// (state_dir/dkim/DOMAIN): letters, digits, hyphens, underscores and dots,
// no empty label, at most 253 bytes; one trailing dot is allowed.
func ValidDomainName(d string) bool {
	d = strings.TrimSuffix(d, ".")
	if d == "" || len(d) > 253 {
		return false
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}

// checkPrivateKey accepts what the signing package loads: PEM, PKCS#1 or
// PKCS#8, RSA or Ed25519.
func checkPrivateKey(b []byte) error {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return fmt.Errorf("not a PEM file")
	}
	if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
		if k.N.BitLen() < 1024 {
			return fmt.Errorf("RSA key of %d bits is too short (use 2048)", k.N.BitLen())
		}
		return nil
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return fmt.Errorf("not a PKCS#1 or PKCS#8 private key")
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if k.N.BitLen() < 1024 {
			return fmt.Errorf("RSA key of %d bits is too short (use 2048)", k.N.BitLen())
		}
		return nil
	case ed25519.PrivateKey:
		return nil
	}
	return fmt.Errorf("%T keys cannot sign DKIM (use RSA or Ed25519)", k)
}

// uniqueName reports the name of entry k (a listener, an upstream) when it
// is empty or another entry's (seen maps names to their entries' keys).
func (v *validator) uniqueName(seen map[string]string, k, kind, name string) {
	if name == "" {
		v.errorf(k+".name", "must not be empty")
	} else if prev, dup := seen[name]; dup {
		v.errorf(k+".name", "duplicate %s name %q (also %s)", kind, name, prev)
	} else {
		seen[name] = k
	}
}

func (v *validator) validateUpstreams(c *Config) {
	if len(c.Upstreams) == 0 {
		v.errorf("upstreams", "at least one upstream is required")
	}
	names := map[string]string{}
	for i, u := range c.Upstreams {
		k := fmt.Sprintf("upstreams[%d]", i)
		v.uniqueName(names, k, "upstream", u.Name)
		if u.Priority < 0 {
			v.errorf(k+".priority", "must not be negative")
		}
		v.atLeastOne(k+".weight", u.Weight)
		v.atLeastOne(k+".max_connections", u.MaxConnections)
		v.positive(k+".breaker_backoff", u.BreakerBackoff)
		v.positive(k+".timeout", u.Timeout)
		v.positive(k+".connect_timeout", u.ConnectTimeout)
		v.positive(k+".greeting_timeout", u.GreetingTimeout)
		if !ValidProfile(u.Profile) {
			v.errorf(k+".profile", "%q is not one of generic, ses, sendgrid, postmark, mailgun", u.Profile)
		}
		if u.API != "" {
			v.validateAPI(k, u)
			continue
		}
		switch u.Type {
		case UpstreamMaildir:
			if u.Path == "" {
				v.errorf(k+".path", "a maildir upstream needs path")
			}
			continue
		case UpstreamSMTP:
		default:
			v.errorf(k+".type", "%q is not one of smtp, maildir", u.Type)
			continue
		}
		if u.Host == "" {
			v.errorf(k+".host", "an smtp upstream needs host")
		}
		if !oneOf(u.TLS, TLSStartTLS, TLSImplicit, TLSNone, TLSStartTLSOptional) {
			v.errorf(k+".tls", "%q is not one of starttls, implicit, none, starttls-optional", u.TLS)
		} else if len(u.Ports) == 0 {
			if _, ok := DefaultPorts(u.TLS, u.Profile); !ok && u.Profile == ProfilePostmark {
				v.errorf(k+".tls", "profile postmark does not offer implicit TLS")
			} else {
				v.errorf(k+".ports", "must not be empty")
			}
		}
		for j, p := range u.Ports {
			if p < 1 || p > 65535 {
				v.errorf(fmt.Sprintf("%s.ports[%d]", k, j), "port %d is not from 1 to 65535", p)
			}
		}
		if u.TLSCAFile != "" {
			if b, err := v.l.readFile(u.TLSCAFile); err != nil {
				v.errorf(k+".tls_ca_file", "cannot read: %v", err)
			} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
				v.errorf(k+".tls_ca_file", "%s holds no PEM certificate", u.TLSCAFile)
			}
		}
		if u.Password != "" && u.Username == "" && !v.bad[k+".username"] {
			v.errorf(k+".password", "password is set but username is not")
		}
		switch u.AuthMechanism {
		case AuthPlain, AuthLogin:
		case AuthXOAUTH2:
			if u.Username == "" { // errorf skips a username that failed to expand
				v.errorf(k+".username", "xoauth2 needs username (the mailbox)")
			}
			o := u.OAuth2
			for _, f := range []struct{ key, val string }{
				{"token_url", o.TokenURL}, {"client_id", o.ClientID}, {"refresh_token", o.RefreshToken},
			} {
				if f.val == "" {
					v.errorf(k+".oauth2."+f.key, "xoauth2 needs oauth2.%s", f.key)
				}
			}
			if o.TokenURL != "" {
				if tu, err := url.Parse(o.TokenURL); err != nil || (tu.Scheme != "https" && tu.Scheme != "http") || tu.Host == "" {
					v.errorf(k+".oauth2.token_url", "%q is not an http(s) URL", o.TokenURL)
				}
			}
		default:
			v.errorf(k+".auth_mechanism", "%q is not one of plain, login, xoauth2", u.AuthMechanism)
		}
	}
}

func (v *validator) validateRoutes(c *Config) {
	upstreams := map[string]bool{}
	for _, u := range c.Upstreams {
		upstreams[u.Name] = true
	}
	users := map[string]bool{}
	for _, u := range c.Users {
		users[u.Name] = true
	}
	for i, r := range c.Routes {
		k := fmt.Sprintf("routes[%d]", i)
		if len(r.SenderDomains) == 0 && len(r.Users) == 0 && len(r.RecipientDomains) == 0 {
			v.errorf(k, "a route needs sender_domains, users or recipient_domains")
		}
		for j, u := range r.Users {
			if !users[u] {
				v.errorf(fmt.Sprintf("%s.users[%d]", k, j), "unknown user %q", u)
			}
		}
		for j, d := range r.SenderDomains {
			if d == "" || strings.ContainsAny(d, "@ \t") {
				v.errorf(fmt.Sprintf("%s.sender_domains[%d]", k, j), "%q is not a domain", d)
			}
		}
		for j, d := range r.RecipientDomains {
			if !ValidDomainName(d) {
				v.errorf(fmt.Sprintf("%s.recipient_domains[%d]", k, j), "%q is not a domain name", d)
			}
		}
		if len(r.Upstreams) == 0 {
			v.errorf(k+".upstreams", "a route needs at least one upstream")
		}
		for j, u := range r.Upstreams {
			if !upstreams[u] {
				v.errorf(fmt.Sprintf("%s.upstreams[%d]", k, j), "unknown upstream %q", u)
			}
		}
	}
}

func (v *validator) validateQueue(c *Config) {
	q := c.Queue
	if len(q.Retry) == 0 {
		v.errorf("queue.retry", "must list at least one interval")
	}
	for i, d := range q.Retry {
		if d <= 0 {
			v.errorf(fmt.Sprintf("queue.retry[%d]", i), "interval must be positive")
		}
	}
	v.positive("queue.max_age", q.MaxAge)
	v.atLeastOne("queue.workers", q.Workers)
	if q.BounceFrom == "" || !strings.Contains(q.BounceFrom, "@") {
		v.errorf("queue.bounce_from", "%q is not an address", q.BounceFrom)
	}
	if q.Webhook != "" {
		if u, err := url.Parse(q.Webhook); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			v.errorf("queue.webhook", "%q is not an http(s) URL", q.Webhook)
		}
	}
	if q.MinFreeSpace < 0 {
		v.errorf("queue.min_free_space", "must not be negative")
	}
	seen := map[string]bool{}
	for i, ev := range q.WebhookEvents {
		k := fmt.Sprintf("queue.webhook_events[%d]", i)
		switch {
		case !slices.Contains(WebhookEventNames, ev):
			v.errorf(k, "%q is not one of %s", ev, strings.Join(WebhookEventNames, ", "))
		case seen[ev]:
			v.errorf(k, "%q is listed twice", ev)
		}
		seen[ev] = true
	}
}

func (v *validator) validateStatus(c *Config) {
	h := c.HTTP
	if h.Status && h.Address == "" {
		v.errorf("http.status", "needs http.address")
	}
	if h.Status && len(h.StatusUsers) == 0 {
		v.errorf("http.status", "needs http.status_users (the page is never served without a password)")
	}
	names := make([]string, 0, len(h.StatusUsers))
	for n := range h.StatusUsers {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		if n == "" || strings.ContainsAny(n, ": \t") {
			v.errorf("http.status_users", "%q is not a user name", n)
		}
		if !passwd.Supported(h.StatusUsers[n]) {
			v.errorf("http.status_users."+n, "not a bcrypt or argon2id hash (make one with `sluice passwd`)")
		}
	}
}

// validateAPI checks an HTTPS API upstream (DESIGN §8.5).
func (v *validator) validateAPI(k string, u Upstream) {
	need := func(key, val string) {
		if val == "" {
			v.errorf(k+"."+key, "api: %s needs %s", u.API, key)
		}
	}
	switch u.API {
	case APISES:
		need("region", u.Region)
		if (u.AccessKeyID == "") != (u.SecretAccessKey == "") {
			v.errorf(k+".access_key_id", "access_key_id and secret_access_key go together (neither: the AWS credential chain)")
		}
	case APIMailgun:
		need("domain", u.Domain)
		need("api_key", u.APIKey)
		if !oneOf(u.Region, "us", "eu") {
			v.errorf(k+".region", "%q is not one of us, eu", u.Region)
		}
	case APIGraph:
		need("tenant_id", u.TenantID)
		need("client_id", u.ClientID)
		need("client_secret", u.ClientSecret)
		need("user", u.User)
	default:
		v.errorf(k+".api", "%q is not one of ses, mailgun, graph", u.API)
		return
	}
	if u.Type != UpstreamSMTP || u.Host != "" {
		v.errorf(k+".api", "an API upstream takes no type or host (endpoint overrides the URL)")
	}
	if u.Endpoint != "" {
		if eu, err := url.Parse(u.Endpoint); err != nil || (eu.Scheme != "https" && eu.Scheme != "http") || eu.Host == "" {
			v.errorf(k+".endpoint", "%q is not an http(s) URL", u.Endpoint)
		}
	}
	if u.TLSCAFile != "" {
		if b, err := v.l.readFile(u.TLSCAFile); err != nil {
			v.errorf(k+".tls_ca_file", "cannot read: %v", err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
			v.errorf(k+".tls_ca_file", "%s holds no PEM certificate", u.TLSCAFile)
		}
	}
}

// CheckMasqueradeTemplate checks a masquerade `to`: LOCAL@DOMAIN where the
// local part may hold {local} and {user}, and DOMAIN is a domain name.
func CheckMasqueradeTemplate(t string) error {
	at := strings.LastIndexByte(t, '@')
	if at <= 0 {
		return fmt.Errorf("%q is not an address template (LOCAL@DOMAIN; {local} and {user} expand)", t)
	}
	local, domain := t[:at], t[at+1:]
	if !ValidDomainName(domain) {
		return fmt.Errorf("%q: %q is not a domain name", t, domain)
	}
	rest := strings.NewReplacer("{local}", "", "{user}", "").Replace(local)
	if strings.ContainsAny(rest, "{}<>@ \t\r\n\"(),:;[]\\") {
		return fmt.Errorf("%q: the local part may hold only {local}, {user} and address characters", t)
	}
	return nil
}
