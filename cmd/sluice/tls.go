package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/certs"
)

// certStore serves the current certificate through GetCertificate, so a
// renewed certificate (SIGHUP, or the files changing) is used by the next
// handshake without restarting listeners.
type certStore struct {
	cert       atomic.Pointer[tls.Certificate]
	mu         sync.Mutex
	certFile   string
	keyFile    string
	mtime      time.Time
	minVersion uint16
	needed     bool
}

func newCertStore(cfg *config.Config) (*certStore, error) {
	s := &certStore{}
	for _, l := range cfg.Listeners {
		if l.TLS != config.TLSNone {
			s.needed = true
		}
	}
	if !s.needed {
		return s, nil
	}
	return s, s.reload(cfg)
}

func (s *certStore) reload(cfg *config.Config) error {
	if !s.needed {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Nothing changes unless the whole reload succeeds.
	minVersion := uint16(tls.VersionTLS12)
	if cfg.TLS.MinVersion == "1.3" {
		minVersion = tls.VersionTLS13
	}
	if cfg.TLS.CertFile == "" && cfg.TLS.SelfSigned {
		if s.cert.Load() != nil && s.certFile == "" {
			s.minVersion = minVersion
			return nil // keep the self-signed one across reloads
		}
		c, _, _, err := certs.SelfSigned(cfg.Hostname, "localhost", "127.0.0.1", "::1")
		if err != nil {
			return err
		}
		s.minVersion = minVersion
		s.cert.Store(&c)
		return nil
	}
	c, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	s.minVersion = minVersion
	s.certFile, s.keyFile = cfg.TLS.CertFile, cfg.TLS.KeyFile
	if fi, err := os.Stat(s.certFile); err == nil {
		s.mtime = fi.ModTime()
	}
	s.cert.Store(&c)
	return nil
}

// reloadIfChanged picks up a certificate renewed on disk (certbot, ACME clients).
func (s *certStore) reloadIfChanged(log *slog.Logger) {
	s.mu.Lock()
	file, keyFile, mtime := s.certFile, s.keyFile, s.mtime
	s.mu.Unlock()
	if file == "" {
		return
	}
	fi, err := os.Stat(file)
	if err != nil || !fi.ModTime().After(mtime) {
		return
	}
	c, err := tls.LoadX509KeyPair(file, keyFile)
	if err != nil {
		log.Error("tls certificate changed but does not load; keeping the old one", "file", file, "err", err)
		return
	}
	s.mu.Lock()
	s.mtime = fi.ModTime()
	s.mu.Unlock()
	s.cert.Store(&c)
	log.Info("tls certificate reloaded", "file", file)
}

func (s *certStore) tlsConfig() *tls.Config {
	if !s.needed {
		return nil
	}
	return &tls.Config{
		MinVersion: s.minVersion,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cert.Load(), nil
		},
	}
}
