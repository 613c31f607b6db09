package policy

import (
	"strings"
	"testing"
)

// FuzzPattern asserts that a compiled pattern prints to text that compiles
// to the same pattern with the same verdicts, and that an exact address
// pattern matches that address in any case.
func FuzzPattern(f *testing.F) {
	for _, s := range []string{"scanner@example.com", "*@example.com", "postmaster@*", "*", "<>",
		"{user}@example.com", "{user}", "*@{user}.example.com", "a*b@c", "@", "x@", "{x}@y"} {
		f.Add(s, "alice", "scanner@example.com")
	}
	f.Fuzz(func(t *testing.T, text, user, addr string) {
		p, err := compilePattern(text)
		if err != nil {
			return
		}
		q, err := compilePattern(p.String())
		if err != nil {
			t.Fatalf("%q compiles, its form %q does not: %v", text, p.String(), err)
		}
		if q != p {
			t.Fatalf("%q → %+v, reprinted %q → %+v", text, p, p.String(), q)
		}
		if p.match(user, addr) != q.match(user, addr) {
			t.Fatalf("%q and %q disagree on %q", text, p.String(), addr)
		}
		if !p.null && !p.hasUser && !strings.Contains(p.raw, "*") {
			exact := strings.TrimSpace(text)
			if !p.match(user, exact) || !p.match(user, strings.ToUpper(exact)) {
				t.Fatalf("exact pattern %q does not match %q in every case", text, exact)
			}
		}
	})
}
