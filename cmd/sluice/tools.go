package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/passwd"
	"github.com/sluicemail/sluice/signing"
)

func runCheckConfig(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := newFlags("check-config")
	if _, err := parseFlags(fs, args); err != nil {
		return usageErr(stderr, "usage: sluice check-config [-c FILE]")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	if _, err := signing.LoadKeyring(cfg.DKIM, cfg.StateDir); err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	fmt.Fprint(stdout, config.Summary(cfg))
	return nil
}

// runPasswd reads one line from stdin when it is not a terminal, else
// prompts twice, and prints one hash (DESIGN §7).
func runPasswd(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	useBcrypt := fs.Bool("bcrypt", false, "bcrypt (cost 10) instead of argon2id")
	if _, err := parseFlags(fs, args); err != nil {
		return usageErr(stderr, "usage: sluice passwd [--bcrypt]")
	}
	pw, err := readPassword(stdin, stderr, true)
	if err != nil {
		return err
	}
	var h string
	if *useBcrypt {
		h, err = passwd.HashBcrypt(pw)
	} else {
		h, err = passwd.Hash(pw)
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, h)
	return nil
}

// readPassword reads a password from a terminal (no echo) or one line of stdin.
func readPassword(stdin io.Reader, stderr io.Writer, confirm bool) (string, error) {
	if f, ok := stdin.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if confirm {
			fmt.Fprint(stderr, "Again: ")
			b, err := term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(stderr)
			if err != nil {
				return "", err
			}
			if string(a) != string(b) {
				return "", errors.New("the passwords differ")
			}
		}
		if len(a) == 0 {
			return "", errors.New("empty password")
		}
		return string(a), nil
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty password on standard input")
	}
	return line, nil
}

func runDKIM(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		return usageErr(stderr, dkimUsage)
	}
	switch args[0] {
	case "rotate":
		return runDKIMRotate(args[1:], stdout, stderr)
	case "activate":
		return runDKIMActivate(args[1:], stdout, stderr)
	case "status":
		return runDKIMStatus(args[1:], stdout, stderr)
	case "keygen":
		fs := flag.NewFlagSet("dkim keygen", flag.ContinueOnError)
		domain := fs.String("domain", "", "signing domain")
		selector := fs.String("selector", "", "selector")
		algo := fs.String("algo", "rsa", "rsa or ed25519")
		bits := fs.Int("bits", 2048, "RSA key size")
		out := fs.String("out", "", "key file to write (PKCS#8 PEM, mode 0600)")
		force := fs.Bool("force", false, "overwrite an existing file")
		if _, err := parseFlags(fs, args[1:]); err != nil || *domain == "" || *selector == "" || *out == "" {
			return usageErr(stderr, "usage: sluice dkim keygen --domain D --selector S [--algo rsa|ed25519] [--bits 2048] --out FILE [--force]")
		}
		key, err := signing.GenerateKey(*algo, *bits)
		if err != nil {
			return err
		}
		if err := signing.WriteKeyFile(*out, key, *force); err != nil {
			return err
		}
		fmt.Fprintln(stdout, signing.DNSRecord(*domain, *selector, key.Public()))
		return nil
	case "dns":
		fs, path := newFlags("dkim dns")
		dev := fs.Bool("dev", false, "the --dev mode's key")
		devDir := fs.String("dev-dir", "./sluice-dev", "state directory of --dev")
		if _, err := parseFlags(fs, args[1:]); err != nil {
			return usageErr(stderr, "usage: sluice dkim dns [-c FILE | --dev [--dev-dir DIR]]")
		}
		var cfg *config.Config
		var err error
		if *dev {
			cfg, _, err = devConfig(*devDir)
		} else {
			cfg, err = loadNoSecrets(*path)
		}
		if err != nil {
			return err
		}
		for _, k := range cfg.DKIM {
			if k.Managed {
				if err := printManagedRecords(stdout, cfg, k); err != nil {
					return err
				}
				continue
			}
			b, err := os.ReadFile(k.KeyFile)
			if err != nil {
				return err
			}
			key, err := signing.ParseKeyPEM(b)
			if err != nil {
				return fmt.Errorf("%s: %w", k.KeyFile, err)
			}
			fmt.Fprintln(stdout, signing.DNSRecord(k.Domain, k.Selector, key.Public()))
		}
		return nil
	}
	return usageErr(stderr, "sluice dkim: unknown subcommand %q\n%s", args[0], dkimUsage)
}
