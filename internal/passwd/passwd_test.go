package passwd

import (
	"errors"
	"testing"
)

func TestHashVerify(t *testing.T) {
	t.Parallel()
	for name, mk := range map[string]func(string) (string, error){"argon2id": Hash, "bcrypt": HashBcrypt} {
		h, err := mk("s3cret pass")
		if err != nil {
			t.Fatal(err)
		}
		if !Supported(h) {
			t.Errorf("%s: Supported(%q) = false", name, h)
		}
		if err := Verify(h, "s3cret pass"); err != nil {
			t.Errorf("%s: right password: %v", name, err)
		}
		if err := Verify(h, "s3cret pas"); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: wrong password: got %v, want ErrMismatch", name, err)
		}
	}
}

func TestVerifyKnownHashes(t *testing.T) {
	t.Parallel()
	// Made by other tools: htpasswd -B (2y) and the argon2 CLI (PHC format).
	h, _ := HashBcrypt("pw")
	y := "$2y$" + h[4:]
	if err := Verify(y, "pw"); err != nil {
		t.Errorf("$2y$ spelling: %v", err)
	}
	for _, bad := range []string{"$argon2id$v=19$m=0,t=1,p=1$AAAA$AAAA", "$argon2id$garbage", "$2a$10$short", "$argon2id$v=19$m=99999999,t=1,p=1$AAAA$AAAA"} {
		if err := Verify(bad, "x"); err == nil || errors.Is(err, ErrMismatch) {
			t.Errorf("Verify(%q) = %v, want a malformed-hash error", bad, err)
		}
	}
}

// TestCost: the estimate orders kinds and costs as verifying them does.
func TestCost(t *testing.T) {
	argon, _ := Hash("x")
	b10 := "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
	b12 := "$2y$12$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"
	heavy := "$argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHQ$aGFzaA"
	if c := Cost(argon); c != 1 {
		t.Errorf("default argon2id: %v, want 1", c)
	}
	if !(Cost(b12) > Cost(b10) && Cost(b10) > Cost(argon) && Cost(heavy) > Cost(b10)) {
		t.Errorf("costs argon2id %v, bcrypt-10 %v, bcrypt-12 %v, argon2id m=64MiB t=3 %v: wrong order", Cost(argon), Cost(b10), Cost(b12), Cost(heavy))
	}
	if Cost("garbage") != 0 {
		t.Error("an unreadable hash has a cost")
	}
}
