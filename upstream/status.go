package upstream

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"
)

// Status is one upstream's state, for `sluice upstreams` and /readyz.
type Status struct {
	Name        string    `json:"name"`
	Host        string    `json:"host"`    // the maildir path for type maildir
	Breaker     string    `json:"breaker"` // closed | open | half-open
	OpenUntil   time.Time `json:"open_until,omitzero"`
	Port        int       `json:"port,omitempty"` // remembered port, 0: none yet
	InFlight    int       `json:"in_flight"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Status returns every upstream's state in config order. A breaker whose
// open period has passed shows as half-open: the next message probes it.
func (d *Dispatcher) Status() []Status {
	now := d.now()
	out := make([]Status, 0, len(d.ups))
	for _, u := range d.ups {
		u.mu.Lock()
		st := Status{Name: u.cfg.Name, Host: u.cfg.Host, Breaker: u.breaker.shown(now).String(), Port: u.port,
			LastError: u.lastErr, LastErrorAt: u.lastErrAt}
		if u.breaker.state == open {
			st.OpenUntil = u.breaker.openUntil
		}
		u.mu.Unlock()
		st.InFlight = u.pool.busy()
		if u.maildir {
			st.Host = u.cfg.Path
		}
		if u.api != nil {
			st.Host = "api:" + u.cfg.API
		}
		out = append(out, st)
	}
	return out
}

// writeStatus replaces StatusFile atomically (temp file and rename), while
// d is the live dispatcher: one replaced by a reload leaves the file to
// its successor.
func (d *Dispatcher) writeStatus() {
	if d.opts.StatusFile == "" || !d.live.Load() {
		return
	}
	b, err := json.MarshalIndent(d.Status(), "", "  ")
	if err != nil {
		return
	}
	dir := filepath.Dir(d.opts.StatusFile)
	f, err := os.CreateTemp(dir, ".upstreams-*")
	if err != nil {
		d.log.Warn("upstream status file", "error", err)
		return
	}
	_, werr := f.Write(append(b, '\n'))
	cerr := f.Close()
	if werr != nil || cerr != nil {
		os.Remove(f.Name())
		d.log.Warn("upstream status file", "error", fmt.Errorf("write %s: %v %v", f.Name(), werr, cerr))
		return
	}
	if err := os.Rename(f.Name(), d.opts.StatusFile); err != nil {
		os.Remove(f.Name())
		d.log.Warn("upstream status file", "error", err)
	}
}

// ReadStatus reads a status file written by a running dispatcher.
func ReadStatus(path string) ([]Status, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("upstream: status: %w", err)
	}
	var st []Status
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("upstream: status %s: %w", path, err)
	}
	return st, nil
}

// FormatStatus prints st as a table, one upstream per line.
func FormatStatus(st []Status) string {
	var b strings.Builder
	w := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "NAME\tHOST\tPORT\tBREAKER\tIN-FLIGHT\tLAST ERROR")
	for _, s := range st {
		port := "-"
		if s.Port != 0 {
			port = fmt.Sprint(s.Port)
		}
		br := s.Breaker
		if s.Breaker == "open" && !s.OpenUntil.IsZero() {
			br += " until " + s.OpenUntil.UTC().Format(time.RFC3339)
		}
		last := "-"
		if s.LastError != "" {
			last = s.LastError
			if !s.LastErrorAt.IsZero() {
				last = s.LastErrorAt.UTC().Format(time.RFC3339) + " " + last
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\n", s.Name, s.Host, port, br, s.InFlight, last)
	}
	w.Flush()
	return b.String()
}
