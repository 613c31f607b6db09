package metrics

import (
	"strings"
	"sync"
	"testing"
)

func TestTextFormat(t *testing.T) {
	t.Parallel()
	r := &Registry{}
	c := r.NewCounter("x_total", "Things.")
	v := r.NewCounterVec("y_total", "By kind.", "kind")
	g := r.NewGauge("z", "Level.")
	r.NewGaugeFunc("w_seconds", "Computed.", func() float64 { return 1.5 })
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); c.Inc(); v.Inc("a\"b"); g.Add(1) }()
	}
	wg.Wait()
	v.Add("b", 2)
	g.Add(-10)
	if r.NewCounter("x_total", "again") != c {
		t.Error("registering a name twice made a second counter")
	}
	var b strings.Builder
	r.WriteText(&b)
	want := `# HELP x_total Things.
# TYPE x_total counter
x_total 100
# HELP y_total By kind.
# TYPE y_total counter
y_total{kind="a\"b"} 100
y_total{kind="b"} 2
# HELP z Level.
# TYPE z gauge
z 90
# HELP w_seconds Computed.
# TYPE w_seconds gauge
w_seconds 1.5
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	big := r.NewCounter("big_total", "")
	big.Add(1e21)
	b.Reset()
	r.WriteText(&b)
	if !strings.Contains(b.String(), "big_total 1000000000000000000000\n") {
		t.Errorf("large values must not use exponents: %s", b.String())
	}
}

// TestGaugeFuncReplacedWhileScraped: a reload registers a gauge's function
// again while /metrics reads it; under -race this was a data race on fn.
func TestGaugeFuncReplacedWhileScraped(t *testing.T) {
	t.Parallel()
	r := &Registry{}
	r.NewGaugeFunc("g", "help", func() float64 { return 1 })
	var wg sync.WaitGroup
	start := make(chan struct{})
	wg.Go(func() {
		<-start
		for i := range 5000 {
			r.NewGaugeFunc("g", "help", func() float64 { return float64(i) })
		}
	})
	wg.Go(func() {
		<-start
		for range 5000 {
			var b strings.Builder
			r.WriteText(&b)
			if !strings.Contains(b.String(), "\ng ") {
				t.Errorf("no value line:\n%s", b.String())
				return
			}
		}
	})
	close(start)
	wg.Wait()
	r.NewGaugeFunc("g", "help", func() float64 { return 7 })
	var b strings.Builder
	r.WriteText(&b)
	if !strings.Contains(b.String(), "\ng 7\n") {
		t.Errorf("the newest function does not decide the value:\n%s", b.String())
	}
}
