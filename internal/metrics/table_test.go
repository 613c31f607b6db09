package metrics

import (
	"strings"
	"testing"
)

func TestGaugeTable(t *testing.T) {
	t.Parallel()
	r := &Registry{}
	r.NewGaugeTable("t_age", "Age.", []string{"domain", "selector"}, func() []Sample {
		return []Sample{{Labels: []string{"example.com", "s1"}, Value: 12.5}, {Labels: []string{"a\"b", "s2"}, Value: 1}}
	})
	var b strings.Builder
	r.WriteText(&b)
	want := "# HELP t_age Age.\n# TYPE t_age gauge\nt_age{domain=\"example.com\",selector=\"s1\"} 12.5\nt_age{domain=\"a\\\"b\",selector=\"s2\"} 1\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}
