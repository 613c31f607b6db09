package main

import (
	"os"
	"regexp"
	"runtime"
	"strconv"
	"testing"
)

// TestSetProcs: serve runs procsPerCPU Ps per default CPU, and an
// operator's GOMAXPROCS is left as the runtime applied it.
func TestSetProcs(t *testing.T) {
	for _, tc := range []struct {
		env  string
		def  int
		want int // 0: not set
	}{
		{"", 2, 4},
		{"", 1, 2},
		{"3", 3, 0},
		{"junk", 2, 4}, // the runtime ignores it too
		{"0", 2, 4},
	} {
		got := 0
		did := setProcs(tc.env, tc.def, func(n int) int { got = n; return tc.def })
		if got != tc.want || did != (tc.want != 0) {
			t.Errorf("setProcs(%q, %d) set %d and said %v; want %d", tc.env, tc.def, got, did, tc.want)
		}
	}
}

// TestServeLogsProcs runs the binary: its log tells the Ps serve runs,
// procsPerCPU per CPU by default and as given with GOMAXPROCS.
func TestServeLogsProcs(t *testing.T) {
	re := regexp.MustCompile(`msg=runtime gomaxprocs=\d+ set_by=\w+`)
	cases := []struct{ env, want string }{
		{"GOMAXPROCS=3", "msg=runtime gomaxprocs=3 set_by=environment"},
	}
	if os.Getenv("GOMAXPROCS") == "" { // this test's own default is the child's
		cases = append(cases, struct{ env, want string }{"", "msg=runtime gomaxprocs=" + strconv.Itoa(runtime.GOMAXPROCS(0)*procsPerCPU) + " set_by=sluice"})
	}
	for _, tc := range cases {
		var env []string
		if tc.env != "" {
			env = []string{tc.env}
		}
		p := startEnv(t, env, 1, "serve", "--dev", "--dev-dir", t.TempDir())
		got := re.FindString(p.stderr.String())
		p.kill()
		if got != tc.want {
			t.Errorf("env %q: log says %q, want %q", tc.env, got, tc.want)
		}
	}
}
