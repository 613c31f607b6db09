// Package metrics is a small Prometheus text-format registry: counters and
// gauges, with or without one label. It exists so that every package along
// the journey can count what it does without pulling in client_golang (32
// modules) for a handful of numbers; /metrics is served by cmd/sluice.
package metrics

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// Registry holds metrics in registration order.
type Registry struct {
	mu      sync.Mutex
	metrics []metric
	names   map[string]metric
}

type metric interface {
	name() string
	write(w io.Writer)
}

// Default is the process-wide registry served on /metrics.
var Default = &Registry{}

func (r *Registry) register(m metric) metric {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names == nil {
		r.names = map[string]metric{}
	}
	if old, ok := r.names[m.name()]; ok {
		return old
	}
	r.names[m.name()] = m
	r.metrics = append(r.metrics, m)
	return m
}

// WriteText writes every metric in the Prometheus text exposition format.
func (r *Registry) WriteText(w io.Writer) {
	r.mu.Lock()
	ms := append([]metric(nil), r.metrics...)
	r.mu.Unlock()
	for _, m := range ms {
		m.write(w)
	}
}

// Counter is a monotonically increasing value.
type Counter struct {
	n, help string
	v       atomic.Uint64 // float64 bits
}

// NewCounter registers (or returns the existing) counter called name.
func (r *Registry) NewCounter(name, help string) *Counter {
	return r.register(&Counter{n: name, help: help}).(*Counter)
}

func (c *Counter) name() string { return c.n }

// Inc adds one.
func (c *Counter) Inc() { c.Add(1) }

// Add adds d (which must not be negative).
func (c *Counter) Add(d float64) {
	for {
		old := c.v.Load()
		if c.v.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

// Value returns the current value.
func (c *Counter) Value() float64 { return math.Float64frombits(c.v.Load()) }

func (c *Counter) write(w io.Writer) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n%s %s\n", c.n, c.help, c.n, c.n, format(c.Value()))
}

// Gauge is a value that goes up and down, or is computed when scraped.
type Gauge struct {
	n, help string
	v       atomic.Uint64
	fn      atomic.Pointer[func() float64] // replaced while scrapes read it
}

// NewGauge registers a settable gauge.
func (r *Registry) NewGauge(name, help string) *Gauge {
	return r.register(&Gauge{n: name, help: help}).(*Gauge)
}

// NewGaugeFunc registers a gauge whose value fn computes at scrape time.
// Registering the same name again replaces fn (the newest owner wins).
func (r *Registry) NewGaugeFunc(name, help string, fn func() float64) *Gauge {
	g := r.register(&Gauge{n: name, help: help}).(*Gauge)
	g.fn.Store(&fn)
	return g
}

func (g *Gauge) name() string { return g.n }

// Set sets the value.
func (g *Gauge) Set(v float64) { g.v.Store(math.Float64bits(v)) }

// Add adds d (may be negative).
func (g *Gauge) Add(d float64) {
	for {
		old := g.v.Load()
		if g.v.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

// Value returns the current value.
func (g *Gauge) Value() float64 {
	if fn := g.fn.Load(); fn != nil {
		return (*fn)()
	}
	return math.Float64frombits(g.v.Load())
}

func (g *Gauge) write(w io.Writer) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n%s %s\n", g.n, g.help, g.n, g.n, format(g.Value()))
}

// Vec is a family of counters or gauges keyed by one label.
type Vec struct {
	n, help, label, typ string
	mu                  sync.Mutex
	vals                map[string]*float64
}

// NewCounterVec registers a counter family with one label.
func (r *Registry) NewCounterVec(name, help, label string) *Vec {
	return r.register(&Vec{n: name, help: help, label: label, typ: "counter", vals: map[string]*float64{}}).(*Vec)
}

// NewGaugeVec registers a gauge family with one label.
func (r *Registry) NewGaugeVec(name, help, label string) *Vec {
	return r.register(&Vec{n: name, help: help, label: label, typ: "gauge", vals: map[string]*float64{}}).(*Vec)
}

func (v *Vec) name() string { return v.n }

// Add adds d to the series with label value lv.
func (v *Vec) Add(lv string, d float64) {
	v.mu.Lock()
	*v.series(lv) += d
	v.mu.Unlock()
}

// series returns the series lv, created at 0; v.mu is held.
func (v *Vec) series(lv string) *float64 {
	p := v.vals[lv]
	if p == nil {
		p = new(float64)
		v.vals[lv] = p
	}
	return p
}

// Inc adds one to the series lv.
func (v *Vec) Inc(lv string) { v.Add(lv, 1) }

// Set sets the series lv (gauges).
func (v *Vec) Set(lv string, x float64) {
	v.mu.Lock()
	*v.series(lv) = x
	v.mu.Unlock()
}

// Value returns the series lv (0 when absent).
func (v *Vec) Value(lv string) float64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if p := v.vals[lv]; p != nil {
		return *p
	}
	return 0
}

func (v *Vec) write(w io.Writer) {
	v.mu.Lock()
	keys := slices.Sorted(maps.Keys(v.vals))
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", v.n, v.help, v.n, v.typ)
	for _, k := range keys {
		fmt.Fprintf(w, "%s{%s=%s} %s\n", v.n, v.label, strconv.Quote(k), format(*v.vals[k]))
	}
	v.mu.Unlock()
}

func format(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if strings.Contains(s, "e+") {
		s = strconv.FormatFloat(f, 'f', -1, 64)
	}
	return s
}
