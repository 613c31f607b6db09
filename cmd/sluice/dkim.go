package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/dnsclient"
	"github.com/sluicemail/sluice/signing"
)

// The managed-key commands (DESIGN §8.4): rotate, activate, status. They
// act on state_dir/dkim/ directly, with or without a running daemon; the
// daemon notices the change within seconds (cmd/sluice/dkimwatch.go).

const dkimUsage = `usage: sluice dkim keygen --domain D --selector S [--algo rsa|ed25519] [--bits 2048] --out FILE [--force]
       sluice dkim dns [-c FILE | --dev [--dev-dir DIR]]
       sluice dkim rotate --domain D [--selector S] [--force] [-c FILE]
       sluice dkim activate --domain D [-c FILE]
       sluice dkim status [--domain D] [--json] [-c FILE]`

// managedEntry loads the configuration at path and returns it with the
// entry managing domain.
func managedEntry(path, domain string) (*config.Config, config.DKIMKey, error) {
	cfg, err := loadNoSecrets(path)
	if err != nil {
		return nil, config.DKIMKey{}, err
	}
	for _, k := range cfg.DKIM {
		if k.Managed && strings.EqualFold(strings.TrimSuffix(k.Domain, "."), strings.TrimSuffix(domain, ".")) {
			return cfg, k, nil
		}
	}
	return nil, config.DKIMKey{}, fmt.Errorf("%s is not a managed domain in %s (add `- {domain: %s, managed: true}` under dkim:)", domain, cfg.Path, domain)
}

func newResolver(cfg *config.Config) (*dnsclient.Client, error) {
	return dnsclient.New(cfg.DNS.Resolver, cfg.DNS.Timeout)
}

func runDKIMRotate(args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("dkim rotate")
	domain := fs.String("domain", "", "managed domain")
	selector := fs.String("selector", "", "selector of the new key (r/e appended for two algorithms)")
	force := fs.Bool("force", false, "replace keys still pending")
	if _, err := parseFlags(fs, args); err != nil || *domain == "" {
		return usageErr(stderr, "usage: sluice dkim rotate --domain D [--selector S] [--force] [-c FILE]")
	}
	cfg, entry, err := managedEntry(*path, *domain)
	if err != nil {
		return err
	}
	store := signing.NewStore(cfg.StateDir)
	keys, err := store.Rotate(entry.Domain, signing.RotateOptions{Algorithms: entry.Algorithms, Selector: *selector, Force: *force})
	if err != nil {
		return err
	}
	for _, k := range keys {
		signer, err := store.Signer(entry.Domain, k.Selector)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, signing.DNSRecord(entry.Domain, k.Selector, signer.Public()))
	}
	fmt.Fprintf(stderr, "publish the records above; the keys are pending and sign nothing until DNS serves them.\n"+
		"serve activates them within dkim_check_interval (%s), or run: sluice dkim activate --domain %s\n", cfg.DKIMCheckInterval, entry.Domain)
	return nil
}

func runDKIMActivate(args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("dkim activate")
	domain := fs.String("domain", "", "managed domain")
	if _, err := parseFlags(fs, args); err != nil || *domain == "" {
		return usageErr(stderr, "usage: sluice dkim activate --domain D [-c FILE]")
	}
	cfg, entry, err := managedEntry(*path, *domain)
	if err != nil {
		return err
	}
	res, err := newResolver(cfg)
	if err != nil {
		return err
	}
	store := signing.NewStore(cfg.StateDir)
	before, err := store.Keys(entry.Domain)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	after, err := store.Check(ctx, entry.Domain, res.LookupTXT, cfg.DKIMRetireAfter)
	if err != nil {
		return err
	}
	was := map[string]string{}
	for _, k := range before {
		was[k.Selector] = k.State
	}
	var activated, waiting []string
	for _, k := range after {
		switch {
		case k.State == signing.StateActive && was[k.Selector] == signing.StatePending:
			activated = append(activated, k.Selector)
		case k.State == signing.StatePending:
			if k.DNS != signing.DNSOK {
				waiting = append(waiting, fmt.Sprintf("%s (%s)", k.Detail, k.DNS))
			}
		}
	}
	if len(waiting) > 0 {
		return &exitError{code: 1, msg: "sluice dkim activate: not activated, signing continues with the active keys:\n  " + strings.Join(waiting, "\n  ")}
	}
	if len(activated) == 0 {
		fmt.Fprintf(stdout, "%s: no key pending\n", entry.Domain)
		return nil
	}
	fmt.Fprintf(stdout, "%s: activated %s\n", entry.Domain, strings.Join(activated, ", "))
	for _, k := range after {
		if k.State == signing.StateRetiring && was[k.Selector] == signing.StateActive {
			fmt.Fprintf(stdout, "%s: %s is retiring: keep its record for %s\n", entry.Domain, k.Selector, cfg.DKIMRetireAfter)
		}
	}
	return nil
}

// keyStatuses lists every key of the configuration (static ones as
// active) with its DNS state, looked up now. Nothing changes.
func keyStatuses(ctx context.Context, cfg *config.Config, lookup signing.LookupTXT, domain string) ([]signing.KeyStatus, error) {
	store := signing.NewStore(cfg.StateDir)
	var out []signing.KeyStatus
	for _, ck := range cfg.DKIM {
		if domain != "" && !strings.EqualFold(strings.TrimSuffix(ck.Domain, "."), strings.TrimSuffix(domain, ".")) {
			continue
		}
		if !ck.Managed {
			b, err := os.ReadFile(ck.KeyFile)
			if err != nil {
				return nil, err
			}
			key, err := signing.ParseKeyPEM(b)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", ck.KeyFile, err)
			}
			ks := signing.KeyStatus{Domain: strings.TrimSuffix(ck.Domain, "."), Selector: ck.Selector, Algorithm: algorithmOf(key), State: signing.StateActive}
			if fi, err := os.Stat(ck.KeyFile); err == nil {
				ks.Created = fi.ModTime().UTC()
			}
			ks.DNS, ks.Detail = signing.CheckDNS(ctx, lookup, ck.Domain, ck.Selector, key.Public())
			out = append(out, ks)
			continue
		}
		keys, err := store.Keys(ck.Domain)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			ks := signing.KeyStatus{Domain: strings.ToLower(strings.TrimSuffix(ck.Domain, ".")), Selector: k.Selector, Algorithm: k.Algorithm, State: k.State, Created: k.Created, Managed: true}
			signer, err := store.Signer(ck.Domain, k.Selector)
			if err != nil {
				ks.DNS, ks.Detail = signing.DNSError, err.Error()
			} else {
				ks.DNS, ks.Detail = signing.CheckDNS(ctx, lookup, ck.Domain, k.Selector, signer.Public())
			}
			if k.State == signing.StateRetired {
				ks.Detail += "; retired: the record may be removed"
			}
			out = append(out, ks)
		}
	}
	return out, nil
}

func algorithmOf(k crypto.Signer) string {
	if _, ok := k.(ed25519.PrivateKey); ok {
		return config.AlgoEd25519
	}
	return config.AlgoRSA
}

func runDKIMStatus(args []string, stdout, stderr io.Writer) error {
	fs, path := newFlags("dkim status")
	domain := fs.String("domain", "", "only this domain")
	asJSON := fs.Bool("json", false, "one JSON object per key and line")
	if _, err := parseFlags(fs, args); err != nil {
		return usageErr(stderr, "usage: sluice dkim status [--domain D] [--json] [-c FILE]")
	}
	cfg, err := loadNoSecrets(*path)
	if err != nil {
		return err
	}
	res, err := newResolver(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := keyStatuses(ctx, cfg, res.LookupTXT, *domain)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, k := range st {
			if err := enc.Encode(k); err != nil {
				return err
			}
		}
		return nil
	}
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "DOMAIN\tSELECTOR\tALGORITHM\tSTATE\tDNS\tCREATED\tDETAIL")
	for _, k := range st {
		created := "-"
		if !k.Created.IsZero() {
			created = k.Created.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.Domain, k.Selector, k.Algorithm, k.State, k.DNS, created, k.Detail)
	}
	return w.Flush()
}

// printManagedRecords prints the records of a managed domain's keys that
// must be in DNS: pending, active and retiring.
func printManagedRecords(stdout io.Writer, cfg *config.Config, ck config.DKIMKey) error {
	store := signing.NewStore(cfg.StateDir)
	keys, err := store.Keys(ck.Domain)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k.State == signing.StateRetired {
			continue
		}
		signer, err := store.Signer(ck.Domain, k.Selector)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, signing.DNSRecord(ck.Domain, k.Selector, signer.Public()))
	}
	return nil
}
