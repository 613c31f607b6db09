package signing

import (
	"cmp"
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/dnsclient"
)

// Managed keys (DESIGN §8.4). A managed domain keeps its keys under
// state_dir/dkim/DOMAIN/: one SELECTOR.pem per key and state.json, the
// only record of each key's state. Keys move pending → active → retiring
// → retired, one generation (the keys one rotate made: RSA and Ed25519)
// at a time:
//
//   - rotate writes the new key files (fsync'd), then state.json with the
//     keys pending. A crash between the two leaves unreferenced key files,
//     never a key in state.json without its file.
//   - a generation becomes active only once DNS serves the exact public key
//     of every key in it; in the same state.json write the keys it replaces
//     become retiring. So no key is ever active whose record was not seen.
//   - retiring keys no longer sign; after retire_after they are retired and
//     their records may be removed.
//
// state.json is replaced atomically (temp file, fsync, rename, fsync of the
// directory), and every read-modify-write holds an flock on DIR/.lock, so
// the daemon and the `sluice dkim` commands can act on a domain at once.

// Key states.
const (
	StatePending  = "pending"
	StateActive   = "active"
	StateRetiring = "retiring"
	StateRetired  = "retired"
)

// ManagedKey is one key of a managed domain as state.json records it.
type ManagedKey struct {
	Selector   string     `json:"selector"`
	Algorithm  string     `json:"algorithm"` // rsa | ed25519
	State      string     `json:"state"`
	Generation int        `json:"generation"`
	Created    time.Time  `json:"created"`
	Activated  *time.Time `json:"activated,omitempty"`
	Retiring   *time.Time `json:"retiring_since,omitempty"`
	Retired    *time.Time `json:"retired,omitempty"`
}

type stateFile struct {
	Version int          `json:"version"`
	Domain  string       `json:"domain"`
	Keys    []ManagedKey `json:"keys"`
}

// Store is the managed keys of every domain under one directory
// (state_dir/dkim).
type Store struct {
	Dir string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// RSABits is the size of new RSA keys; 0 means 2048.
	RSABits int
	// step, when set, is called after each durable step of a change
	// ("keyfile", "state"); a test returns an error there to stop the
	// change as a crash would.
	step func(name string) error
}

// NewStore is the store of a configuration's state directory.
func NewStore(stateDir string) *Store {
	return &Store{Dir: filepath.Join(stateDir, "dkim")}
}

func (s *Store) now() time.Time {
	if s.Now != nil {
		return s.Now().UTC()
	}
	return time.Now().UTC()
}

func (s *Store) afterStep(name string) error {
	if s.step != nil {
		return s.step(name)
	}
	return nil
}

// domainDir is state_dir/dkim/DOMAIN, refusing names that are not plain
// domains (config validates them; this keeps a path out of the tree).
func (s *Store) domainDir(domain string) (string, error) {
	d := normDomain(domain)
	if !config.ValidDomainName(d) {
		return "", fmt.Errorf("signing: %q is not a domain name", domain)
	}
	return filepath.Join(s.Dir, d), nil
}

// Keys returns the domain's managed keys, oldest first; none when the
// domain has no state yet. It takes no lock: state.json is replaced whole.
func (s *Store) Keys(domain string) ([]ManagedKey, error) {
	dir, err := s.domainDir(domain)
	if err != nil {
		return nil, err
	}
	st, err := readState(dir)
	if err != nil {
		return nil, err
	}
	return st.Keys, nil
}

func readState(dir string) (*stateFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return &stateFile{Version: 1}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("signing: %s: %w", filepath.Join(dir, "state.json"), err)
	}
	return &st, nil
}

// writeState replaces state.json: temp file, fsync, rename, fsync dir.
func writeState(dir string, st *stateFile) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	path := filepath.Join(dir, "state.json")
	tmp, err := writeTemp(path, "", b)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("signing: write %s: %w", path, err)
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("signing: fsync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("signing: fsync %s: %w", dir, err)
	}
	return nil
}

// update runs fn on the domain's state under the domain's lock and writes
// the result when fn reports a change.
func (s *Store) update(domain string, fn func(dir string, st *stateFile) (bool, error)) error {
	dir, err := s.domainDir(domain)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("signing: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("signing: lock %s: %w", dir, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("signing: lock %s: %w", dir, err)
	}
	st, err := readState(dir)
	if err != nil {
		return err
	}
	st.Version, st.Domain = 1, normDomain(domain)
	changed, err := fn(dir, st)
	if err != nil || !changed {
		return err
	}
	if err := writeState(dir, st); err != nil {
		return err
	}
	return s.afterStep("state")
}

// RotateOptions are what `sluice dkim rotate` asks for.
type RotateOptions struct {
	Algorithms []string // rsa, ed25519; default both
	// Selector names the new key; with two algorithms the suffixes r and
	// e are appended. "" picks sYYYYMMDD + r/e (+ a number if taken).
	Selector string
	// Force discards keys still pending from an earlier rotate (they never
	// signed); without it a rotate with keys pending is refused.
	Force bool
}

// Rotate makes one new key per algorithm, records them pending, and returns
// them. Nothing signs with them until Check sees their records in DNS.
func (s *Store) Rotate(domain string, opts RotateOptions) ([]ManagedKey, error) {
	algos := opts.Algorithms
	if len(algos) == 0 {
		algos = config.DefaultDKIMAlgorithms()
	}
	if opts.Selector != "" && !validSelector(opts.Selector) {
		return nil, fmt.Errorf("signing: selector %q: use letters, digits and hyphens", opts.Selector)
	}
	var made []ManagedKey
	err := s.update(domain, func(dir string, st *stateFile) (bool, error) {
		var pending []string
		for _, k := range st.Keys {
			if k.State == StatePending {
				pending = append(pending, k.Selector)
			}
		}
		if len(pending) > 0 && !opts.Force {
			return false, fmt.Errorf("%s has keys pending (%s): publish their records and run `sluice dkim activate --domain %s`, or rotate with --force to replace them", normDomain(domain), strings.Join(pending, ", "), normDomain(domain))
		}
		st.Keys = slices.DeleteFunc(st.Keys, func(k ManagedKey) bool { return k.State == StatePending })
		gen := 1
		for _, k := range st.Keys {
			gen = max(gen, k.Generation+1)
		}
		now := s.now()
		selectors, err := s.newSelectors(dir, st, algos, opts.Selector, now)
		if err != nil {
			return false, err
		}
		made = nil
		for i, algo := range algos {
			key, err := GenerateKey(algo, s.RSABits)
			if err != nil {
				return false, err
			}
			if err := WriteKeyFile(filepath.Join(dir, selectors[i]+".pem"), key, false); err != nil {
				return false, err
			}
			if err := s.afterStep("keyfile"); err != nil {
				return false, err
			}
			made = append(made, ManagedKey{Selector: selectors[i], Algorithm: algo, State: StatePending, Generation: gen, Created: now})
		}
		st.Keys = append(st.Keys, made...)
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	return made, nil
}

var algoSuffix = map[string]string{config.AlgoRSA: "r", config.AlgoEd25519: "e"}

// newSelectors picks one selector per algorithm, unused in state.json and
// with no key file left by an interrupted rotate.
func (s *Store) newSelectors(dir string, st *stateFile, algos []string, base string, now time.Time) ([]string, error) {
	taken := func(sel string) bool {
		for _, k := range st.Keys {
			if strings.EqualFold(k.Selector, sel) {
				return true
			}
		}
		_, err := os.Lstat(filepath.Join(dir, sel+".pem"))
		return err == nil
	}
	name := func(algo string, n int) string {
		if base != "" && len(algos) == 1 {
			return base
		}
		b := base
		if b == "" {
			b = "s" + now.Format("20060102")
		}
		sel := b + algoSuffix[algo]
		if n > 1 {
			sel += strconv.Itoa(n)
		}
		return sel
	}
	for n := 1; n < 100; n++ {
		sels := make([]string, len(algos))
		free := true
		for i, a := range algos {
			if _, ok := algoSuffix[a]; !ok {
				return nil, fmt.Errorf("signing: unknown key algorithm %q (want rsa or ed25519)", a)
			}
			sels[i] = name(a, n)
			if taken(sels[i]) {
				free = false
			}
		}
		if free {
			return sels, nil
		}
		if base != "" {
			return nil, fmt.Errorf("signing: selector %s is already used for %s", strings.Join(sels, ", "), st.Domain)
		}
	}
	return nil, errors.New("signing: no free selector")
}

func validSelector(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return s[0] != '-'
}

// Signer reads the private key of one managed key.
func (s *Store) Signer(domain, selector string) (crypto.Signer, error) {
	dir, err := s.domainDir(domain)
	if err != nil {
		return nil, err
	}
	if !validSelector(selector) {
		return nil, fmt.Errorf("signing: bad selector %q", selector)
	}
	path := filepath.Join(dir, selector+".pem")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	k, err := ParseKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("signing: %s: %w", path, err)
	}
	return k, nil
}

// LookupTXT asks DNS for the TXT records at a name; an error matching
// dnsclient.ErrNotFound means there are none.
type LookupTXT func(ctx context.Context, name string) ([]string, error)

// KeyStatus is one key as `sluice dkim status` shows it.
type KeyStatus struct {
	Domain    string    `json:"domain"`
	Selector  string    `json:"selector"`
	Algorithm string    `json:"algorithm"`
	State     string    `json:"state"`
	DNS       string    `json:"dns"`
	Detail    string    `json:"detail,omitempty"`
	Created   time.Time `json:"created"`
	Managed   bool      `json:"managed"`
}

// CheckDNS looks up the record of key (domain, selector) and compares it
// with pub.
func CheckDNS(ctx context.Context, lookup LookupTXT, domain, selector string, pub crypto.PublicKey) (state, detail string) {
	name := RecordName(domain, selector)
	txts, err := lookup(ctx, name)
	switch {
	case errors.Is(err, dnsclient.ErrNotFound):
		return DNSMissing, name + ": no TXT record"
	case err != nil:
		return DNSError, name + ": " + err.Error()
	}
	st, why := CheckRecord(txts, pub)
	return st, name + ": " + why
}

// Check looks up the record of every key of the domain that is not retired
// and applies what it found: the pending generation becomes active when
// every key in it verifies (the active keys become retiring); retiring
// keys older than retireAfter become retired. It returns every key with its
// DNS state after the change. lookup may be nil to apply only retirement.
func (s *Store) Check(ctx context.Context, domain string, lookup LookupTXT, retireAfter time.Duration) ([]KeyStatus, error) {
	keys, err := s.Keys(domain)
	if err != nil {
		return nil, err
	}
	// DNS first, without the lock: a slow resolver must not hold up a rotate.
	type result struct{ dns, detail string }
	found := map[string]result{}
	for _, k := range keys {
		if k.State == StateRetired || lookup == nil {
			continue
		}
		signer, err := s.Signer(domain, k.Selector)
		if err != nil {
			found[k.Selector] = result{DNSError, err.Error()}
			continue
		}
		st, detail := CheckDNS(ctx, lookup, domain, k.Selector, signer.Public())
		found[k.Selector] = result{st, detail}
	}
	err = s.update(domain, func(dir string, st *stateFile) (bool, error) {
		now := s.now()
		changed := false
		gen := 0
		for _, k := range st.Keys {
			if k.State == StatePending {
				gen = max(gen, k.Generation)
			}
		}
		if gen > 0 {
			ready := true
			for _, k := range st.Keys {
				if k.State == StatePending && k.Generation == gen && found[k.Selector].dns != DNSOK {
					ready = false
				}
			}
			if ready {
				for i := range st.Keys {
					k := &st.Keys[i]
					switch {
					case k.State == StatePending && k.Generation == gen:
						k.State, k.Activated = StateActive, ptr(now)
					case k.State == StateActive:
						k.State, k.Retiring = StateRetiring, ptr(now)
					}
				}
				changed = true
			}
		}
		for i := range st.Keys {
			k := &st.Keys[i]
			if k.State == StateRetiring && k.Retiring != nil && now.Sub(*k.Retiring) >= retireAfter {
				k.State, k.Retired = StateRetired, ptr(now)
				changed = true
			}
		}
		keys = slices.Clone(st.Keys)
		return changed, nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]KeyStatus, 0, len(keys))
	for _, k := range keys {
		r := found[k.Selector]
		out = append(out, KeyStatus{Domain: normDomain(domain), Selector: k.Selector, Algorithm: k.Algorithm,
			State: k.State, DNS: r.dns, Detail: r.detail, Created: k.Created, Managed: true})
	}
	return out, nil
}

func ptr[T any](v T) *T { return &v }

// ActiveKeys returns the signing keys of the domain's active managed keys,
// RSA first (the ses profile signs with the first RSA key).
func (s *Store) ActiveKeys(domain string) ([]Key, error) {
	keys, err := s.Keys(domain)
	if err != nil {
		return nil, err
	}
	var out []Key
	for _, k := range keys {
		if k.State != StateActive {
			continue
		}
		signer, err := s.Signer(domain, k.Selector)
		if err != nil {
			return nil, err
		}
		out = append(out, Key{Domain: normDomain(domain), Selector: k.Selector, Signer: signer})
	}
	slices.SortStableFunc(out, func(a, b Key) int { return cmp.Compare(algoOrder(a.Signer), algoOrder(b.Signer)) })
	return out, nil
}

func algoOrder(k crypto.Signer) int {
	if _, ok := k.(ed25519.PrivateKey); ok {
		return 1
	}
	return 0
}

// LoadKeyring loads the static key files and the active managed keys of
// the configuration, in configuration order.
func LoadKeyring(keys []config.DKIMKey, stateDir string) (*Keyring, error) {
	static, err := LoadKeys(keys)
	if err != nil {
		return nil, err
	}
	store := NewStore(stateDir)
	used := map[string]int{}
	var all []Key
	for _, ck := range keys {
		d := normDomain(ck.Domain)
		if !ck.Managed {
			k := static.byDomain[d][used[d]]
			k.native = nil // NewKeyring below loads it again; static is closed
			all = append(all, k)
			used[d]++
			continue
		}
		active, err := store.ActiveKeys(d)
		if err != nil {
			static.Close()
			return nil, err
		}
		all = append(all, active...)
	}
	static.Close()
	return NewKeyring(all), nil
}
