package spool

import (
	"log/slog"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const benchMsg = "From: a@example.com\r\nTo: b@example.org\r\nSubject: bench\r\n\r\n"

// BenchmarkCommit measures durable commits of 2 KB messages (Begin, Write,
// Commit) from 1 and 16 concurrent sessions; commits/s is what bounds the
// relay's accept rate, dir_syncs/op shows how well group commit batches.
// With finish=1 each message is also finished at once (Finish, its file
// reused), as when deliveries keep up. cpu_µs/op is the process's CPU time
// (user and system) per commit: on a shared machine it moves less than the
// rate, and the kernel's side of an fsync is most of it.
func BenchmarkCommit(b *testing.B) {
	msg := benchMsg + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 30)
	for _, c := range []struct {
		name   string
		par    int
		finish bool
	}{{"sessions=1", 1, false}, {"sessions=16", 16, false}, {"sessions=16/finish=1", 16, true}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := Open(b.TempDir(), Options{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			if err := s.Recover(func(*Message) {}); err != nil {
				b.Fatal(err)
			}
			syncs := s.flush.n.Load()
			var n atomic.Int64
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			// RunParallel starts par×GOMAXPROCS goroutines; divide it out.
			b.SetParallelism(max(1, c.par/max(1, runtime.GOMAXPROCS(0))))
			cpu0 := cpuTime()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					d, err := s.Begin()
					if err != nil {
						b.Error(err)
						return
					}
					d.Write([]byte(msg))
					fresh, err := d.Commit(&Envelope{From: "a@example.com", To: []string{"b@example.org"}}, nil)
					if err != nil {
						b.Error(err)
						return
					}
					if c.finish {
						if err := s.Finish(d.ID, fresh); err != nil {
							b.Error(err)
							return
						}
					} else {
						fresh.Close()
					}
					n.Add(1)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(n.Load()), "cpu_µs/op")
			b.ReportMetric(float64(n.Load())/b.Elapsed().Seconds(), "commits/s")
			b.ReportMetric(float64(s.flush.n.Load()-syncs)/float64(n.Load()), "dir_syncs/op")
		})
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
