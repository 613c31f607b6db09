package suppress

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sluicemail/sluice/internal/control"
)

// Request is one `sluice suppression` command.
type Request struct {
	Cmd    string `json:"cmd"` // list | add | remove | check
	Addr   string `json:"addr,omitempty"`
	Reason string `json:"reason,omitempty"`
	JSON   bool   `json:"json,omitempty"`
}

// Reply is its outcome: the text to print and the exit code (check: 0
// suppressed, 1 not).
type Reply struct {
	Out   string `json:"out"`
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}

// Exec runs one command against l; the daemon runs it for the control
// socket and the command line runs it itself when no daemon listens.
func Exec(ctx context.Context, l *List, req Request) Reply {
	switch req.Cmd {
	case "list":
		all, err := l.All(ctx)
		if err != nil {
			return Reply{Code: 1, Error: err.Error()}
		}
		var b strings.Builder
		if req.JSON {
			enc := json.NewEncoder(&b)
			for _, e := range all {
				enc.Encode(e)
			}
			return Reply{Out: b.String()}
		}
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ADDRESS\tKIND\tADDED\tEXPIRES\tSOURCE\tREASON")
		for _, e := range all {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Address, e.Kind, e.Added.Format(time.RFC3339),
				e.Expires.Format(time.RFC3339), e.Source, oneLine(e.Reason, 80))
		}
		tw.Flush()
		fmt.Fprintf(&b, "%d address(es)\n", len(all))
		return Reply{Out: b.String()}
	case "add":
		e, err := l.Add(ctx, Entry{Address: req.Addr, Kind: KindManual, Reason: req.Reason, Source: "cli"})
		if err != nil {
			return Reply{Code: 1, Error: err.Error()}
		}
		return Reply{Out: fmt.Sprintf("%s: added, until %s\n", e.Address, e.Expires.Format(time.RFC3339))}
	case "remove":
		ok, err := l.Remove(ctx, req.Addr)
		if err != nil {
			return Reply{Code: 1, Error: err.Error()}
		}
		if !ok {
			return Reply{Code: 1, Error: fmt.Sprintf("%s: not on the suppression list", Normalize(req.Addr))}
		}
		return Reply{Out: Normalize(req.Addr) + ": removed\n"}
	case "check":
		e, ok := l.Check(ctx, req.Addr)
		if !ok {
			return Reply{Code: 1, Out: Normalize(req.Addr) + ": not suppressed\n"}
		}
		if req.JSON {
			b, _ := json.Marshal(e)
			return Reply{Out: string(b) + "\n"}
		}
		return Reply{Out: fmt.Sprintf("%s: %s (%s), until %s\n", e.Address, e.Describe(), oneLine(e.Reason, 120), e.Expires.Format(time.RFC3339))}
	}
	return Reply{Code: 2, Error: fmt.Sprintf("suppress: unknown command %q", req.Cmd)}
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		s = s[:max-3] + "..."
	}
	return s
}

// ErrNoDaemon means nothing listens on the control socket.
var ErrNoDaemon = control.ErrNoDaemon

// Control sends req to the daemon's socket.
func Control(socket string, req Request) (Reply, error) {
	var rep Reply
	if err := control.Call(socket, req, &rep); err != nil {
		return Reply{}, fmt.Errorf("suppress: %w", err)
	}
	return rep, nil
}

// Serve answers commands on a unix socket at path (mode 0600, owner only)
// until stopped. It is separate from the queue's control socket so each
// protocol stays small.
func Serve(ctx context.Context, path string, l *List) (func(), error) {
	ln, err := control.Listen(path)
	if err != nil {
		return nil, fmt.Errorf("suppress: control socket %s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		control.Serve(ctx, ln, path, "suppress", l.log, func(ctx context.Context, req Request) any {
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			return Exec(rctx, l, req)
		})
	}()
	stop := func() {
		cancel()
		<-done
	}
	return stop, nil
}
