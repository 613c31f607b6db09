package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Explain walks one message through the user's policy without sending or
// charging anything, for `sluice policy explain`: the policy, each check and
// its result, the route and signing profile, the configured rate limits,
// and the decision. from is checked as both envelope sender and header
// From:. Each of to is checked and gets its route (recipient routes may
// split the message, DESIGN §8.5). size <= 0 skips the size check. allowed
// is the decision.
func (e *Engine) Explain(user, from string, to []string, size int64) (text string, allowed bool) {
	var b strings.Builder
	var denied []string
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	result := func(d *Denial, ok string) string {
		if d == nil {
			return "allowed (" + ok + ")"
		}
		denied = append(denied, d.Kind.String())
		return "DENIED by " + d.Rule
	}

	line("user:        %s", user)
	p := e.UserPolicy(user)
	if p == nil {
		line("policy:      none: no such user")
		line("decision:    DENIED (unknown user)")
		return b.String(), false
	}
	line("policy:      %s", p.Name)
	from = trimAddr(from)
	to = slices.Clone(to)
	for i := range to {
		to[i] = trimAddr(to[i])
	}

	if m, ok := p.Masquerade(user, from); ok {
		line("masquerade:  <%s> rewritten to <%s> (envelope sender and header From:/Sender:/Return-Path:, before the checks and signing)", from, m)
		from = m
	}

	rule := "any sender"
	if len(p.senders) > 0 {
		rule = "allowed_senders " + p.senders.String()
	}
	line("sender:      <%s> %s", from, result(p.CheckSender(user, from), rule))
	if from != "" {
		line("header From: <%s> %s", from, result(p.CheckHeaderFrom(user, []string{from}), rule))
	}

	rule = "any recipient"
	if len(p.allowedRcpts) > 0 {
		rule = "allowed_recipients " + p.allowedRcpts.String()
	}
	if len(p.deniedRcpts) > 0 {
		rule += ", none of denied_recipients " + p.deniedRcpts.String()
	}
	for _, rc := range to {
		line("recipient:   <%s> %s", rc, result(p.CheckRecipient(user, rc, 0), rule))
	}
	if p.MaxRecipients > 0 {
		line("recipients:  at most %d per message", p.MaxRecipients)
	} else {
		line("recipients:  no limit per message")
	}

	switch {
	case size > 0:
		line("size:        %d bytes %s", size, result(p.CheckSize(size), fmt.Sprintf("max_message_size %d", p.MaxMessageSize)))
	case p.MaxMessageSize > 0:
		line("size:        not given (max_message_size %d)", p.MaxMessageSize)
	default:
		line("size:        not given (no max_message_size)")
	}

	domain := ""
	if at := strings.LastIndexByte(from, '@'); at >= 0 {
		domain = strings.ToLower(from[at+1:])
	}
	hasKey, pending := false, false
	for _, k := range e.cfg.DKIM {
		if !strings.EqualFold(k.Domain, domain) {
			continue
		}
		if k.Managed && e.managedKeyActive != nil && !e.managedKeyActive(domain) {
			pending = true // a managed domain signs only once a key is active
			continue
		}
		hasKey = true
		break
	}
	noKey := "no key for " + domain
	if pending {
		noKey = "no active managed key for " + domain + " yet (`sluice dkim status`)"
	}
	switch {
	case domain == "":
		line("dkim:        no From: domain to sign for")
	case hasKey && p.RequireDKIM:
		line("dkim:        signed with the keys for %s (require_dkim satisfied)", domain)
	case hasKey:
		line("dkim:        signed with the keys for %s", domain)
	case p.RequireDKIM:
		denied = append(denied, p.CheckDKIM(false).Kind.String())
		line("dkim:        %s: DENIED by require_dkim", noKey)
	default:
		line("dkim:        %s: sent unsigned", noKey)
	}

	groups, profile := e.Split(p, user, domain, to)
	if len(to) <= 1 {
		r := groups[0].Route
		line("route:       %s (%s), signing profile %s", strings.Join(r.Upstreams, ", "), r.Source, r.Profile)
	} else {
		for _, rc := range to {
			r := e.RecipientRoute(p, user, domain, domainOfAddr(rc))
			line("route:       <%s> %s (%s)", rc, strings.Join(r.Upstreams, ", "), r.Source)
		}
		if len(groups) > 1 {
			line("split:       %d queue IDs, one per route; signed once, signing profile %s (the strictest of the routes)", len(groups), profile)
		} else {
			line("signing:     profile %s", profile)
		}
	}
	line("rate:        messages %s, recipients %s per user (not charged by explain)",
		formatRate(p.RateMessages), formatRate(p.RateRecipients))

	if len(denied) > 0 {
		line("decision:    DENIED (%s)", strings.Join(denied, ", "))
		return b.String(), false
	}
	line("decision:    allowed")
	return b.String(), true
}
