package metrics

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
)

// Buckets for durations in seconds.
var (
	// LatencyBuckets: an accept or a delivery, 1 ms to 1 min.
	LatencyBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
	// QueueTimeBuckets: accepted to final outcome, 10 ms to 5 days (max_age).
	QueueTimeBuckets = []float64{0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600}
)

// Histogram counts observations in cumulative buckets (Prometheus'
// histogram type: _bucket{le=…}, _sum, _count).
type Histogram struct {
	n, help string
	h       *hist
}

type hist struct {
	upper  []float64
	counts []atomic.Uint64 // per bucket (not cumulative), plus +Inf
	sum    atomic.Uint64   // float64 bits
	count  atomic.Uint64
}

func newHist(buckets []float64) *hist {
	b := append([]float64(nil), buckets...)
	sort.Float64s(b)
	return &hist{upper: b, counts: make([]atomic.Uint64, len(b)+1)}
}

func (h *hist) observe(v float64) {
	i := sort.SearchFloat64s(h.upper, v) // first bucket with upper >= v
	h.counts[i].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			break
		}
	}
	h.count.Add(1)
}

// write prints the series; labels is "" or `name="value",`.
func (h *hist) write(w io.Writer, name, labels string) {
	var cum uint64
	for i, u := range h.upper {
		cum += h.counts[i].Load()
		fmt.Fprintf(w, "%s_bucket{%sle=%q} %d\n", name, labels, format(u), cum)
	}
	cum += h.counts[len(h.upper)].Load()
	fmt.Fprintf(w, "%s_bucket{%sle=\"+Inf\"} %d\n", name, labels, cum)
	l := ""
	if labels != "" {
		l = "{" + labels[:len(labels)-1] + "}"
	}
	fmt.Fprintf(w, "%s_sum%s %s\n%s_count%s %d\n", name, l, format(math.Float64frombits(h.sum.Load())), name, l, cum)
}

// NewHistogram registers a histogram with the given bucket upper bounds.
func (r *Registry) NewHistogram(name, help string, buckets []float64) *Histogram {
	return r.register(&Histogram{n: name, help: help, h: newHist(buckets)}).(*Histogram)
}

func (h *Histogram) name() string { return h.n }

// Observe records one value.
func (h *Histogram) Observe(v float64) { h.h.observe(v) }

// Count returns the number of observations.
func (h *Histogram) Count() uint64 { return h.h.count.Load() }

func (h *Histogram) write(w io.Writer) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", h.n, h.help, h.n)
	h.h.write(w, h.n, "")
}

// HistogramVec is a family of histograms keyed by one label.
type HistogramVec struct {
	n, help, label string
	buckets        []float64
	mu             sync.Mutex
	vals           map[string]*hist
}

// NewHistogramVec registers a histogram family with one label.
func (r *Registry) NewHistogramVec(name, help, label string, buckets []float64) *HistogramVec {
	return r.register(&HistogramVec{n: name, help: help, label: label, buckets: buckets, vals: map[string]*hist{}}).(*HistogramVec)
}

func (v *HistogramVec) name() string { return v.n }

// Observe records one value in the series lv.
func (v *HistogramVec) Observe(lv string, x float64) {
	v.mu.Lock()
	h := v.vals[lv]
	if h == nil {
		h = newHist(v.buckets)
		v.vals[lv] = h
	}
	v.mu.Unlock()
	h.observe(x)
}

// Count returns the observations of series lv.
func (v *HistogramVec) Count(lv string) uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if h := v.vals[lv]; h != nil {
		return h.count.Load()
	}
	return 0
}

func (v *HistogramVec) write(w io.Writer) {
	v.mu.Lock()
	keys := slices.Sorted(maps.Keys(v.vals))
	hs := make([]*hist, len(keys))
	for i, k := range keys {
		hs[i] = v.vals[k]
	}
	v.mu.Unlock()
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s histogram\n", v.n, v.help, v.n)
	for i, k := range keys {
		hs[i].write(w, v.n, v.label+"="+strconv.Quote(k)+",")
	}
}
