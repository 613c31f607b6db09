package config

import "strings"

// unresolvable reports whether the value at the dotted key may stay
// unresolved under Loader.UnresolvedSecrets: the credentials of upstreams
// and the webhook's secret. Users' password hashes stay required, since
// the policy reads their kind.
func unresolvable(key string) bool {
	switch key[strings.LastIndexByte(key, '.')+1:] {
	case "username", "password", "client_id", "client_secret", "refresh_token", "webhook_secret":
		return true
	}
	return false
}

// getenv is the environment for the value at key: under UnresolvedSecrets
// an unset (or empty) variable in a secret expands to its own ${NAME}.
func (d *decoder) getenv(key string) func(string) (string, bool) {
	if !d.l.UnresolvedSecrets || !unresolvable(key) {
		return d.l.getenv
	}
	return func(name string) (string, bool) {
		if v, ok := d.l.getenv(name); ok && v != "" {
			return v, true
		}
		return "${" + name + "}", true
	}
}
