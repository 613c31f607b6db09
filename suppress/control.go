package suppress

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
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
var ErrNoDaemon = errors.New("suppress: no daemon listening on the control socket")

// Control sends req to the daemon's socket.
func Control(socket string, req Request) (Reply, error) {
	c, err := net.DialTimeout("unix", socket, 2*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return Reply{}, fmt.Errorf("%w (%s)", ErrNoDaemon, socket)
		}
		return Reply{}, fmt.Errorf("suppress: control socket %s: %w", socket, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Reply{}, fmt.Errorf("suppress: control socket %s: %w", socket, err)
	}
	var rep Reply
	if err := json.NewDecoder(c).Decode(&rep); err != nil {
		return Reply{}, fmt.Errorf("suppress: control socket %s: %w", socket, err)
	}
	return rep, nil
}

// Serve answers commands on a unix socket at path (mode 0600, owner only)
// until ctx is done. It is separate from the queue's control socket so each
// protocol stays small.
func Serve(ctx context.Context, path string, l *List) (func(), error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("suppress: another daemon serves %s", path)
		}
		os.Remove(path)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".suppression-")
	if err != nil {
		return nil, fmt.Errorf("suppress: control socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	ln, err := net.Listen("unix", filepath.Join(tmp, "s"))
	if err != nil {
		return nil, fmt.Errorf("suppress: control socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(filepath.Join(tmp, "s"), 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("suppress: control socket: %w", err)
	}
	if err := os.Rename(filepath.Join(tmp, "s"), path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("suppress: control socket: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(ctx, c, l)
		}
	}()
	stop := func() {
		ln.Close()
		<-done
		os.Remove(path)
	}
	return stop, nil
}

func handle(ctx context.Context, c net.Conn, l *List) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if uid, ok := peerUID(c); ok && uid != 0 && uid != os.Getuid() {
		json.NewEncoder(c).Encode(Reply{Code: 1, Error: "suppress: permission denied"})
		return
	}
	var req Request
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&req); err != nil {
		json.NewEncoder(c).Encode(Reply{Code: 2, Error: "suppress: bad request"})
		return
	}
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	json.NewEncoder(c).Encode(Exec(rctx, l, req))
}

func peerUID(c net.Conn) (int, bool) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *syscall.Ucred
	var cerr error
	raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cerr != nil || cred == nil {
		return 0, false
	}
	return int(cred.Uid), true
}
