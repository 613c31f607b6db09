package signing

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/dnsclient"
	"github.com/sluicemail/sluice/internal/testclock"
	"github.com/sluicemail/sluice/internal/testdns"
)

type clock = testclock.Clock

func newTestStore(t *testing.T) (*Store, *clock, *testdns.Server, LookupTXT) {
	t.Helper()
	clk := testclock.New(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC))
	s := NewStore(t.TempDir())
	s.Now = clk.Now
	s.RSABits = 1024 // fast; the size does not matter to the states
	srv := testdns.Start(t)
	c, err := dnsclient.New(srv.Addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return s, clk, srv, c.LookupTXT
}

func publish(t *testing.T, s *Store, srv *testdns.Server, domain string, keys ...ManagedKey) {
	t.Helper()
	for _, k := range keys {
		signer, err := s.Signer(domain, k.Selector)
		if err != nil {
			t.Fatal(err)
		}
		srv.SetValue(RecordName(domain, k.Selector), TXTValue(signer.Public()))
	}
}

func states(t *testing.T, s *Store, domain string) string {
	t.Helper()
	keys, err := s.Keys(domain)
	if err != nil {
		t.Fatal(err)
	}
	var b []string
	for _, k := range keys {
		b = append(b, k.Selector+"="+k.State)
	}
	return strings.Join(b, " ")
}

// signVerify signs a message with the domain's keyring and verifies it
// against the test DNS with go-msgauth; it returns the selectors that
// verified.
func signVerify(t *testing.T, s *Store, lookup LookupTXT, domain string) []string {
	t.Helper()
	keys, err := s.ActiveKeys(domain)
	if err != nil {
		t.Fatal(err)
	}
	kr := NewKeyring(keys)
	if !kr.Has(domain) {
		return nil
	}
	msg := strings.ReplaceAll(sampleMessage, "example.com", domain)
	signed := append(sign(t, kr, domain, "", msg, 0), msg...)
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(signed), &dkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		return lookup(context.Background(), name)
	}})
	if err != nil {
		t.Fatal(err)
	}
	var sels []string
	for _, v := range vs {
		if v.Err != nil {
			t.Fatalf("signature does not verify: %v", v.Err)
		}
		for _, k := range keys {
			if bytes.Contains(signed, []byte("s="+k.Selector+";")) && !containsStr(sels, k.Selector) {
				sels = append(sels, k.Selector)
			}
		}
	}
	return sels
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestManagedLifecycle(t *testing.T) {
	t.Parallel()
	s, clk, srv, lookup := newTestStore(t)
	ctx := context.Background()
	const d = "example.org"
	week := 7 * 24 * time.Hour

	// First rotate: keys go straight to pending; nothing signs yet.
	gen1, err := s.Rotate(d, RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := states(t, s, d); got != "s20261204r=pending s20261204e=pending" {
		t.Fatalf("after first rotate: %s", got)
	}
	if sels := signVerify(t, s, lookup, d); sels != nil {
		t.Fatalf("pending keys signed: %v", sels)
	}
	// Only one of the two records published: the generation waits.
	publish(t, s, srv, d, gen1[0])
	st, err := s.Check(ctx, d, lookup, week)
	if err != nil {
		t.Fatal(err)
	}
	if st[0].DNS != DNSOK || st[1].DNS != DNSMissing || states(t, s, d) != "s20261204r=pending s20261204e=pending" {
		t.Fatalf("half published: %+v / %s", st, states(t, s, d))
	}
	publish(t, s, srv, d, gen1[1])
	if _, err := s.Check(ctx, d, lookup, week); err != nil {
		t.Fatal(err)
	}
	if got := states(t, s, d); got != "s20261204r=active s20261204e=active" {
		t.Fatalf("after publishing: %s", got)
	}
	if sels := signVerify(t, s, lookup, d); strings.Join(sels, ",") != "s20261204r,s20261204e" {
		t.Fatalf("signed with %v", sels)
	}

	// A second rotate the same day gets new selectors; with keys pending a
	// third is refused.
	clk.Advance(time.Hour)
	gen2, err := s.Rotate(d, RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if gen2[0].Selector != "s20261204r2" || gen2[1].Selector != "s20261204e2" {
		t.Fatalf("second rotate selectors: %+v", gen2)
	}
	if _, err := s.Rotate(d, RotateOptions{}); err == nil || !strings.Contains(err.Error(), "pending (s20261204r2, s20261204e2)") {
		t.Fatalf("rotate with keys pending: %v", err)
	}
	// Missing record: nothing changes, the old keys sign.
	st, _ = s.Check(ctx, d, lookup, week)
	if st[2].DNS != DNSMissing || !strings.Contains(st[2].Detail, "s20261204r2._domainkey.example.org: no TXT record") {
		t.Fatalf("missing: %+v", st[2])
	}
	// Wrong key published: mismatch, still pending.
	srv.SetValue(RecordName(d, gen2[0].Selector), TXTValue(testEd25519()))
	publish(t, s, srv, d, gen2[1])
	st, _ = s.Check(ctx, d, lookup, week)
	if st[2].DNS != DNSMismatch || st[2].State != StatePending {
		t.Fatalf("wrong key: %+v", st[2])
	}
	if sels := signVerify(t, s, lookup, d); strings.Join(sels, ",") != "s20261204r,s20261204e" {
		t.Fatalf("signed with %v before activation", sels)
	}
	// Right key: the new generation is active, the old one retiring.
	publish(t, s, srv, d, gen2[0])
	if _, err := s.Check(ctx, d, lookup, week); err != nil {
		t.Fatal(err)
	}
	want := "s20261204r=retiring s20261204e=retiring s20261204r2=active s20261204e2=active"
	if got := states(t, s, d); got != want {
		t.Fatalf("after activation: %s", got)
	}
	if sels := signVerify(t, s, lookup, d); strings.Join(sels, ",") != "s20261204r2,s20261204e2" {
		t.Fatalf("signed with %v after activation", sels)
	}
	// Retiring until retire_after has passed, then retired.
	clk.Advance(week - time.Second)
	s.Check(ctx, d, lookup, week)
	if got := states(t, s, d); got != want {
		t.Fatalf("before retire_after: %s", got)
	}
	clk.Advance(time.Second)
	st, _ = s.Check(ctx, d, nil, week)
	if got := states(t, s, d); got != "s20261204r=retired s20261204e=retired s20261204r2=active s20261204e2=active" {
		t.Fatalf("after retire_after: %s", got)
	}
	if st[0].DNS != "" {
		t.Errorf("retired key was looked up: %+v", st[0])
	}
}

func TestRotateSelectorOption(t *testing.T) {
	t.Parallel()
	s, _, _, _ := newTestStore(t)
	k, err := s.Rotate("a.example", RotateOptions{Selector: "mail2027", Algorithms: []string{"ed25519"}})
	if err != nil || k[0].Selector != "mail2027" {
		t.Fatalf("%+v %v", k, err)
	}
	k, err = s.Rotate("b.example", RotateOptions{Selector: "mail2027"})
	if err != nil || k[0].Selector != "mail2027r" || k[1].Selector != "mail2027e" {
		t.Fatalf("%+v %v", k, err)
	}
	if _, err := s.Rotate("a.example", RotateOptions{Selector: "mail2027", Algorithms: []string{"ed25519"}, Force: true}); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reused selector: %v", err)
	}
	if _, err := s.Rotate("a.example", RotateOptions{Selector: "../x"}); err == nil {
		t.Fatal("a selector with a path was accepted")
	}
	if _, err := s.Rotate("../etc", RotateOptions{}); err == nil {
		t.Fatal("a domain with a path was accepted")
	}
	// --force drops the keys still pending (they never signed).
	k, err = s.Rotate("b.example", RotateOptions{Force: true, Algorithms: []string{"rsa"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := states(t, s, "b.example"); got != k[0].Selector+"=pending" {
		t.Fatalf("after --force: %s", got)
	}
}

// TestCrashAtEveryStep stops a rotation and an activation after each
// durable step, as kill -9 would, and checks what a fresh start finds:
// state.json parses, every key it names has its file, and no key is active
// whose record was not verified.
func TestCrashAtEveryStep(t *testing.T) {
	t.Parallel()
	errCrash := errors.New("crash")
	for stop := 1; stop <= 4; stop++ {
		s, _, srv, lookup := newTestStore(t)
		const d = "crash.example"
		gen1, err := s.Rotate(d, RotateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		publish(t, s, srv, d, gen1...)
		s.Check(context.Background(), d, lookup, time.Hour)
		steps := 0
		s.step = func(string) error {
			if steps++; steps == stop {
				return errCrash
			}
			return nil
		}
		_, err = s.Rotate(d, RotateOptions{}) // steps: keyfile, keyfile, state
		if err != nil && !errors.Is(err, errCrash) {
			t.Fatal(err)
		}
		fresh := &Store{Dir: s.Dir, Now: s.Now}
		keys, err := fresh.Keys(d)
		if err != nil {
			t.Fatalf("stop %d: %v", stop, err)
		}
		active := 0
		for _, k := range keys {
			if _, err := fresh.Signer(d, k.Selector); err != nil {
				t.Errorf("stop %d: key %s in state.json without its file: %v", stop, k.Selector, err)
			}
			if k.State == StateActive {
				active++
				if k.Generation != 1 {
					t.Errorf("stop %d: unverified key %s is active", stop, k.Selector)
				}
			}
		}
		if active != 2 {
			t.Errorf("stop %d: %d active keys, want the 2 verified ones", stop, active)
		}
		// A later rotate still works (leftover key files are skipped).
		s.step = nil
		if _, err := fresh.Rotate(d, RotateOptions{Force: true}); err != nil {
			t.Errorf("stop %d: rotate after crash: %v", stop, err)
		}
	}
}

func TestLoadKeyring(t *testing.T) {
	t.Parallel()
	s, _, srv, lookup := newTestStore(t)
	stateDir := filepath.Dir(s.Dir)
	ks, err := s.Rotate("managed.example", RotateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	static := filepath.Join(t.TempDir(), "static.pem")
	if err := WriteKeyFile(static, testEd25519(), false); err != nil {
		t.Fatal(err)
	}
	cfg := []config.DKIMKey{
		{Domain: "managed.example", Managed: true, Algorithms: []string{"rsa", "ed25519"}},
		{Domain: "static.example", Selector: "s1", KeyFile: static},
	}
	kr, err := LoadKeyring(cfg, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if kr.Has("managed.example") || !kr.Has("static.example") {
		t.Fatal("pending managed keys sign, or the static key does not")
	}
	publish(t, s, srv, "managed.example", ks...)
	s.Check(context.Background(), "managed.example", lookup, time.Hour)
	kr, err = LoadKeyring(cfg, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if got := kr.Keys("managed.example"); len(got) != 2 || got[0].Selector != ks[0].Selector {
		t.Fatalf("active managed keys: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(s.Dir, "managed.example", "state.json")); err != nil {
		t.Fatal(err)
	}
}
