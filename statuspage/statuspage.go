// Package statuspage is the page a person opens instead of reading logs
// (DESIGN §8.3): upstream health, the queue, the last hour's throughput and
// outcomes drawn as SVG on the server, the latest journal events and a
// search that shows `sluice trace` results. It is server-rendered with
// html/template (everything from a message is escaped), needs no
// JavaScript or external asset, fits a phone, and answers 401 without the
// HTTP basic auth of http.status_users. cmd/sluice mounts it on / and
// /trace of the HTTP listener when http.status is true.
package statuspage

import (
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/sluicemail/sluice/internal/passwd"
	"github.com/sluicemail/sluice/journal"
)

// Upstream is one upstream's state as the page shows it.
type Upstream struct {
	Name      string
	Breaker   string // closed | open | half-open
	Port      int
	InFlight  int
	LastError string
	LastAt    time.Time
}

// Queue is the spool's state.
type Queue struct {
	Messages int
	Oldest   time.Duration
	Held     int
}

// Journal is what the page reads from the delivery journal.
type Journal interface {
	Recent() journal.Recent
	Trace(query string, since time.Time) journal.Result
}

// Options are the page's data sources; each is called per request.
type Options struct {
	Hostname  string
	Version   string
	Users     func() map[string]string // name → password hash (http.status_users)
	Upstreams func() []Upstream
	Queue     func() Queue
	Journal   func() Journal // nil result: no journal (yet)
	Now       func() time.Time
	Logger    *slog.Logger
}

// Handler serves GET / and GET /trace?q=.
type Handler struct {
	opts Options
	// ok caches verified credentials (a hash of name and password), so a
	// page refresh does not cost an argon2 computation.
	mu sync.Mutex
	ok map[[32]byte]string // → the hash it was verified against
}

// New returns the page's handler.
func New(opts Options) *Handler {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Handler{opts: opts, ok: map[[32]byte]string{}}
}

// Register mounts the page on mux: / (exactly) and /trace.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.Handle("GET /{$}", h)
	mux.Handle("GET /trace", h)
}

func (h *Handler) authorized(r *http.Request) bool {
	name, pw, ok := r.BasicAuth()
	if !ok {
		return false
	}
	hash, known := h.opts.Users()[name]
	key := sha256.Sum256([]byte(name + "\x00" + pw))
	h.mu.Lock()
	cached, hit := h.ok[key]
	h.mu.Unlock()
	if hit && known && subtle.ConstantTimeCompare([]byte(cached), []byte(hash)) == 1 {
		return true
	}
	if !known {
		return false
	}
	if passwd.Verify(hash, pw) != nil {
		return false
	}
	h.mu.Lock()
	if len(h.ok) > 1000 {
		clear(h.ok)
	}
	h.ok[key] = hash
	h.mu.Unlock()
	return true
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.authorized(r) {
		w.Header().Set("WWW-Authenticate", `Basic realm="sluice status", charset="UTF-8"`)
		http.Error(w, "401 unauthorized", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	// Nothing on the page needs a script, a frame or another origin.
	w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	d := h.data(r)
	if err := page.Execute(w, d); err != nil {
		h.opts.Logger.Warn("status page: render", "err", err)
	}
}

// view is what the template renders.
type view struct {
	Hostname, Version string
	Now               time.Time
	Upstreams         []Upstream
	Queue             Queue
	Chart             chart
	Latest            []journal.Event
	Query             string
	Searched          bool
	Trails            []journal.Trail
	Truncated         bool
}

func (h *Handler) data(r *http.Request) view {
	v := view{Hostname: h.opts.Hostname, Version: h.opts.Version, Now: h.opts.Now()}
	if h.opts.Upstreams != nil {
		v.Upstreams = h.opts.Upstreams()
	}
	if h.opts.Queue != nil {
		v.Queue = h.opts.Queue()
	}
	var j Journal
	if h.opts.Journal != nil {
		j = h.opts.Journal()
	}
	if j != nil {
		rec := j.Recent()
		v.Chart = drawChart(rec.Minutes)
		v.Latest = rec.Latest
		if len(v.Latest) > 20 {
			v.Latest = v.Latest[:20]
		}
	} else {
		v.Chart = drawChart(nil)
	}
	if r.URL.Path == "/trace" {
		v.Query = strings.TrimSpace(r.URL.Query().Get("q"))
		if v.Query != "" && j != nil {
			v.Searched = true
			res := j.Trace(v.Query, time.Time{})
			v.Trails, v.Truncated = res.Trails, res.Truncated
			if len(v.Trails) > 100 { // a page, not a dump: the CLI has them all
				v.Trails, v.Truncated = v.Trails[len(v.Trails)-100:], true
			}
		}
	}
	return v
}

// chart is the last hour as stacked bars, one per minute.
type chart struct {
	W, H, Top, Bottom int
	Max               int
	Bars              []bar
	Accepted          string // polyline points
	Totals            map[string]int
}

type bar struct {
	X, W      int
	Segs      []seg
	Title     string
	Delivered int
}

type seg struct {
	Y, H  int
	Class string
}

var chartKinds = []string{journal.Delivered, journal.Deferred, journal.Bounced, journal.Expired}

func drawChart(mins []journal.Minute) chart {
	c := chart{W: 600, H: 160, Top: 10, Bottom: 140, Totals: map[string]int{}}
	for _, m := range mins {
		sum := 0
		for _, k := range chartKinds {
			sum += m.Counts[k]
			c.Totals[k] += m.Counts[k]
		}
		c.Totals[journal.Accepted] += m.Counts[journal.Accepted]
		c.Max = max(c.Max, sum, m.Counts[journal.Accepted])
	}
	scale := max(c.Max, 1)
	plot := c.Bottom - c.Top
	bw := c.W / 60
	var pts []string
	for i, m := range mins {
		b := bar{X: i * bw, W: bw - 1}
		y := c.Bottom
		var parts []string
		for _, k := range chartKinds {
			n := m.Counts[k]
			if n == 0 {
				continue
			}
			h := max(n*plot/scale, 1)
			y -= h
			b.Segs = append(b.Segs, seg{Y: y, H: h, Class: k})
			parts = append(parts, fmt.Sprintf("%d %s", n, k))
		}
		b.Title = m.Start.Format("15:04") + ": " + fmt.Sprintf("%d accepted", m.Counts[journal.Accepted])
		if len(parts) > 0 {
			b.Title += ", " + strings.Join(parts, ", ")
		}
		c.Bars = append(c.Bars, b)
		pts = append(pts, fmt.Sprintf("%d,%d", i*bw+bw/2, c.Bottom-m.Counts[journal.Accepted]*plot/scale))
	}
	c.Accepted = strings.Join(pts, " ")
	return c
}

//go:embed page.html
var pageHTML string

var page = template.Must(template.New("page").Funcs(template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return roundDur(now.Sub(t)) + " ago"
	},
	"dur":  roundDur,
	"hhmm": func(t time.Time) string { return t.Local().Format("15:04:05") },
	"day":  func(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05 MST") },
	"join": func(s []string) string { return strings.Join(s, ", ") },
	"who": func(e journal.Event) string {
		if e.Recipient != "" {
			return e.Recipient
		}
		return strings.Join(e.Recipients, ", ")
	},
	"reply": func(e journal.Event) string {
		var parts []string
		if e.Code != 0 {
			parts = append(parts, fmt.Sprint(e.Code))
		}
		if e.Enhanced != "" {
			parts = append(parts, e.Enhanced)
		}
		if e.Text != "" {
			parts = append(parts, e.Text)
		}
		if e.By != "" {
			parts = append(parts, "by "+e.By)
		}
		if e.DSNQueueID != "" {
			parts = append(parts, "report "+e.DSNQueueID)
		}
		return strings.Join(parts, " ")
	},
	"sender": func(s string) string {
		if s == "" {
			return "<>"
		}
		return s
	},
}).Parse(pageHTML))

func roundDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "0s"
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}
