package metrics

import (
	"strings"
	"testing"
)

func TestHistogramText(t *testing.T) {
	t.Parallel()
	r := &Registry{}
	h := r.NewHistogram("x_seconds", "X.", []float64{0.1, 1})
	h.Observe(0.05)
	h.Observe(0.1) // le is inclusive
	h.Observe(3)
	v := r.NewHistogramVec("y_seconds", "Y.", "upstream", []float64{1})
	v.Observe("b", 2)
	v.Observe("a", 0.5)
	var b strings.Builder
	r.WriteText(&b)
	want := `# HELP x_seconds X.
# TYPE x_seconds histogram
x_seconds_bucket{le="0.1"} 2
x_seconds_bucket{le="1"} 2
x_seconds_bucket{le="+Inf"} 3
x_seconds_sum 3.15
x_seconds_count 3
# HELP y_seconds Y.
# TYPE y_seconds histogram
y_seconds_bucket{upstream="a",le="1"} 1
y_seconds_bucket{upstream="a",le="+Inf"} 1
y_seconds_sum{upstream="a"} 0.5
y_seconds_count{upstream="a"} 1
y_seconds_bucket{upstream="b",le="1"} 0
y_seconds_bucket{upstream="b",le="+Inf"} 1
y_seconds_sum{upstream="b"} 2
y_seconds_count{upstream="b"} 1
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
