package main

import (
	"strings"
	"testing"
)

func TestCheckAddress(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"a@example.com":             "a@example.com",
		"<a@example.com>":           "a@example.com",
		`"a b"@example.com`:         `"a b"@example.com`,
		`"a\"b"@example.com`:        `"a\"b"@example.com`,
		"root":                      "root",
		"a@[192.0.2.1]":             "a@[192.0.2.1]",
		"üser@bücher.example":       "üser@bücher.example",
		"a@x> BODY=7BIT":            "",
		"ok@x> ORCPT=rfc822;s@else": "",
		"a b@example.com":           "",
		"a@example.com ":            "",
		"a@example.com\r\nQUIT":     "",
		"<a@example.com":            "",
		"a@":                        "",
		"":                          "",
		"<>":                        "",
		`"a>b"@x`:                   "",
		`"unterminated@x`:           "",
		`"a"b@x`:                    "",
		"a..b@x":                    "",
		"a@x..y":                    "",
		"a@[1.2.3.4] x":             "",
		"a@b@c":                     "",
	} {
		got, err := checkAddress(in)
		if want == "" && err == nil {
			t.Errorf("checkAddress(%q) = %q, want an error", in, got)
		}
		if want != "" && (err != nil || got != want) {
			t.Errorf("checkAddress(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestStripComments(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"(comment) b4@dest.test":      "  b4@dest.test",
		"a@x (c (nested) \\) x), b@y": "a@x  , b@y",
		`"(not a comment)"@x`:         `"(not a comment)"@x`,
		`"q\"(x" (c) <a@b>`:           `"q\"(x"   <a@b>`,
		"Name (c) <a@b>":              "Name   <a@b>",
		"unbalanced (comment a@x":     "unbalanced  ",
		"no comment <a@b>, c@d":       "no comment <a@b>, c@d",
	} {
		if got := stripComments(in); got != want {
			t.Errorf("stripComments(%q) = %q, want %q", in, got, want)
		}
	}
}

// outsideQuotes is s without its quoted strings.
func outsideQuotes(s string) string {
	var b strings.Builder
	quoted := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case !quoted:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// FuzzCheckAddress: what passes can be put between angle brackets as it is:
// no bracket, no control character, no space outside quotes, and it passes
// again unchanged.
func FuzzCheckAddress(f *testing.F) {
	for _, s := range []string{"a@b", "<a@b>", `"a b"@c`, "a@b> BODY=7BIT", `"a\"@b`, "a@[1.2.3.4]", "x\r\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := checkAddress(s)
		if err != nil {
			return
		}
		if strings.ContainsAny(got, "<>") || strings.ContainsFunc(got, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			t.Fatalf("checkAddress(%q) = %q: a bracket or control character", s, got)
		}
		if strings.ContainsAny(outsideQuotes(got), " \t") {
			t.Fatalf("checkAddress(%q) = %q: space outside quotes", s, got)
		}
		if again, err := checkAddress(got); err != nil || again != got {
			t.Fatalf("checkAddress(%q) = %q, then %q, %v", s, got, again, err)
		}
	})
}

// FuzzStripComments: the result is never longer, keeps no comment opener
// outside quotes, and stripping again changes nothing.
func FuzzStripComments(f *testing.F) {
	for _, s := range []string{"(c) a@b", `"(x)" a`, "a (b (c) \\) d) e", `"\"(" (`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := stripComments(s)
		if len(got) > len(s) {
			t.Fatalf("stripComments(%q) = %q grew", s, got)
		}
		if again := stripComments(got); again != got {
			t.Fatalf("stripComments(%q) = %q, then %q", s, got, again)
		}
	})
}
