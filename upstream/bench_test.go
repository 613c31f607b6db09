package upstream

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

var body2K = "From: a@example.com\r\nTo: b@example.org\r\nSubject: bench\r\n\r\n" +
	strings.Repeat(strings.Repeat("x", 76)+"\r\n", 26)

func benchDeliver(b *testing.B, reuse bool) {
	s := testsmtp.Start(b, testsmtp.Options{})
	d := newDispatcher(b, Options{Upstreams: []config.Upstream{smtpUp("sink", s, 10)}})
	b.SetBytes(int64(len(body2K)))
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if r := d.Deliver(context.Background(), msg(fmt.Sprint(i), body2K)); r.Errs[0] != nil {
			b.Fatal(r.Errs[0])
		}
		if !reuse {
			d.reapAll()
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkDeliverReuse(b *testing.B)   { benchDeliver(b, true) }
func BenchmarkDeliverNoReuse(b *testing.B) { benchDeliver(b, false) }
