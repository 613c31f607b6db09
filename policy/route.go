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
	domains   []string // lower-cased
	users     []string
	upstreams []string
}

func compileRoute(r config.Route) route {
	c := route{users: slices.Clone(r.Users), upstreams: slices.Clone(r.Upstreams)}
	for _, d := range r.SenderDomains {
		c.domains = append(c.domains, strings.ToLower(strings.TrimSpace(d)))
	}
	return c
}

func (r route) match(user, domain string) bool {
	if len(r.domains) > 0 && !slices.Contains(r.domains, strings.ToLower(domain)) {
		return false
	}
	if len(r.users) > 0 && !slices.Contains(r.users, user) {
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

// Route resolves the route of a message: the first matching `routes` entry
// (by sender domain, case-insensitive, and/or user), else the policy's
// upstreams, else every upstream.
func (e *Engine) Route(p *Policy, user, senderDomain string) Route {
	var r Route
	for i, rt := range e.routes {
		if rt.match(user, senderDomain) {
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
