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
// CPUs, 2 Ps per CPU delivered 12–13% more (Ed25519 and RSA, alternated
// runs) with 18% fewer context switches per message; 1.5, 3 and 4 per CPU
// did no better (docs/performance.md).
const procsPerCPU = 2

// serveProcs sets GOMAXPROCS for serve and returns what the runtime runs. An operator's
// GOMAXPROCS environment variable wins, as everywhere in Go. Otherwise it
// is procsPerCPU times the runtime's default, which already follows a
// container's CPU limit; setting it stops the runtime from following later
// changes of that limit, so a resized container wants a restart.
func serveProcs() int {
	setProcs(os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0), runtime.GOMAXPROCS)
	return runtime.GOMAXPROCS(0)
}

func setProcs(env string, def int, set func(int) int) int {
	if n, err := strconv.Atoi(env); err == nil && n > 0 {
		return def // the runtime already applied it
	}
	set(def * procsPerCPU)
	return def * procsPerCPU
}
