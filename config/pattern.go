package config

import (
	"errors"
	"fmt"
	"strings"
)

// CheckAddressPattern validates one entry of allowed_senders,
// allowed_recipients or denied_recipients (the syntax is in
// docs/policy.md: <>, *, local@domain, *@domain, local@*, {user}). The
// loader reports a bad entry with its file and line; the policy package
// compiles what passes.
func CheckAddressPattern(text string) error {
	raw := strings.ToLower(strings.TrimSpace(text))
	switch raw {
	case "":
		return errors.New("empty pattern")
	case "<>", "*", "{user}":
		return nil
	}
	check := strings.ReplaceAll(raw, "{user}", "u")
	if strings.ContainsAny(check, "{}") {
		return fmt.Errorf("%q: only {user} may stand in braces", text)
	}
	if strings.ContainsAny(check, "<> \t\r\n") {
		return fmt.Errorf("%q: not an address pattern", text)
	}
	at := strings.LastIndexByte(check, '@')
	if at <= 0 || at == len(check)-1 {
		return fmt.Errorf("%q: want local@domain, *@domain, local@* or *", text)
	}
	local, domain := check[:at], check[at+1:]
	quoted := len(local) >= 2 && local[0] == '"' && local[len(local)-1] == '"'
	if !quoted && strings.ContainsAny(local, "@\"\\") {
		return fmt.Errorf("%q: the local part %q holds an unquoted @, quote or backslash (a quoted local part is written \"a@b\"@domain)", text, local)
	}
	if local == "*" && domain == "*" {
		return fmt.Errorf("%q: write * for any address", text)
	}
	if (local != "*" && strings.Contains(local, "*")) || (domain != "*" && strings.Contains(domain, "*")) {
		return fmt.Errorf("%q: * stands only for a whole local part or a whole domain", text)
	}
	return nil
}
