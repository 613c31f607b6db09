package metrics

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
)

// Sample is one series of a Table: its label values, in the table's label
// order, and its value.
type Sample struct {
	Labels []string
	Value  float64
}

// Table is a gauge family with several labels whose series are computed at
// scrape time, so series of things that went away (a retired key) vanish
// with them.
type Table struct {
	n, help string
	labels  []string
	fn      atomic.Pointer[func() []Sample]
}

// NewGaugeTable registers a gauge family computed by fn at each scrape.
// Registering the same name again replaces fn (the newest owner wins).
func (r *Registry) NewGaugeTable(name, help string, labels []string, fn func() []Sample) *Table {
	t := r.register(&Table{n: name, help: help, labels: labels}).(*Table)
	t.fn.Store(&fn)
	return t
}

func (t *Table) name() string { return t.n }

func (t *Table) write(w io.Writer) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n", t.n, t.help, t.n)
	fn := t.fn.Load()
	if fn == nil {
		return
	}
	for _, s := range (*fn)() {
		pairs := make([]string, len(t.labels))
		for i, l := range t.labels {
			v := ""
			if i < len(s.Labels) {
				v = s.Labels[i]
			}
			pairs[i] = l + "=" + strconv.Quote(v)
		}
		fmt.Fprintf(w, "%s{%s} %s\n", t.n, strings.Join(pairs, ","), format(s.Value))
	}
}
