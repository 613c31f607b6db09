package control

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

type req struct {
	Say string `json:"say"`
}

func (r req) Check() error {
	if r.Say == "" {
		return errors.New("nothing to say")
	}
	return nil
}

type rep struct {
	Out   string `json:"out"`
	Error string `json:"error,omitempty"`
	Code  int    `json:"code,omitempty"`
}

// serve runs a server at path until the test ends or stop is called.
func serve(t *testing.T, path string) (stop func()) {
	t.Helper()
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Serve(ctx, ln, path, "test", slog.New(slog.DiscardHandler), func(_ context.Context, r req) any {
			return rep{Out: "heard " + r.Say}
		})
	}()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

// TestControlSocket: the socket is 0600, a request gets its handler's reply,
// a request that fails its Check or does not decode strictly is a bad
// request (code 2), a second daemon is refused, and after the server stops
// the socket is gone and a call says no daemon listens.
func TestControlSocket(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "c.sock")
	os.WriteFile(path, nil, 0o644) // a stale file from a crash is replaced
	serve(t, path)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket: %v %v, want a socket of mode 0600", fi, err)
	}
	var r rep
	if err := Call(path, req{Say: "hi"}, &r); err != nil || r != (rep{Out: "heard hi"}) {
		t.Errorf("Call = %+v %v, want heard hi", r, err)
	}
	r = rep{}
	if err := Call(path, req{}, &r); err != nil || r != (rep{Error: "test: bad request: nothing to say", Code: 2}) {
		t.Errorf("unchecked request: %+v %v", r, err)
	}
	r = rep{}
	if err := Call(path, map[string]string{"say": "hi", "extra": "x"}, &r); err != nil || r.Code != 2 || !strings.HasPrefix(r.Error, `test: bad request: json: unknown field "extra"`) {
		t.Errorf("unknown field: %+v %v", r, err)
	}
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "another daemon serves") {
		t.Errorf("second Listen = %v, want another daemon serves", err)
	}
}

func TestCallWithoutDaemon(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "c.sock")
	var r rep
	if err := Call(path, req{Say: "hi"}, &r); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Call without daemon = %v, want ErrNoDaemon", err)
	}
	stop := serve(t, path)
	stop()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket after Serve returned: %v, want removed", err)
	}
	if err := Call(path, req{Say: "hi"}, &r); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Call after stop = %v, want ErrNoDaemon", err)
	}
}
