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

// profileRank orders provider profiles from the least to the most
// restrictive about what may be signed: a signature made for the strictest
// survives every upstream of the route.
var profileRank = map[string]int{"generic": 0, "sendgrid": 1, "mailgun": 2, "postmark": 3, "ses": 4}

func strictest(profiles []string) string {
	best, rank := "generic", 0
	for _, p := range profiles {
		if r, ok := profileRank[p]; ok && r > rank {
			best, rank = p, r
		}
	}
	return best
}

// Route returns the upstreams a message may take and the signing profile for
// them: the first matching `routes` entry (by sender domain,
// case-insensitive, and/or user), else the policy's upstreams, else nil,
// meaning every upstream. The profile is the strictest among the chosen
// upstreams (all of them for nil): ses > postmark > mailgun > sendgrid >
// generic.
func (e *Engine) Route(p *Policy, user, senderDomain string) (upstreams []string, profile string) {
	ups, _ := e.route(p, user, senderDomain)
	return ups, e.profileOf(ups)
}

// route also says where the answer came from, for Explain.
func (e *Engine) route(p *Policy, user, senderDomain string) ([]string, string) {
	for i, r := range e.routes {
		if r.match(user, senderDomain) {
			return slices.Clone(r.upstreams), "routes[" + strconv.Itoa(i) + "] matched"
		}
	}
	if p != nil && len(p.Upstreams) > 0 {
		return slices.Clone(p.Upstreams), "policies." + p.Name + ".upstreams"
	}
	return nil, "no route matched and the policy names none"
}

func (e *Engine) profileOf(ups []string) string {
	var profiles []string
	if ups == nil {
		for _, u := range e.cfg.Upstreams {
			profiles = append(profiles, u.Profile)
		}
	} else {
		for _, name := range ups {
			profiles = append(profiles, e.profiles[name])
		}
	}
	return strictest(profiles)
}
