package main

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/passwd"
	"github.com/sluicemail/sluice/signing"
)

// The embedded development configuration of `sluice serve --dev` (DESIGN
// §3, §7): no file needed, everything generated under one directory and
// reused across runs.
const devYAML = `hostname: localhost
state_dir: {{DIR}}/state
shutdown_timeout: 5s
tls:
  self_signed: true
listeners:
  - name: submission
    address: "127.0.0.1:2525"
    tls: starttls
    auth: required
  - name: submissions
    address: "127.0.0.1:2465"
    tls: implicit
    auth: required
users:
  - name: demo
    password_hash: "{{HASH}}"
policies:
  default:
    allowed_senders: ["*@example.test"]
    max_message_size: 25MB
dkim:
  - domain: example.test
    selector: sluice
    key_file: {{DIR}}/dkim/example.test.sluice.pem
upstreams:
  - name: local
    type: maildir
    path: {{DIR}}/mail
queue:
  retry: [5s, 30s, 1m, 5m]
http:
  address: 127.0.0.1:8025
`

const devSelector, devDomain = "sluice", "example.test"

type devInfo struct {
	user, password, dns, mail string
}

func (i *devInfo) print(w io.Writer) {
	fmt.Fprintf(w, "smtp user: %s\nsmtp password: %s\ndkim: %s\nmail: %s\n", i.user, i.password, i.dns, i.mail)
	fmt.Fprintf(w, "try: sluice send --server 127.0.0.1:2525 --insecure --user %s --password %s --from demo@example.test --to someone@example.org\n", i.user, i.password)
}

// devConfig creates (or reuses) the dev state in dir and returns its config.
func devConfig(dir string) (*config.Config, *devInfo, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, d := range []string{abs, filepath.Join(abs, "dkim"), filepath.Join(abs, "mail")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, nil, fmt.Errorf("dev: %w", err)
		}
	}
	pw, err := devPassword(filepath.Join(abs, "password"))
	if err != nil {
		return nil, nil, err
	}
	keyFile := filepath.Join(abs, "dkim", devDomain+"."+devSelector+".pem")
	dns, err := devKey(keyFile)
	if err != nil {
		return nil, nil, err
	}
	hash, err := passwd.Hash(pw)
	if err != nil {
		return nil, nil, err
	}
	y := strings.NewReplacer("{{DIR}}", abs, "{{HASH}}", hash).Replace(devYAML)
	cfg, err := config.Parse([]byte(y), filepath.Join(abs, "dev.yaml"))
	if err != nil {
		return nil, nil, fmt.Errorf("dev: embedded config: %w", err)
	}
	mail := dir
	if !filepath.IsAbs(dir) && !strings.HasPrefix(dir, ".") {
		mail = "./" + dir
	}
	return cfg, &devInfo{user: "demo", password: pw, dns: dns, mail: filepath.ToSlash(mail) + "/mail"}, nil
}

// devPassword keeps the demo password stable across runs.
func devPassword(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("dev: %w", err)
	}
	pw := rand.Text()[:20]
	if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("dev: %w", err)
	}
	return pw, nil
}

// devKey makes the dev DKIM key once and returns its DNS record line.
func devKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key, gerr := signing.GenerateKey("rsa", 2048)
		if gerr != nil {
			return "", gerr
		}
		if werr := signing.WriteKeyFile(path, key, false); werr != nil {
			return "", werr
		}
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("dev: %w", err)
	}
	key, err := signing.ParseKeyPEM(b)
	if err != nil {
		return "", fmt.Errorf("dev: %s: %w", path, err)
	}
	return signing.DNSRecord(devDomain, devSelector, key.Public()), nil
}
