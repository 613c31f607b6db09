package config

import (
	"strings"
	"testing"
)

// TestUnresolvedSecrets: a command that needs no secret loads a config whose
// upstream and webhook secrets are unset or unreadable; every other
// unset variable is still an error, and a normal load still refuses.
func TestUnresolvedSecrets(t *testing.T) {
	t.Parallel()
	const y = `hostname: relay.test
state_dir: /var/lib/sluice
listeners:
  - name: local
    address: 127.0.0.1:2525
    tls: none
    auth: none
    trusted_networks: [127.0.0.1/32]
queue:
  webhook: https://hooks.example/x
  webhook_secret_file: /nonexistent/secret
upstreams:
  - name: ses
    host: smtp.example.net
    username: ${UP_USER}
    password: "${UP_PW}"
  - name: mg
    host: smtp.example.org
    username: api
    password_file: /nonexistent/pw
`
	env := map[string]string{"UP_PW": ""}
	if _, err := testLoader(env).Parse([]byte(y), "s.yaml"); err == nil || !strings.Contains(err.Error(), "${UP_USER} is not set") {
		t.Fatalf("normal load: %v, want ${UP_USER} is not set", err)
	}
	l := testLoader(env)
	l.UnresolvedSecrets = true
	c, err := l.Parse([]byte(y), "s.yaml")
	if err != nil {
		t.Fatalf("load without secrets: %v", err)
	}
	if c.Upstreams[0].Username != "${UP_USER}" || c.Upstreams[0].Password != "${UP_PW}" {
		t.Errorf("unresolved secrets: username %q password %q, want them as written", c.Upstreams[0].Username, c.Upstreams[0].Password)
	}
	_, err = l.Parse([]byte(strings.Replace(y, "hostname: relay.test", "hostname: ${HOST}", 1)), "s.yaml")
	if err == nil || !strings.Contains(err.Error(), "s.yaml:1: hostname: ${HOST} is not set") {
		t.Errorf("unset variable outside a secret: %v, want s.yaml:1: hostname: ${HOST} is not set", err)
	}
}
