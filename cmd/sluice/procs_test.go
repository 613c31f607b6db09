package main

import (
	"regexp"
	"strconv"
	"testing"
)

// TestSetProcs: serve runs procsPerCPU Ps per default CPU, and an
// operator's GOMAXPROCS is left as the runtime applied it.
func TestSetProcs(t *testing.T) {
	for _, tc := range []struct {
		env       string
		def, want int
		set       bool
	}{
		{"", 2, 4, true},
		{"", 1, 2, true},
		{"3", 3, 3, false},
		{"junk", 2, 4, true}, // the runtime ignores it too
		{"0", 2, 4, true},
	} {
		got := 0
		n := setProcs(tc.env, tc.def, func(n int) int { got = n; return tc.def })
		if n != tc.want || (got != 0) != tc.set || (tc.set && got != tc.want) {
			t.Errorf("setProcs(%q, %d) = %d, set %d; want %d (set %v)", tc.env, tc.def, n, got, tc.want, tc.set)
		}
	}
}

// TestServeLogsProcs runs the binary: its log tells the Ps serve runs,
// procsPerCPU per CPU by default and as given with GOMAXPROCS.
func TestServeLogsProcs(t *testing.T) {
	re := regexp.MustCompile(`msg=runtime gomaxprocs=(\d+) cpus=(\d+)`)
	for _, tc := range []struct {
		env  []string
		want func(cpus int) int
	}{
		{nil, func(cpus int) int { return cpus * procsPerCPU }},
		{[]string{"GOMAXPROCS=3"}, func(int) int { return 3 }},
	} {
		p := startEnv(t, tc.env, 1, "serve", "--dev", "--dev-dir", t.TempDir())
		m := re.FindStringSubmatch(p.stderr.String())
		p.kill()
		if m == nil {
			t.Fatalf("env %v: no runtime line in the log:\n%s", tc.env, p.stderr.String())
		}
		n, _ := strconv.Atoi(m[1])
		cpus, _ := strconv.Atoi(m[2])
		if n != tc.want(cpus) {
			t.Errorf("env %v: %s, want gomaxprocs=%d", tc.env, m[0], tc.want(cpus))
		}
	}
}
