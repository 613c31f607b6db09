package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dmarc"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/dnsclient"
	"github.com/sluicemail/sluice/signing"
	"github.com/sluicemail/sluice/upstream"
)

// `sluice doctor` (DESIGN §8.4) checks what breaks deliverability before a
// user finds out: per sending domain its DKIM records, SPF and DMARC; per
// upstream that every port connects, verifies TLS and accepts AUTH. It sends
// no message. All DNS goes through dns.resolver.

// Doctor results.
const (
	resOK   = "OK"
	resWarn = "WARN"
	resFail = "FAIL"
)

// finding is one line of the report.
type finding struct {
	Result string `json:"result"`
	Check  string `json:"check"`
	Detail string `json:"detail"`
}

type doctor struct {
	cfg    *config.Config
	lookup signing.LookupTXT
	out    []finding
}

func (d *doctor) add(result, check, format string, args ...any) {
	d.out = append(d.out, finding{result, check, fmt.Sprintf(format, args...)})
}

func runDoctor(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := newFlags("doctor")
	domain := fs.String("domain", "", "check only this sending domain (and no upstream)")
	asJSON := fs.Bool("json", false, "one JSON object per check and line")
	if _, err := parseFlags(fs, args); err != nil {
		return usageErr(stderr, "usage: sluice doctor [-c FILE] [--domain D] [--json]")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	res, err := newResolver(cfg)
	if err != nil {
		return err
	}
	d := &doctor{cfg: cfg, lookup: res.LookupTXT}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	domains := sendingDomains(cfg)
	if *domain != "" {
		domains = []string{strings.ToLower(strings.TrimSuffix(*domain, "."))}
	}
	for _, dom := range domains {
		d.checkDKIM(ctx, dom)
		d.checkSPF(ctx, dom)
		d.checkDMARC(ctx, dom)
	}
	if *domain == "" {
		for _, u := range cfg.Upstreams {
			d.checkUpstream(ctx, u)
		}
	}
	failed := false
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, f := range d.out {
			enc.Encode(f)
		}
	} else {
		width := 0
		for _, f := range d.out {
			width = max(width, len(f.Check))
		}
		for _, f := range d.out {
			fmt.Fprintf(stdout, "%-4s  %-*s  %s\n", f.Result, width, f.Check, f.Detail)
		}
	}
	for _, f := range d.out {
		failed = failed || f.Result == resFail
	}
	if failed {
		return &exitError{code: 1}
	}
	return nil
}

// sendingDomains are the dkim: domains and the literal domains of every
// policy's allowed_senders, lowercased, in that order, each once.
func sendingDomains(cfg *config.Config) []string {
	var out []string
	add := func(d string) {
		d = strings.ToLower(strings.TrimSuffix(d, "."))
		if d != "" && !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	for _, k := range cfg.DKIM {
		add(k.Domain)
	}
	names := make([]string, 0, len(cfg.Policies))
	for n := range cfg.Policies {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		for _, pat := range cfg.Policies[n].AllowedSenders {
			at := strings.LastIndexByte(pat, '@')
			if at < 0 {
				continue
			}
			dom := pat[at+1:]
			if strings.ContainsAny(dom, "*{}") || !config.ValidDomainName(dom) {
				continue
			}
			add(dom)
		}
	}
	return out
}

// checkDKIM checks the record of every key that signs or will sign (and
// of retiring keys, whose records must stay).
func (d *doctor) checkDKIM(ctx context.Context, domain string) {
	keys, err := keyStatuses(ctx, d.cfg, d.lookup, domain)
	if err != nil {
		d.add(resFail, "dkim "+domain, "%v", err)
		return
	}
	hasActive := false
	for _, k := range keys {
		name := "dkim " + signing.RecordName(k.Domain, k.Selector)
		detail := strings.TrimPrefix(k.Detail, signing.RecordName(k.Domain, k.Selector)+": ")
		switch k.State {
		case signing.StateRetired:
			continue
		case signing.StatePending:
			if k.DNS == signing.DNSOK {
				d.add(resOK, name, "pending key published; serve activates it within dkim_check_interval, or run `sluice dkim activate --domain %s`", domain)
			} else {
				d.add(resWarn, name, "pending key, DNS %s (%s): publish the record `sluice dkim dns` prints", k.DNS, detail)
			}
			continue
		case signing.StateActive:
			hasActive = true
		}
		fix := "publish the record `sluice dkim dns` prints for this selector"
		switch k.DNS {
		case signing.DNSOK:
			d.add(resOK, name, "%s key %s publishes the key", k.State, k.Algorithm)
		case signing.DNSError:
			d.add(resFail, name, "DNS did not answer: %s (check dns.resolver)", detail)
		case signing.DNSMissing:
			if k.State == signing.StateRetiring {
				d.add(resWarn, name, "retiring key's record is missing: mail signed with it in the last dkim_retire_after fails DKIM; %s", fix)
			} else {
				d.add(resFail, name, "no record: signatures with %s fail; %s", k.Selector, fix)
			}
		default:
			d.add(resFail, name, "record does not match the %s key: %s; %s", k.State, detail, fix)
		}
	}
	if !hasActive {
		d.add(resWarn, "dkim "+domain, "no active DKIM key: mail from %s is sent unsigned (add a dkim: entry, or `sluice dkim rotate` for a managed one)", domain)
	}
}

// spfRecords returns the SPF records (v=spf1) among TXT records.
func spfRecords(txts []string) []string {
	var out []string
	for _, t := range txts {
		l := strings.ToLower(strings.TrimSpace(t))
		if l == "v=spf1" || strings.HasPrefix(l, "v=spf1 ") {
			out = append(out, strings.TrimSpace(t))
		}
	}
	return out
}

// spfTerms reads the terms of an SPF record that matter here: include:
// domains, a redirect= domain, and the all mechanism with its qualifier.
// Terms with macros are kept as written.
func spfTerms(record string) (includes []string, redirect, all string) {
	fields := strings.Fields(record)
	for _, f := range fields[min(1, len(fields)):] {
		l := strings.ToLower(f)
		q := ""
		if strings.ContainsAny(l[:1], "+-~?") {
			q, l = l[:1], l[1:]
		}
		switch {
		case strings.HasPrefix(l, "include:") && len(l) > len("include:"):
			includes = append(includes, strings.TrimSuffix(l[len("include:"):], "."))
		case strings.HasPrefix(l, "redirect=") && len(l) > len("redirect="):
			redirect = strings.TrimSuffix(l[len("redirect="):], ".")
		case l == "all":
			if q == "" {
				q = "+"
			}
			all = q + "all"
		}
	}
	return includes, redirect, all
}

// spfIncludes reports whether the SPF policy of domain includes target,
// following include: and redirect= up to the 10 lookups RFC 7208 allows.
func (d *doctor) spfIncludes(ctx context.Context, record, target string) bool {
	seen := map[string]bool{}
	queue := []string{record}
	lookups := 0
	for len(queue) > 0 {
		rec := queue[0]
		queue = queue[1:]
		inc, redirect, _ := spfTerms(rec)
		if redirect != "" {
			inc = append(inc, redirect)
		}
		for _, name := range inc {
			if name == target || strings.HasSuffix(name, "."+target) {
				return true
			}
			if seen[name] || strings.Contains(name, "%") || lookups >= 10 {
				continue
			}
			seen[name] = true
			lookups++
			txts, err := d.lookup(ctx, name)
			if err != nil {
				continue
			}
			if recs := spfRecords(txts); len(recs) == 1 {
				queue = append(queue, recs[0])
			}
		}
	}
	return false
}

func (d *doctor) checkSPF(ctx context.Context, domain string) {
	check := "spf " + domain
	txts, err := d.lookup(ctx, domain)
	if err != nil && !errors.Is(err, dnsclient.ErrNotFound) {
		d.add(resFail, check, "DNS did not answer: %v (check dns.resolver)", err)
		return
	}
	recs := spfRecords(txts)
	var needs []string
	for _, u := range d.cfg.Upstreams {
		if inc := config.SPFInclude(u.Profile); inc != "" && !slices.Contains(needs, inc) {
			needs = append(needs, inc)
		}
	}
	example := "v=spf1"
	for _, n := range needs {
		example += " include:" + n
	}
	example += " ~all"
	switch len(recs) {
	case 0:
		d.add(resFail, check, "no SPF record: publish TXT %q at %s", example, domain)
		return
	case 1:
	default:
		d.add(resFail, check, "%d SPF records (receivers treat that as an error, RFC 7208 §4.5): merge them into one", len(recs))
		return
	}
	_, _, all := spfTerms(recs[0])
	if all == "+all" {
		d.add(resFail, check, "%q passes mail from anywhere (+all): end it with ~all or -all", recs[0])
		return
	}
	missing := false
	for _, u := range d.cfg.Upstreams {
		inc := config.SPFInclude(u.Profile)
		if inc == "" {
			continue
		}
		if !d.spfIncludes(ctx, recs[0], inc) {
			d.add(resFail, check, "%q lacks include:%s, which upstream %s (profile %s) needs: add it before the all term", recs[0], inc, u.Name, u.Profile)
			missing = true
		}
	}
	if !missing {
		d.add(resOK, check, "%q", recs[0])
	}
}

func (d *doctor) checkDMARC(ctx context.Context, domain string) {
	check := "dmarc " + domain
	name := "_dmarc." + domain
	txts, err := d.lookup(ctx, name)
	inherited := ""
	if errors.Is(err, dnsclient.ErrNotFound) {
		// A subdomain falls under its organizational domain's policy;
		// the last two labels approximate it.
		labels := strings.Split(domain, ".")
		if len(labels) > 2 {
			org := strings.Join(labels[len(labels)-2:], ".")
			if t, err2 := d.lookup(ctx, "_dmarc."+org); err2 == nil {
				txts, err, inherited = t, nil, org
			}
		}
	}
	switch {
	case errors.Is(err, dnsclient.ErrNotFound):
		d.add(resFail, check, "no DMARC record: publish TXT \"v=DMARC1; p=none; rua=mailto:dmarc@%s\" at %s, then move to p=quarantine or p=reject", domain, name)
		return
	case err != nil:
		d.add(resFail, check, "DNS did not answer: %v (check dns.resolver)", err)
		return
	}
	var recs []string
	for _, t := range txts {
		if strings.HasPrefix(strings.ToUpper(strings.TrimSpace(t)), "V=DMARC1") {
			recs = append(recs, t)
		}
	}
	if len(recs) != 1 {
		if len(recs) == 0 {
			d.add(resFail, check, "no v=DMARC1 record at %s", name)
		} else {
			d.add(resFail, check, "%d DMARC records at %s: receivers ignore them all; keep one", len(recs), name)
		}
		return
	}
	rec, err := dmarc.Parse(recs[0])
	if err != nil {
		d.add(resFail, check, "unparsable record %q: %v", recs[0], err)
		return
	}
	from := ""
	if inherited != "" {
		from = " (inherited from _dmarc." + inherited + ")"
	}
	switch rec.Policy {
	case dmarc.PolicyNone:
		d.add(resWarn, check, "p=none%s: receivers only report; once reports show DKIM passing, move to p=quarantine or p=reject", from)
	default:
		d.add(resOK, check, "p=%s%s", rec.Policy, from)
	}
}

// checkAPI makes one read-only, authenticated call to an API upstream.
func (d *doctor) checkAPI(ctx context.Context, opts upstream.Options, u config.Upstream) {
	check := "upstream " + u.Name + " " + u.API
	p, err := upstream.ProbeAPI(ctx, opts, u)
	switch {
	case err != nil:
		d.add(resFail, check, "%v", err)
	case p.Err != nil && p.Err.Stage == upstream.StageAuth:
		d.add(resFail, check, "%s: %s: check the credentials (and the region) of %s", p.URL, p.Err.Message, u.Name)
	case p.Err != nil:
		d.add(resFail, check, "%s: %v: check the endpoint, the proxy (HTTPS_PROXY) and the firewall", p.URL, p.Err)
	case p.Warn:
		d.add(resWarn, check, "%s", p.Detail)
	default:
		d.add(resOK, check, "%s; nothing sent", p.Detail)
	}
}

func (d *doctor) checkUpstream(ctx context.Context, u config.Upstream) {
	opts := upstream.Options{Hostname: d.cfg.Hostname, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	pctx, cancel := context.WithTimeout(ctx, time.Minute+2*u.ConnectTimeout)
	defer cancel()
	if u.API != "" {
		d.checkAPI(pctx, opts, u)
		return
	}
	if u.Type != config.UpstreamSMTP && u.Type != "" {
		return
	}
	probes, err := upstream.Probe(pctx, opts, u)
	if err != nil {
		d.add(resFail, "upstream "+u.Name, "%v", err)
		return
	}
	for _, p := range probes {
		base := fmt.Sprintf("upstream %s %s:%d", u.Name, u.Host, p.Port)
		stage := upstream.Stage("")
		if p.Err != nil {
			stage = p.Err.Stage
		}
		why := ""
		if p.Err != nil {
			why = p.Err.Error()
		}
		switch stage {
		case upstream.StageDial, upstream.StageConnect:
			d.add(resFail, base+" connect", "%s: check host, port and firewall (many networks block 25 and 587; providers offer 2525 or 2587)", why)
			continue
		}
		d.add(resOK, base+" connect", "banner and EHLO answered")
		switch {
		case stage == upstream.StageTLS:
			d.add(resFail, base+" tls", "%s: set tls_ca_file or tls_server_name if the certificate is private or host is an IP", why)
			continue
		case p.TLS == nil && u.TLS == config.TLSNone:
			d.add(resWarn, base+" tls", "tls: none: password and mail cross the network in plaintext")
		case p.TLS == nil:
			d.add(resWarn, base+" tls", "the server offers no STARTTLS (starttls-optional): password and mail go in plaintext")
		case u.TLSInsecureSkipVerify:
			d.add(resWarn, base+" tls", "%s, certificate NOT verified (tls_insecure_skip_verify)", tls.VersionName(p.TLS.Version))
		default:
			name := u.Host
			if u.TLSServerName != "" {
				name = u.TLSServerName
			}
			d.add(resOK, base+" tls", "%s, certificate verified for %s", tls.VersionName(p.TLS.Version), name)
		}
		switch {
		case stage == upstream.StageAuth:
			d.add(resFail, base+" auth", "%s: check username and password (password_file) for %s", why, u.Name)
		case u.Username == "":
			d.add(resOK, base+" auth", "no username configured: no AUTH")
		case stage != "":
			d.add(resFail, base+" auth", "%s", why)
		default:
			d.add(resOK, base+" auth", "AUTH %s as %s accepted; QUIT, nothing sent", strings.ToUpper(u.AuthMechanism), u.Username)
		}
	}
}
