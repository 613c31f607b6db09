// Package control is the plumbing under the daemon's unix control sockets
// (the queue's and the suppression list's): a socket only its owner can
// reach, one JSON request and one JSON reply per connection, and a peer of
// another user refused with a reason, never a broken pipe. What a request
// means stays with the package that serves it.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ErrNoDaemon means nothing listens on the socket; callers wrap their own.
var ErrNoDaemon = errors.New("no daemon listening on the control socket")

// Failure is the reply to a request the server never handed on: Error
// names why, Code is the exit status a command line may use (1 refused
// peer, 2 bad request). A caller's reply type shares the "error" field.
type Failure struct {
	Error string `json:"error"`
	Code  int    `json:"code,omitempty"`
}

// Listen binds a socket at path with mode 0600, replacing a stale socket
// file left by a crash (but not a live daemon's). The listener does not
// remove path when closed; Serve does.
func Listen(path string) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another daemon serves %s", path)
		}
		os.Remove(path)
	}
	// Bind inside a fresh 0700 directory, tighten the mode, then rename into
	// place: the socket is never reachable with the umask's looser mode.
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".control-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	ln, err := net.Listen("unix", filepath.Join(tmp, "s"))
	if err != nil {
		return nil, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(filepath.Join(tmp, "s"), 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(filepath.Join(tmp, "s"), path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Serve answers on ln until ctx is done, then closes it and removes path.
// Each connection carries one request, decoded strictly into a Req (and
// checked by its Check method when it has one), and handle's reply goes
// back as JSON. A peer neither the daemon's user nor root is logged
// ("NAME: control socket peer refused") and sent a Failure saying
// "NAME: permission denied"; a request that does not decode or check, a
// Failure saying "NAME: bad request".
func Serve[Req any](ctx context.Context, ln net.Listener, path, name string, log *slog.Logger, handle func(context.Context, Req) any) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer os.Remove(path)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() == nil {
				log.Error(name+": control socket accept", "err", err)
			}
			return
		}
		go serveConn(ctx, c, name, log, handle)
	}
}

func serveConn[Req any](ctx context.Context, c net.Conn, name string, log *slog.Logger, handle func(context.Context, Req) any) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// The request is read first, even from a peer about to be refused: its
	// write then succeeds and the client reads the refusal, rather than a
	// broken pipe.
	var req Req
	dec := json.NewDecoder(bufio.NewReader(io.LimitReader(c, 64<<10)))
	dec.DisallowUnknownFields()
	derr := dec.Decode(&req)
	// The socket's mode admits only its owner (and root); the peer check is
	// a second lock in case the file's mode or directory are loosened.
	if uid, ok := peerUID(c); ok && uid != 0 && uid != os.Getuid() {
		log.Warn(name+": control socket peer refused", "uid", uid, "daemon_uid", os.Getuid())
		json.NewEncoder(c).Encode(Failure{Code: 1, Error: fmt.Sprintf("%s: permission denied: uid %d may not act on a daemon running as uid %d (run as that user or root)", name, uid, os.Getuid())})
		return
	}
	if ck, ok := any(req).(interface{ Check() error }); ok && derr == nil {
		derr = ck.Check()
	}
	if derr != nil {
		log.Warn(name+": control socket bad request", "err", derr.Error())
		json.NewEncoder(c).Encode(Failure{Code: 2, Error: name + ": bad request: " + derr.Error()})
		return
	}
	json.NewEncoder(c).Encode(handle(ctx, req))
}

// Call sends req to the daemon at path and decodes its reply into rep.
// When nothing listens it returns an error wrapping ErrNoDaemon.
func Call(path string, req, rep any) error {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("%w (%s)", ErrNoDaemon, path)
		}
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	// The reply is read even when the request could not be written: a
	// daemon that refuses a peer answers why, and the reason is what the
	// operator needs, not the broken pipe.
	werr := json.NewEncoder(c).Encode(req)
	if err := json.NewDecoder(c).Decode(rep); err != nil {
		if werr != nil {
			err = werr
		}
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	return nil
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
