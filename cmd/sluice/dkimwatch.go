package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/signing"
)

// The daemon's side of managed DKIM keys (DESIGN §8.4). Every
// dkim_check_interval it looks up every key's record: a pending generation
// whose records all verify becomes active, retiring keys past
// dkim_retire_after are retired, and the metrics are refreshed. Every few
// seconds it also compares the managed domains' state files with what it
// loaded, so `sluice dkim activate` or `rotate` run beside it takes effect
// without a restart or SIGHUP. A change of keys reaches the relay the way
// SIGHUP's does (relay.Reload): sessions in progress finish with the keys
// they started with, and mail already queued keeps the signature it got.

// dkimPoll is how often the state files are compared.
const dkimPoll = 2 * time.Second

type dkimWatch struct {
	d       *daemon
	changed chan struct{} // the key set on disk changed (buffered 1)

	mu     sync.Mutex
	status map[string]signing.KeyStatus // domain/selector → last check
	dnsOK  map[string]float64           // domain/selector → last definite answer
	seen   []byte                       // the state files when last loaded
}

func newDKIMWatch(d *daemon) *dkimWatch {
	w := &dkimWatch{d: d, changed: make(chan struct{}, 1), status: map[string]signing.KeyStatus{}, dnsOK: map[string]float64{}}
	metrics.Default.NewGaugeTable("sluice_dkim_key_age_seconds", "Age of each active DKIM key (static keys: the key file's modification time).",
		[]string{"domain", "selector"}, w.ageSamples)
	metrics.Default.NewGaugeTable("sluice_dkim_dns_ok", "1 when DNS serves the active or retiring key's exact record, 0 when it is missing or different.",
		[]string{"domain", "selector"}, w.dnsSamples)
	return w
}

func (w *dkimWatch) cfg() *config.Config {
	w.d.keysMu.RLock()
	defer w.d.keysMu.RUnlock()
	return w.d.cfg
}

// fingerprint is the content of every managed domain's state file.
func fingerprint(cfg *config.Config) []byte {
	var b bytes.Buffer
	for _, k := range cfg.DKIM {
		if !k.Managed {
			continue
		}
		data, _ := os.ReadFile(filepath.Join(cfg.StateDir, "dkim", strings.ToLower(strings.TrimSuffix(k.Domain, ".")), "state.json"))
		b.WriteString(k.Domain)
		b.WriteByte(0)
		b.Write(data)
		b.WriteByte(0)
	}
	return b.Bytes()
}

// markLoaded records the state files the running key set was built from.
func (w *dkimWatch) markLoaded(cfg *config.Config) {
	fp := fingerprint(cfg)
	w.mu.Lock()
	w.seen = fp
	w.mu.Unlock()
}

func (w *dkimWatch) run(ctx context.Context) {
	poll := time.NewTicker(dkimPoll)
	defer poll.Stop()
	var next time.Time
	for {
		cfg := w.cfg()
		if now := time.Now(); !now.Before(next) {
			w.check(ctx, cfg)
			next = time.Now().Add(cfg.DKIMCheckInterval)
		}
		fp := fingerprint(cfg)
		w.mu.Lock()
		differs := !bytes.Equal(fp, w.seen)
		w.mu.Unlock()
		if differs {
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		}
	}
}

// check looks up every key's record and applies what it found.
func (w *dkimWatch) check(ctx context.Context, cfg *config.Config) {
	log := w.d.log
	res, err := newResolver(cfg)
	if err != nil {
		log.Error("dkim check", "err", err.Error())
		return
	}
	store := signing.NewStore(cfg.StateDir)
	var all []signing.KeyStatus
	for _, ck := range cfg.DKIM {
		if !ck.Managed {
			continue
		}
		before, _ := store.Keys(ck.Domain)
		was := map[string]string{}
		for _, k := range before {
			was[k.Selector] = k.State
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		st, err := store.Check(cctx, ck.Domain, res.LookupTXT, cfg.DKIMRetireAfter)
		cancel()
		if err != nil {
			log.Error("dkim check", "domain", ck.Domain, "err", err.Error())
			continue
		}
		for _, k := range st {
			if prev := was[k.Selector]; prev != "" && prev != k.State {
				log.Info("dkim_key_"+k.State, "domain", k.Domain, "selector", k.Selector, "previous", prev)
			}
			if k.State == signing.StatePending && k.DNS != signing.DNSOK {
				log.Info("dkim key pending", "domain", k.Domain, "selector", k.Selector, "dns", k.DNS, "detail", k.Detail)
			}
		}
		all = append(all, st...)
	}
	// Static keys are checked too (metrics, a record gone missing), except
	// the --dev key: example.test is never in DNS.
	if !w.d.dev {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		static, err := keyStatuses(cctx, staticOnly(cfg), res.LookupTXT, "")
		cancel()
		if err != nil {
			log.Error("dkim check", "err", err.Error())
		}
		all = append(all, static...)
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	fresh := map[string]signing.KeyStatus{}
	for _, k := range all {
		id := k.Domain + "/" + k.Selector
		fresh[id] = k
		if k.State != signing.StateActive && k.State != signing.StateRetiring {
			delete(w.dnsOK, id)
			continue
		}
		switch k.DNS {
		case signing.DNSOK:
			w.dnsOK[id] = 1
		case signing.DNSMissing, signing.DNSMismatch:
			if w.dnsOK[id] != 0 || w.status[id].DNS != k.DNS {
				log.Warn("dkim record of a signing key is not in DNS", "domain", k.Domain, "selector", k.Selector, "dns", k.DNS, "detail", k.Detail)
			}
			w.dnsOK[id] = 0
		}
	}
	for id := range w.dnsOK {
		if _, ok := fresh[id]; !ok {
			delete(w.dnsOK, id)
		}
	}
	w.status = fresh
}

func staticOnly(cfg *config.Config) *config.Config {
	c := *cfg
	c.DKIM = nil
	for _, k := range cfg.DKIM {
		if !k.Managed {
			c.DKIM = append(c.DKIM, k)
		}
	}
	return &c
}

func (w *dkimWatch) ageSamples() []metrics.Sample {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	var out []metrics.Sample
	for _, k := range w.status {
		if k.State == signing.StateActive && !k.Created.IsZero() {
			out = append(out, metrics.Sample{Labels: []string{k.Domain, k.Selector}, Value: now.Sub(k.Created).Seconds()})
		}
	}
	sortSamples(out)
	return out
}

func (w *dkimWatch) dnsSamples() []metrics.Sample {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []metrics.Sample
	for id, v := range w.dnsOK {
		k := w.status[id]
		out = append(out, metrics.Sample{Labels: []string{k.Domain, k.Selector}, Value: v})
	}
	sortSamples(out)
	return out
}

func sortSamples(s []metrics.Sample) {
	slices.SortFunc(s, func(a, b metrics.Sample) int {
		return strings.Compare(strings.Join(a.Labels, "\x00"), strings.Join(b.Labels, "\x00"))
	})
}

// reloadKeys rebuilds the key set from the configuration and the managed
// keys' state and hands it to the relay.
func (d *daemon) reloadKeys() {
	d.keysMu.RLock()
	cfg, pol := d.cfg, d.policy
	d.keysMu.RUnlock()
	d.dkim.markLoaded(cfg)
	keys, err := signing.LoadKeyring(cfg.DKIM, cfg.StateDir)
	if err != nil {
		d.log.Error("dkim keys not reloaded, keeping the running ones", "err", err.Error())
		return
	}
	d.relay.Reload(cfg, pol, keys)
	d.keysMu.Lock()
	oldKeys := d.keys
	d.keys = keys
	d.keysMu.Unlock()
	// As after SIGHUP: the old keys' libcrypto copies are freed once the
	// sessions that began with them had time to finish.
	time.AfterFunc(cfg.ShutdownTimeout+time.Minute, oldKeys.Close)
	d.log.Info("dkim keys reloaded", "signing", signingSummary(cfg, keys))
}

// signingSummary names the selectors signing for each configured domain.
func signingSummary(cfg *config.Config, keys *signing.Keyring) string {
	var parts []string
	done := map[string]bool{}
	for _, ck := range cfg.DKIM {
		d := strings.ToLower(strings.TrimSuffix(ck.Domain, "."))
		if done[d] {
			continue
		}
		done[d] = true
		var sels []string
		for _, k := range keys.Keys(d) {
			sels = append(sels, k.Selector)
		}
		if len(sels) == 0 {
			sels = []string{"none"}
		}
		parts = append(parts, d+"="+strings.Join(sels, ","))
	}
	return strings.Join(parts, " ")
}

// warnUnsigned logs each managed domain that no key signs yet.
func (d *daemon) warnUnsigned(cfg *config.Config, keys *signing.Keyring) {
	for _, ck := range cfg.DKIM {
		if ck.Managed && !keys.Has(ck.Domain) {
			d.log.Warn("managed dkim domain has no active key: its mail is not signed until a pending key's record is in DNS (sluice dkim rotate, then activate)", "domain", ck.Domain)
		}
	}
}
