package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/metrics"
	"github.com/sluicemail/sluice/policy"
	"github.com/sluicemail/sluice/queue"
	"github.com/sluicemail/sluice/relay"
	"github.com/sluicemail/sluice/signing"
	"github.com/sluicemail/sluice/upstream"
)

func runServe(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := newFlags("serve")
	dev := fs.Bool("dev", false, "development mode: no file needed")
	devDir := fs.String("dev-dir", "./sluice-dev", "state directory of --dev")
	if _, err := parseFlags(fs, args); err != nil {
		return usageErr(stderr, "usage: sluice serve [-c FILE] [--dev [--dev-dir DIR]]")
	}
	var cfg *config.Config
	var err error
	if *dev {
		var info *devInfo
		cfg, info, err = devConfig(*devDir)
		if err != nil {
			return err
		}
		info.print(stdout)
	} else {
		cfg, err = config.Load(*path)
		if err != nil {
			return err
		}
	}
	log := newLogger(cfg.Log, stderr)
	procs, setBy := serveProcs()
	log.Info("runtime", "gomaxprocs", procs, "set_by", setBy)
	d := &daemon{path: *path, dev: *dev, log: log}
	return d.run(cfg)
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	switch c.Level {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon is one running relay: every package wired together.
type daemon struct {
	path string
	dev  bool
	log  *slog.Logger

	certs  *certStore
	relay  *relay.Server
	queue  *queue.Queue
	disp   *liveDispatcher
	keysMu sync.RWMutex
	keys   *signing.Keyring
	policy *policy.Engine
	cfg    *config.Config
	dkim   *dkimWatch
	jsink  journalSink
	supp   *suppression
}

func (d *daemon) run(cfg *config.Config) (err error) {
	// Signals are taken over first: a SIGHUP that arrives while starting
	// (a config-management tool reloading right after a start) must not
	// kill the process, which is SIGHUP's default action.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	d.cfg = cfg
	if err := os.MkdirAll(cfg.StateDir, 0o750); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	// A start that fails half way closes what it opened, newest first: the
	// queue's spool and control socket, the dispatcher, the policy's Redis
	// client, the keys' libcrypto copies.
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	if d.certs, err = newCertStore(cfg); err != nil {
		return err
	}
	d.dkim = newDKIMWatch(d)
	d.dkim.markLoaded(cfg)
	if d.keys, err = signing.LoadKeyring(cfg.DKIM, cfg.StateDir); err != nil {
		return err
	}
	undo = append(undo, d.keys.Close)
	d.log.Info("dkim", "keys", len(cfg.DKIM), "rsa_signer", signing.RSAImplementation())
	d.warnUnsigned(cfg, d.keys)
	if d.policy, err = policy.New(cfg, policy.Options{Logger: d.log}); err != nil {
		return err
	}
	undo = append(undo, d.policy.Close)
	first, err := d.newDispatcher(cfg)
	if err != nil {
		return err
	}
	undo = append(undo, first.Close)
	first.Start(nil)
	d.disp = &liveDispatcher{}
	d.disp.p.Store(first)
	if d.supp, err = openSuppression(cfg, d.log); err != nil {
		return err
	}
	defer d.supp.Close()
	d.queue, err = queue.Open(queue.Options{
		Dir:           filepath.Join(cfg.StateDir, "spool"),
		Config:        cfg.Queue,
		Hostname:      cfg.Hostname,
		Deliverer:     d.disp,
		Sign:          d.signBounce,
		ControlSocket: filepath.Join(cfg.StateDir, "control.sock"),
		Logger:        d.log,
		Journal:       &d.jsink,
		Suppress:      d.supp.list,
		// Listeners and /healthz answer at once whatever the queue holds;
		// /readyz says "recovering" until every message is scheduled.
		RecoverInBackground: true,
	})
	if err != nil {
		return err
	}
	undo = append(undo, func() { d.queue.Close() })
	// Opened once queue.Open holds the control socket: no other daemon
	// writes this state_dir, so its unsealed segments are ours to seal.
	jr, err := openJournal(cfg, d.log)
	if err != nil {
		return err
	}
	d.jsink.set(jr)
	defer jr.Close()
	d.relay, err = relay.New(relay.Options{Config: cfg, Policy: d.policy, Keys: d.keys, Queue: d.queue, TLS: d.certs.tlsConfig(), Logger: d.log,
		Journal: d.supp.wrap(&d.jsink), Suppress: d.supp.list})
	if err != nil {
		return err
	}
	if err := d.relay.Listen(); err != nil {
		return err
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	qdone := make(chan struct{})
	go func() { defer close(qdone); d.queue.Run(ctx) }()
	go d.dkim.run(ctx)
	d.relay.Serve()
	httpSrv, err := d.serveHTTP(cfg.HTTP.Address)
	if err != nil {
		return err
	}
	for _, l := range cfg.Listeners {
		d.log.Info("listening", "listener", l.Name, "address", d.relay.Addr(l.Name).String(), "tls", l.TLS, "auth", l.Auth)
		if l.TLS == config.TLSNone && l.AllowInsecureAuth {
			d.log.Warn("listener takes passwords in cleartext (tls: none, allow_insecure_auth: true); use it only on a trusted network", "listener", l.Name)
		}
	}

	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			d.certs.reloadIfChanged(d.log)
			continue
		case <-d.dkim.changed:
			d.reloadKeys()
			continue
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				d.reload()
				continue
			}
		}
		break
	}
	d.log.Info("shutting down", "timeout", d.cfg.ShutdownTimeout.String())
	sctx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownTimeout)
	defer cancel()
	d.relay.Shutdown(sctx)
	if httpSrv != nil {
		httpSrv.Shutdown(sctx)
	}
	stop()
	select {
	case <-qdone:
		// Closed only once Run ended: a delivery still running at the
		// timeout keeps its files until the process exits.
		if err := d.queue.Close(); err != nil {
			d.log.Error("queue: close", "err", err.Error())
		}
	case <-sctx.Done():
		d.log.Warn("shutdown timeout reached with deliveries still running")
	}
	d.disp.p.Load().Close()
	d.policy.Close()
	d.log.Info("stopped")
	return nil
}

// reload re-reads the configuration, users, certificates and keys. A broken
// configuration is refused with every error logged; the running one stays.
func (d *daemon) reload() {
	if d.dev {
		d.log.Warn("reload: --dev has no file to reload")
		return
	}
	// refuse keeps the running configuration and closes what this reload
	// built, so nothing of a refused configuration lives on (a leaked
	// dispatcher would keep rewriting upstreams.json with its upstreams).
	refuse := func(err error, built ...func()) {
		for _, c := range built {
			c()
		}
		d.log.Error("reload refused, keeping the running configuration", "err", err.Error())
	}
	cfg, err := config.Load(d.path)
	if err != nil {
		refuse(err)
		return
	}
	d.dkim.markLoaded(cfg)
	keys, err := signing.LoadKeyring(cfg.DKIM, cfg.StateDir)
	if err != nil {
		refuse(err)
		return
	}
	pol, err := policy.New(cfg, policy.Options{Logger: d.log})
	if err != nil {
		refuse(err, keys.Close)
		return
	}
	if err := d.certs.reload(cfg); err != nil {
		refuse(err, keys.Close, pol.Close)
		return
	}
	// The dispatcher comes last: once built it owns upstreams.json, so
	// nothing that can still refuse the reload may follow it.
	disp, err := d.newDispatcher(cfg)
	if err != nil {
		refuse(err, keys.Close, pol.Close)
		return
	}
	old := d.policy
	pol.Inherit(old) // rate limits and auth-failure blocks survive the reload
	// New deliveries use the new upstreams; the old dispatcher's in-flight
	// deliveries finish on their own before its idle connections are closed.
	disp.Start(d.disp.p.Load()) // breakers and remembered ports carry over
	oldDisp := d.disp.p.Swap(disp)
	time.AfterFunc(2*time.Minute, oldDisp.Close)
	d.relay.Reload(cfg, pol, keys)
	d.keysMu.Lock()
	oldKeys := d.keys
	d.keys, d.policy, d.cfg = keys, pol, cfg
	d.keysMu.Unlock()
	// The old keys' libcrypto copies are freed once sessions that began
	// with them had time to finish (they would sign in Go after that).
	time.AfterFunc(cfg.ShutdownTimeout+time.Minute, oldKeys.Close)
	// Sessions opened before keep the old engine until they end; its
	// resources are released after they had time to finish.
	time.AfterFunc(cfg.ShutdownTimeout+time.Minute, old.Close)
	d.log.Info("reloaded", "users", len(cfg.Users), "dkim_keys", len(cfg.DKIM))
}

// signBounce signs a DSN with the relay's key for its From: domain, if any.
func (d *daemon) signBounce(domain string, msg []byte) ([]byte, error) {
	d.keysMu.RLock()
	keys := d.keys
	d.keysMu.RUnlock()
	s, err := keys.NewSigner(domain, signing.ProfileGeneric)
	if err != nil || s == nil {
		return nil, err
	}
	if _, err := s.Write(msg); err != nil {
		return nil, err
	}
	if err := s.Close(); err != nil {
		return nil, err
	}
	return s.Header(), nil
}

func (d *daemon) serveHTTP(addr string) (*http.Server, error) {
	if addr == "" {
		return nil, nil
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		metrics.Default.WriteText(w)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	if d.cfg.HTTP.Status {
		d.statusPage().Register(mux)
	}
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := d.readiness(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	if h := d.hooks(); h != nil {
		mux.Handle("/hooks/", h)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	d.log.Info("http listening", "address", ln.Addr().String())
	go srv.Serve(ln)
	return srv, nil
}

// readiness: every listener bound (they are, once serving), the spool
// recovered and writable, and at least one upstream whose breaker is not open.
func (d *daemon) readiness() error {
	if d.queue.Recovering() {
		return errors.New("recovering the spool")
	}
	if err := d.queue.Writable(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	for _, s := range d.disp.p.Load().Status() {
		if s.Breaker != "open" {
			return nil
		}
	}
	return errors.New("every upstream's circuit breaker is open")
}

func (d *daemon) newDispatcher(cfg *config.Config) (*upstream.Dispatcher, error) {
	return upstream.New(upstream.Options{
		Hostname:   cfg.Hostname,
		Upstreams:  cfg.Upstreams,
		Logger:     d.log,
		StatusFile: filepath.Join(cfg.StateDir, "upstreams.json"),
	})
}

// liveDispatcher lets SIGHUP replace the upstreams under a running queue.
type liveDispatcher struct {
	p atomic.Pointer[upstream.Dispatcher]
}

func (l *liveDispatcher) Deliver(ctx context.Context, m *upstream.Message) upstream.Result {
	return l.p.Load().Deliver(ctx, m)
}

func (l *liveDispatcher) Available(route []string, requireTLS bool) (bool, time.Time) {
	return l.p.Load().Available(route, requireTLS)
}
