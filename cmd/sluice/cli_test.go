package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/sluicemail/sluice/internal/passwd"
)

// TestPasswd: one line on stdin (not a terminal) gives one hash that
// verifies, argon2id by default and bcrypt with --bcrypt.
func TestPasswd(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args   []string
		prefix string
	}{{nil, "$argon2id$v=19$m=19456,t=1,p=1$"}, {[]string{"--bcrypt"}, "$2a$10$"}} {
		out, stderr, code := runCmd(t, "s3cret\n", append([]string{"passwd"}, c.args...)...)
		h := strings.TrimSpace(out)
		if code != 0 || !strings.HasPrefix(h, c.prefix) || strings.Count(out, "\n") != 1 {
			t.Fatalf("passwd %v: code %d, out %q, err %q", c.args, code, out, stderr)
		}
		if err := passwd.Verify(h, "s3cret"); err != nil {
			t.Errorf("hash does not verify: %v", err)
		}
	}
	if _, _, code := runCmd(t, "", "passwd"); code != 1 {
		t.Errorf("empty stdin: exit %d, want 1", code)
	}
}

// TestDKIMCommands: keygen writes a 0600 PKCS#8 key and prints the zone
// line; dkim dns prints the same line from the config.
func TestDKIMCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out, stderr, code := runCmd(t, "", "dkim", "keygen", "--domain", "example.com", "--selector", "s1", "--out", filepath.Join(e.dir, "k.pem"))
	if code != 0 {
		t.Fatal(stderr)
	}
	line := regexp.MustCompile(`^s1\._domainkey\.example\.com\. IN TXT \( "v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]+" "[A-Za-z0-9+/=]+" \)\n$`)
	if !line.MatchString(out) {
		t.Errorf("keygen printed %q", out)
	}
	fi, err := os.Stat(filepath.Join(e.dir, "k.pem"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file mode: %v %v", fi.Mode(), err)
	}
	pem, _ := os.ReadFile(filepath.Join(e.dir, "k.pem"))
	if !strings.HasPrefix(string(pem), "-----BEGIN PRIVATE KEY-----") {
		t.Errorf("key is not PKCS#8 PEM")
	}
	if _, _, code := runCmd(t, "", "dkim", "keygen", "--domain", "example.com", "--selector", "s1", "--out", filepath.Join(e.dir, "k.pem")); code == 0 {
		t.Errorf("keygen overwrote an existing key")
	}
	cfg := e.config(strings.NewReplacer("{{UP}}", upstreamYAML(25), "{{DIR}}/rsa.pem", "{{DIR}}/k.pem", "{{DIR}}/ed.pem", "{{DIR}}/ed2.pem").Replace(baseYAML))
	runCmd(t, "", "dkim", "keygen", "--domain", "example.com", "--selector", "ed1", "--algo", "ed25519", "--out", filepath.Join(e.dir, "ed2.pem"))
	dns, stderr, code := runCmd(t, "", "dkim", "dns", "-c", cfg)
	if code != 0 {
		t.Fatal(stderr)
	}
	lines := strings.Split(strings.TrimSpace(dns), "\n")
	if len(lines) != 2 || lines[0]+"\n" != strings.Replace(out, "s1._domainkey", "rsa1._domainkey", 1) || !strings.Contains(lines[1], `ed1._domainkey.example.com. IN TXT ( "v=DKIM1; k=ed25519; p=`) {
		t.Errorf("dkim dns printed:\n%s", dns)
	}
}

// TestCheckConfig: a good file prints a summary (exit 0); a broken one
// prints every error as file:line: key: problem (exit 1).
func TestCheckConfig(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.keygen()
	good := e.config(strings.Replace(baseYAML, "{{UP}}", upstreamYAML(2525), 1))
	out, stderr, code := runCmd(t, "", "check-config", "-c", good)
	if code != 0 || !strings.Contains(out, "submission") {
		t.Fatalf("good config: exit %d\n%s%s", code, out, stderr)
	}
	bad := filepath.Join(e.dir, "bad.yaml")
	os.WriteFile(bad, []byte("hostname: x\nlisteners:\n  - name: a\n    address: \":587\"\n    tls: sometimes\n    max_connz: 3\nupstreams: []\n"), 0o600)
	_, stderr, code = runCmd(t, "", "check-config", "-c", bad)
	if code != 1 {
		t.Errorf("bad config: exit %d, want 1", code)
	}
	for _, want := range []string{bad + ":5: listeners[0].tls:", bad + ":6: listeners[0].max_connz: unknown key"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("bad config errors lack %q:\n%s", want, stderr)
		}
	}
	if _, _, code := runCmd(t, "", "check-config", "-c", filepath.Join(e.dir, "missing.yaml")); code != 1 {
		t.Errorf("missing file: exit %d, want 1", code)
	}
	if _, _, code := runCmd(t, "", "no-such-command"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

// TestQueueListByStateDir: `sluice queue list --state-dir` needs no config
// (and so none of the daemon's secrets) and sees a deferred message.
func TestQueueListByStateDir(t *testing.T) {
	t.Parallel()
	d := launch(t, baseCfg, refused)
	id := d.mustSend("waiting", "x")
	out, stderr, code := runCmd(t, "", "queue", "list", "--json", "--state-dir", filepath.Join(d.dir, "state"))
	if code != 0 || !strings.Contains(out, `"id":"`+id+`"`) {
		t.Errorf("queue list --state-dir: exit %d, want %s in:\n%s%s", code, id, out, stderr)
	}
}

// TestHelp: `sluice CMD --help` (and -h) prints the command's usage on
// stdout and exits 0; the command list names the flags operators look for.
func TestHelp(t *testing.T) {
	t.Parallel()
	for _, c := range []string{"serve", "check-config", "passwd", "dkim", "queue", "policy", "doctor", "upstreams", "trace", "send", "sendmail"} {
		for _, h := range []string{"--help", "-h"} {
			if c == "sendmail" && h == "-h" {
				continue // sendmail's -h is a hop count
			}
			out, stderr, code := runCmd(t, "", c, h)
			if code != 0 || !strings.HasPrefix(out, "usage: sluice "+c) || strings.Contains(out+stderr, "flag:") {
				t.Errorf("sluice %s %s: exit %d\nstdout: %s\nstderr: %s", c, h, code, out, stderr)
			}
		}
	}
	if out, _, code := runCmd(t, "", "dkim", "keygen", "--help"); code != 0 || !strings.HasPrefix(out, "usage: sluice dkim keygen") {
		t.Errorf("dkim keygen --help: exit %d: %s", code, out)
	}
	if _, stderr, code := runCmd(t, "", "send", "--no-such-flag"); code != 2 || !strings.HasPrefix(stderr, "usage: sluice send") {
		t.Errorf("send --no-such-flag: exit %d: %s, want 2 and the usage", code, stderr)
	}
	_, list, code := runCmd(t, "", "no-such-command")
	if code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
	for _, want := range []string{"send          --server H:P [--user U [--password P]] --from A --to B [--data FILE|-]",
		"upstreams     [-c FILE | --state-dir DIR]", "policy        explain --user U --from A --to B [--to C ...] [--size N] [-c FILE]"} {
		if !strings.Contains(list, want) {
			t.Errorf("the command list lacks %q:\n%s", want, list)
		}
	}
}

// TestDKIMDNSWithoutSecrets: `dkim dns -c` needs no upstream secret, so it
// works in a shell without the daemon's environment; check-config, which
// checks everything, still names the unset variable.
func TestDKIMDNSWithoutSecrets(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.keygen()
	ups := upstreamYAML(25) + "    username: ${SLUICE_TEST_UNSET_USER}\n    password: \"${SLUICE_TEST_UNSET_PW}\"\n"
	cfg := e.config(strings.Replace(baseYAML, "{{UP}}", ups, 1))
	out, stderr, code := runCmd(t, "", "dkim", "dns", "-c", cfg)
	if code != 0 || strings.Count(out, "._domainkey.example.com. IN TXT") != 2 {
		t.Errorf("dkim dns with unset upstream secrets: exit %d\n%s%s", code, out, stderr)
	}
	if _, stderr, code := runCmd(t, "", "check-config", "-c", cfg); code != 1 || !strings.Contains(stderr, "${SLUICE_TEST_UNSET_USER} is not set") {
		t.Errorf("check-config with unset secrets: exit %d: %s", code, stderr)
	}
}
