package policy

import (
	"slices"
	"strconv"
	"strings"

	"github.com/sluicemail/sluice/config"
)

// route is one compiled entry of `routes`. Its conditions combine with AND
// (a route naming users and sender domains applies to those users sending
// from those domains), the values of one condition with OR; a route with no
// condition matches every message.
type route struct {
	domains   []string // sender domains, lower-cased
	rcpts     []string // recipient domains, lower-cased, no trailing dot
	users     []string
	upstreams []string
}

func compileRoute(r config.Route) route {
	c := route{users: slices.Clone(r.Users), upstreams: slices.Clone(r.Upstreams)}
	for _, d := range r.SenderDomains {
		c.domains = append(c.domains, strings.ToLower(strings.TrimSpace(d)))
	}
	for _, d := range r.RecipientDomains {
		c.rcpts = append(c.rcpts, normDomain(d))
	}
	return c
}

func normDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
}

// match reports whether the route applies to a recipient in rcptDomain of
// a message from user in domain. A route with recipient_domains never
// matches rcptDomain "" (the route of the message as a whole).
func (r route) match(user, domain, rcptDomain string) bool {
	if len(r.domains) > 0 && !slices.Contains(r.domains, strings.ToLower(domain)) {
		return false
	}
	if len(r.users) > 0 && !slices.Contains(r.users, user) {
		return false
	}
	if len(r.rcpts) > 0 && (rcptDomain == "" || !slices.Contains(r.rcpts, normDomain(rcptDomain))) {
		return false
	}
	return true
}

// Route is where a message may go, resolved once at acceptance and handed
// on as a value: the relay signs for Profile, refuses REQUIRETLS when
// TLSOnly is empty, and spools Upstreams, which the dispatcher orders by
// priority and weight. Nothing downstream re-derives it.
type Route struct {
	// Upstreams the message may take, as the route or policy lists them;
	// never empty: a message nothing restricts may take every upstream
	// (in config order).
	Upstreams []string
	// Profile is the strictest signing profile among Upstreams
	// (config.StrictestProfile), so the signature survives each of them.
	Profile string
	// TLSOnly lists the Upstreams that never deliver in plaintext
	// (config.Upstream.TLSOnly): the ones a REQUIRETLS message may take.
	TLSOnly []string
	// Source says where the route came from, for `policy explain`.
	Source string
}

// Route resolves the sender's route of a message: the first matching
// `routes` entry without recipient_domains (by sender domain,
// case-insensitive, and/or user), else the policy's upstreams, else every
// upstream. RecipientRoute resolves it per recipient.
func (e *Engine) Route(p *Policy, user, senderDomain string) Route {
	return e.RecipientRoute(p, user, senderDomain, "")
}

// RecipientRoute resolves the route of the recipients in rcptDomain: the
// first `routes` entry whose every key matches (recipient_domains included),
// else the policy's upstreams, else every upstream. A recipient no
// recipient route matches takes the sender's route (Route).
func (e *Engine) RecipientRoute(p *Policy, user, senderDomain, rcptDomain string) Route {
	var r Route
	for i, rt := range e.routes {
		if rt.match(user, senderDomain, rcptDomain) {
			r.Upstreams, r.Source = slices.Clone(rt.upstreams), "routes["+strconv.Itoa(i)+"] matched"
			break
		}
	}
	if r.Upstreams == nil && p != nil && len(p.Upstreams) > 0 {
		r.Upstreams, r.Source = slices.Clone(p.Upstreams), "policies."+p.Name+".upstreams"
	}
	all := r.Upstreams == nil
	if all {
		r.Source = "every upstream: no route matched and the policy names none"
	}
	var profiles, names []string
	for _, u := range e.cfg.Upstreams {
		if !all && !slices.Contains(r.Upstreams, u.Name) {
			continue
		}
		names = append(names, u.Name)
		profiles = append(profiles, u.Profile)
		if u.TLSOnly() {
			r.TLSOnly = append(r.TLSOnly, u.Name)
		}
	}
	if all {
		r.Upstreams = names
	}
	r.Profile = config.StrictestProfile(profiles)
	return r
}

// Group is the recipients of one message that share a route; each group is
// spooled under a queue ID of its own.
type Group struct {
	Route
	Recipients []string
}

// Split resolves the route of every recipient of a message and groups the
// recipients by route, in the order of their first recipient (so the group
// of the first recipient comes first). profile is the strictest signing
// profile of all the groups' upstreams: the message is signed once, and
// one signature must survive every route it is split across.
func (e *Engine) Split(p *Policy, user, senderDomain string, rcpts []string) (groups []Group, profile string) {
	var profiles []string
	for _, rc := range rcpts {
		r := e.RecipientRoute(p, user, senderDomain, domainOfAddr(rc))
		i := slices.IndexFunc(groups, func(g Group) bool { return g.Source == r.Source })
		if i < 0 {
			groups = append(groups, Group{Route: r})
			profiles = append(profiles, r.Profile)
			i = len(groups) - 1
		}
		groups[i].Recipients = append(groups[i].Recipients, rc)
	}
	if len(groups) == 0 { // no recipients: the sender's route, as before
		r := e.Route(p, user, senderDomain)
		groups, profiles = []Group{{Route: r}}, []string{r.Profile}
	}
	return groups, config.StrictestProfile(profiles)
}

func domainOfAddr(a string) string {
	if at := strings.LastIndexByte(a, '@'); at >= 0 {
		return a[at+1:]
	}
	return ""
}
