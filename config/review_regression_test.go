package config

import (
	"strings"
	"testing"
)

// TestBadPatternRejected: a sender or recipient pattern the policy engine
// cannot compile ("*.example.com", a common way to mean "any subdomain")
// is refused by the loader, so check-config reports it with file:line: key
// instead of `serve` failing later without either.
func TestBadPatternRejected(t *testing.T) {
	t.Parallel()
	for _, pat := range []string{"*.example.com", "user@*.example.com", "{usr}@example.com", "a b@example.com"} {
		_, err := parse(t, nil, nil, base+"policies:\n  default:\n    allowed_senders: [\""+pat+"\"]\n")
		if err == nil {
			t.Errorf("allowed_senders [%q] loads; policy.New refuses it, so serve fails after check-config passed", pat)
			continue
		}
		if !strings.Contains(err.Error(), "sluice.yaml:") || !strings.Contains(err.Error(), "allowed_senders[0]") {
			t.Errorf("error does not name file:line and key: %v", err)
		}
	}
	_, err := parse(t, nil, nil, base+"policies:\n  default:\n    denied_recipients: [\"*.example.com\"]\n")
	if err == nil {
		t.Errorf("denied_recipients [\"*.example.com\"] loads; policy.New refuses it")
	}
}

// DESIGN §2: "any *_file key reads the value from a file (secrets)". An SES
// SMTP user name is an IAM access key id, kept in a secret store like the
// password; username_file is refused as an unknown key.
func TestUsernameFile(t *testing.T) {
	t.Parallel()
	files := map[string]string{"/etc/sluice/user": "AKIAEXAMPLE\n", "/etc/sluice/pw": "pw\n"}
	c, err := parse(t, nil, files, `
tls: {self_signed: true}
listeners: [{name: s, address: ":587"}]
upstreams: [{name: u, host: smtp.example.com, username_file: user, password_file: pw}]
`)
	if err != nil {
		t.Fatalf("username_file refused: %v", err)
	}
	if c.Upstreams[0].Username != "AKIAEXAMPLE" {
		t.Errorf("username = %q, want AKIAEXAMPLE", c.Upstreams[0].Username)
	}
}
