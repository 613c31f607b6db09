package policy

import (
	"context"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
)

// BenchmarkManyUsers charges 100,000 distinct users one message each and
// reports the heap held per user while their buckets are drained, and after
// they refilled and were swept (docs/scaling.md states the bound).
func BenchmarkManyUsers(b *testing.B) {
	const users = 100_000
	names := make([]string, users)
	for i := range names {
		names[i] = "user-" + strconv.Itoa(i) + "@example.com"
	}
	ctx := context.Background()
	var perUser, afterSweep float64
	for b.Loop() {
		c := newClock()
		e, err := New(rateConfig(mustRate(100, time.Minute, 20), config.Rate{}), Options{Now: c.Now, MaxKeys: 200_000})
		if err != nil {
			b.Fatal(err)
		}
		p := e.Lookup("default")
		before := heap()
		for _, u := range names {
			if _, d := e.ReserveMessage(ctx, p, u); d != nil {
				b.Fatal(d)
			}
		}
		held := heap()
		if n := e.buckets.len(); n != users {
			b.Fatalf("%d buckets, want %d", n, users)
		}
		c.Advance(time.Minute)
		e.buckets.sweep(c.Now())
		swept := heap()
		perUser = float64(held-before) / users
		afterSweep = float64(swept-before) / users
		runtime.KeepAlive(e)
	}
	b.ReportMetric(perUser, "B/user")
	b.ReportMetric(afterSweep, "B/user-swept")
}

func heap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// BenchmarkReserve is the cost of one MAIL's rate check in memory.
func BenchmarkReserve(b *testing.B) {
	c := newClock()
	e, err := New(rateConfig(mustRate(1_000_000_000, time.Second, 0), config.Rate{}), Options{Now: c.Now})
	if err != nil {
		b.Fatal(err)
	}
	p := e.Lookup("default")
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, d := e.ReserveMessage(ctx, p, "user"+strconv.Itoa(i%1000)); d != nil {
				b.Fatal(d)
			}
			i++
		}
	})
}
