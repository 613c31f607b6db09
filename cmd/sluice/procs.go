package main

import (
	"os"
	"runtime"
	"strconv"
)

// procsPerCPU is how many Ps (goroutines running Go code at once) serve
// runs per CPU the runtime would use by default.
//
// Why more Ps than CPUs: every accepted message waits in fdatasync, and a
// goroutine in a system call keeps its P until the runtime's monitor
// (sysmon) notices, at least 20 µs and usually a few sysmon ticks later.
// With one P per CPU, a P was often parked in an fdatasync while sessions
// that had work waited for it and the CPU sat idle. At the §5 load on 2
// CPUs, 2 Ps per CPU delivered 12% more Ed25519 and 27% more RSA messages
// (alternated runs) with a fifth fewer context switches per message; 1.5,
// 3 and 4 per CPU did no better (docs/performance.md).
const procsPerCPU = 2

// serveProcs sets GOMAXPROCS for serve and returns what the runtime runs
// and who chose it. An operator's GOMAXPROCS environment variable wins, as
// everywhere in Go ("environment"). Otherwise it is procsPerCPU times the
// runtime's default, which already follows a container's CPU limit
// ("sluice"); setting it stops the runtime from following later changes of
// that limit, so a resized container wants a restart.
func serveProcs() (procs int, setBy string) {
	setBy = "environment"
	if setProcs(os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0), runtime.GOMAXPROCS) {
		setBy = "sluice"
	}
	return runtime.GOMAXPROCS(0), setBy
}

// setProcs calls set with procsPerCPU times def, the runtime's default,
// unless env is a GOMAXPROCS the runtime took, and says whether it did.
func setProcs(env string, def int, set func(int) int) bool {
	if n, err := strconv.Atoi(env); err == nil && n > 0 {
		return false
	}
	set(def * procsPerCPU)
	return true
}
