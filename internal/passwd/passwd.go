// Package passwd makes and checks the password hashes of SMTP AUTH users:
// argon2id (t=1, m=19 MiB, p=1, the default of `sluice passwd`) and bcrypt.
// Checking costs tens of milliseconds of CPU by design, so the relay caches
// successful checks (see relay/users.go) and limits failures before hashing.
package passwd

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// Argon2id parameters of new hashes (OWASP's minimum recommendation).
const (
	argonTime    = 1
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
	bcryptCost   = 10
)

// ErrMismatch is returned by Verify for a wrong password.
var ErrMismatch = errors.New("passwd: password does not match")

// Hash returns an argon2id hash in the PHC string format
// ($argon2id$v=19$m=19456,t=1,p=1$salt$key).
func Hash(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("passwd: salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// HashBcrypt returns a bcrypt hash of cost 10.
func HashBcrypt(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), bcryptCost)
	if err != nil {
		return "", fmt.Errorf("passwd: bcrypt: %w", err)
	}
	return string(h), nil
}

// prefixes are the hash kinds Verify understands: argon2id and bcrypt
// (2y is the PHP/htpasswd spelling of 2b).
var prefixes = []string{"$argon2id$", "$2a$", "$2b$", "$2y$"}

// Supported reports whether hash is a kind Verify understands. The config
// validates users' hashes with it, so the two never disagree.
func Supported(hash string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(hash, p) && len(hash) > len(p) {
			return true
		}
	}
	return false
}

// Verify checks password against hash: nil on a match, ErrMismatch on a
// wrong password, another error for a malformed hash.
func Verify(hash, password string) error {
	if strings.HasPrefix(hash, "$argon2id$") {
		return verifyArgon2id(hash, password)
	}
	if strings.HasPrefix(hash, "$2y$") { // PHP/htpasswd spelling of 2b
		hash = "$2b$" + hash[4:]
	}
	err := bcrypt.CompareHashAndPassword([]byte(hash), []byte(password))
	if errors.Is(err, bcrypt.ErrMismatchedHashAndPassword) {
		return ErrMismatch
	}
	if err != nil {
		return fmt.Errorf("passwd: %w", err)
	}
	return nil
}

func verifyArgon2id(hash, password string) error {
	// $argon2id$v=19$m=19456,t=1,p=1$salt$key
	parts := strings.Split(hash, "$")
	if len(parts) != 6 {
		return errors.New("passwd: malformed argon2id hash")
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return errors.New("passwd: unsupported argon2id version")
	}
	var m uint32
	var t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil || m == 0 || t == 0 || p == 0 {
		return errors.New("passwd: malformed argon2id parameters")
	}
	if m > 1<<22 || t > 64 { // refuse hashes that would cost minutes or GiBs per check
		return errors.New("passwd: argon2id parameters too large")
	}
	b64 := base64.RawStdEncoding
	salt, err1 := b64.DecodeString(parts[4])
	key, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(key) == 0 || len(key) > 128 {
		return errors.New("passwd: malformed argon2id salt or key")
	}
	got := argon2.IDKey([]byte(password), salt, t, m, p, uint32(len(key)))
	if subtle.ConstantTimeCompare(got, key) != 1 {
		return ErrMismatch
	}
	return nil
}

// Cost estimates what verifying hash costs, in units of one default
// argon2id check (t=1, m=19 MiB), so hashes of different kinds compare
// without timing anything (timings at start are noise on a busy machine).
// bcrypt doubles per cost step; a cost-10 check measured 5–10 default
// argon2id checks on the project's machine (57 ms vs 11 ms in issue 8).
// argon2id grows with time × memory. 0 for a hash it cannot read.
func Cost(hash string) float64 {
	if strings.HasPrefix(hash, "$argon2id$") {
		parts := strings.Split(hash, "$")
		var m, t, p uint32
		if len(parts) < 4 {
			return 0
		}
		if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
			return 0
		}
		return float64(t) * float64(m) / float64(argonTime*argonMemory)
	}
	if strings.HasPrefix(hash, "$2y$") {
		hash = "$2b$" + hash[4:]
	}
	c, err := bcrypt.Cost([]byte(hash))
	if err != nil {
		return 0
	}
	return 5.3 * float64(uint64(1)<<c) / (1 << bcryptCost)
}
