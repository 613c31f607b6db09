package queue

import (
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
)

// BenchmarkCommit measures durable commits of 2 KB messages (Begin, Write,
// Commit) from 1 and 16 concurrent sessions; commits/s is what bounds the
// relay's accept rate, dir_syncs/op shows how well group commit batches.
func BenchmarkCommit(b *testing.B) {
	msg := testMsg + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 30)
	for _, par := range []int{1, 16} {
		b.Run(map[int]string{1: "sessions=1", 16: "sessions=16"}[par], func(b *testing.B) {
			opts, _ := testOptions(b, b.TempDir(), &fakeUpstream{})
			q, err := Open(opts)
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			syncs := mDirSyncs.Value()
			var n atomic.Int64
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			// RunParallel starts par×GOMAXPROCS goroutines; divide it out.
			b.SetParallelism(max(1, par/max(1, runtimeProcs())))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					d, err := q.Begin()
					if err != nil {
						b.Error(err)
						return
					}
					d.Write([]byte(msg))
					if err := d.Commit(&Envelope{From: "a@example.com", To: []string{"b@example.org"}}, nil); err != nil {
						b.Error(err)
						return
					}
					n.Add(1)
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(n.Load())/b.Elapsed().Seconds(), "commits/s")
			b.ReportMetric((mDirSyncs.Value()-syncs)/float64(n.Load()), "dir_syncs/op")
		})
	}
}

func runtimeProcs() int { return runtime.GOMAXPROCS(0) }
