package main

import (
	"regexp"
	"testing"
)

// TestVersion: two lines, the second naming the RSA signer compiled in —
// OpenSSL's libcrypto with its run-time version, or Go's crypto/rsa.
func TestVersion(t *testing.T) {
	t.Parallel()
	out, stderr, code := runCmd(t, "", "version")
	want := regexp.MustCompile(`^sluice \S+ \(commit \S+, go\S+ \w+/\w+\)\ndkim rsa signer: (openssl \(OpenSSL [0-9]\S* .+\)|go \(crypto/rsa\))\n$`)
	if code != 0 || !want.MatchString(out) {
		t.Fatalf("version: exit %d, out %q, err %q", code, out, stderr)
	}
}
