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
