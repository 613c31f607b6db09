package main

import (
	"errors"
	"fmt"
	"net/mail"
	"strings"

	"github.com/sluicemail/sluice/relay"
)

// The injectors (send, sendmail) put addresses from the command line and
// from message headers into MAIL FROM:<…> and RCPT TO:<…>. Each one is
// checked as one mailbox first, so no argument can close the path early
// and add ESMTP parameters (`-f 'a@x> BODY=7BIT'`) or a second command.

// checkAddress accepts one mailbox as a command line gives it: local@domain
// (or a bare local part, which the relay judges), optionally in angle
// brackets, the local part a dot-atom or a quoted string, the domain a
// dot-atom or an address literal. It returns the address as it goes
// between the angle brackets. Anything else — '<' or '>' inside, spaces
// outside quotes, control characters — is an error.
func checkAddress(s string) (string, error) {
	a := s
	if strings.HasPrefix(a, "<") && strings.HasSuffix(a, ">") && len(a) >= 2 {
		a = a[1 : len(a)-1]
	}
	if a == "" {
		return "", errors.New("empty address")
	}
	for i := 0; i < len(a); i++ {
		if c := a[i]; c < 0x20 || c == 0x7f {
			return "", fmt.Errorf("address %q contains a control character", s)
		}
	}
	local, domain, err := splitLocal(a)
	if err != nil {
		return "", fmt.Errorf("address %q: %v", s, err)
	}
	if domain == "" {
		return a, nil
	}
	if strings.HasPrefix(domain, "[") {
		if !strings.HasSuffix(domain, "]") || strings.ContainsAny(domain[1:len(domain)-1], "[]\\ ") {
			return "", fmt.Errorf("address %q: bad address literal", s)
		}
		return local + "@" + domain, nil
	}
	if !relay.IsDotAtom(domain) || strings.ContainsAny(domain, "@") {
		return "", fmt.Errorf("address %q: bad domain", s)
	}
	return local + "@" + domain, nil
}

// splitLocal splits a at the '@' after the local part (a dot-atom or a
// quoted string); domain is "" for a bare local part.
func splitLocal(a string) (local, domain string, err error) {
	if strings.HasPrefix(a, `"`) {
		i := 1
		for ; i < len(a) && a[i] != '"'; i++ {
			if a[i] == '\\' {
				i++
			}
		}
		if i >= len(a) {
			return "", "", errors.New("unterminated quoted local part")
		}
		local = a[:i+1]
		if strings.ContainsAny(local, "<>") {
			return "", "", errors.New("'<' or '>' in the local part")
		}
		rest := a[i+1:]
		if rest == "" {
			return local, "", nil
		}
		if rest[0] != '@' {
			return "", "", errors.New("text after the quoted local part")
		}
		return local, rest[1:], nil
	}
	at := strings.LastIndexByte(a, '@')
	local = a
	if at >= 0 {
		local, domain = a[:at], a[at+1:]
		if domain == "" {
			return "", "", errors.New("empty domain")
		}
	}
	if !relay.IsDotAtom(local) {
		return "", "", errors.New("the local part is not a dot-atom (quote it)")
	}
	return local, domain, nil
}

// stripComments replaces every RFC 5322 comment outside quoted strings
// with a space: net/mail refuses a comment before an addr-spec
// (`Bcc: (comment) b@x`), which header fields may carry.
func stripComments(s string) string {
	var b strings.Builder
	depth, quoted := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && (quoted || depth > 0):
			if depth == 0 {
				b.WriteByte(c)
				if i+1 < len(s) {
					b.WriteByte(s[i+1])
				}
			}
			i++
			continue
		case depth == 0 && c == '"':
			quoted = !quoted
		case !quoted && c == '(':
			depth++
			if depth == 1 {
				b.WriteByte(' ')
			}
			continue
		case !quoted && depth > 0 && c == ')':
			depth--
			continue
		}
		if depth == 0 {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// headerRecipients returns the recipients `sendmail -t` takes from h: every
// To:, Cc: and Bcc: field — or, when the message has Resent-To:,
// Resent-Cc: or Resent-Bcc:, those instead (sendmail's and Postfix's rule:
// a resent message goes to its resent recipients, not back to the
// original ones).
func headerRecipients(h mail.Header) ([]string, error) {
	names := []string{"To", "Cc", "Bcc"}
	for _, n := range []string{"Resent-To", "Resent-Cc", "Resent-Bcc"} {
		if len(h[n]) > 0 {
			names = []string{"Resent-To", "Resent-Cc", "Resent-Bcc"}
			break
		}
	}
	var out []string
	for _, n := range names {
		for _, v := range h[n] {
			v = stripComments(v)
			if strings.TrimSpace(v) == "" {
				continue // "Bcc:" alone: a blind copy with no one on it
			}
			list, err := mail.ParseAddressList(v)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", n, err)
			}
			for _, a := range list {
				addr, err := checkAddress(relay.QuoteAddr(a.Address))
				if err != nil {
					return nil, fmt.Errorf("%s: %w", n, err)
				}
				out = append(out, addr)
			}
		}
	}
	return out, nil
}
