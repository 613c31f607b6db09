package policy

import (
	"fmt"
	"strings"

	"github.com/sluicemail/sluice/config"
)

// pattern is one entry of allowed_senders, allowed_recipients or
// denied_recipients. The syntax is deliberately small, so that what a rule
// allows can be read off it:
//
//	<>                    the null sender (only meaningful for senders)
//	*                     any address (never the null sender)
//	user@example.com      exactly this address
//	*@example.com         any local part at this domain (not its subdomains)
//	user@*                this local part at any domain
//	{user}                expands to the authenticated user name, anywhere
//	                      ({user}@example.com, or {user} alone when user
//	                      names are addresses)
//
// Matching is case-insensitive in the domain and in the local part too:
// RFC 5321 lets a local part be case-sensitive, but no mailbox provider
// treats it so, and a rule that let "Scanner@" through but not "scanner@"
// would surprise every administrator.
type pattern struct {
	raw     string // as configured, lower-cased
	null    bool
	hasUser bool
}

// compilePattern validates text and returns its compiled form.
// The syntax is checked by config.CheckAddressPattern, the one definition
// the loader uses too.
func compilePattern(text string) (pattern, error) {
	if err := config.CheckAddressPattern(text); err != nil {
		return pattern{}, err
	}
	raw := strings.ToLower(strings.TrimSpace(text))
	return pattern{raw: raw, null: raw == "<>", hasUser: strings.Contains(raw, "{user}")}, nil
}

// String returns the pattern as configured (lower-cased).
func (p pattern) String() string { return p.raw }

// match reports whether addr (no angle brackets; "" is the null sender)
// matches p for the authenticated user.
func (p pattern) match(user, addr string) bool {
	if addr == "" || p.null {
		return addr == "" && p.null
	}
	// A fully qualified domain (one trailing dot) is the same domain: the
	// next hop treats it so, and a denied recipient must not slip through.
	addr = strings.TrimSuffix(addr, ".")
	s := p.raw
	if p.hasUser {
		// A user name that is empty (client accepted by network) or holds a
		// wildcard must not turn the rule into something broader.
		if user == "" || strings.Contains(user, "*") {
			return false
		}
		s = strings.ReplaceAll(s, "{user}", strings.ToLower(user))
	}
	if s == "*" {
		return true
	}
	addr = strings.ToLower(addr)
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return false // {user} alone, but the user name is not an address
	}
	aat := strings.LastIndexByte(addr, '@')
	if aat < 0 {
		return false
	}
	local, domain := s[:at], s[at+1:]
	return (local == "*" || local == addr[:aat]) && (domain == "*" || domain == addr[aat+1:])
}

// patternList is a compiled list; empty means "no rule".
type patternList []pattern

func compileList(key string, texts []string) (patternList, error) {
	l := make(patternList, 0, len(texts))
	for i, t := range texts {
		p, err := compilePattern(t)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %w", key, i, err)
		}
		l = append(l, p)
	}
	return l, nil
}

// match returns the first pattern that matches, and whether one did.
func (l patternList) match(user, addr string) (pattern, bool) {
	for _, p := range l {
		if p.match(user, addr) {
			return p, true
		}
	}
	return pattern{}, false
}

// String is the list as a rule for logs and explain: ["a", "b"].
func (l patternList) String() string {
	var b strings.Builder
	b.WriteByte('[')
	for i, p := range l {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", p.raw)
	}
	b.WriteByte(']')
	return b.String()
}

// trimAddr strips the angle brackets a caller may have left on an address.
func trimAddr(a string) string {
	a = strings.TrimSpace(a)
	if len(a) >= 2 && a[0] == '<' && a[len(a)-1] == '>' {
		a = a[1 : len(a)-1]
	}
	return a
}
