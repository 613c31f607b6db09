package testsmtp

import (
	"crypto/tls"
	"crypto/x509"

	"github.com/sluicemail/sluice/internal/certs"
)

// NewCert returns a self-signed certificate for hosts (names or IP
// addresses; default "127.0.0.1" and "localhost") and a pool that trusts it.
// The certificate is its own CA, so the pool is all a client needs.
func NewCert(hosts ...string) (tls.Certificate, *x509.CertPool) {
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	cert, certPEM, _, err := certs.SelfSigned(hosts...)
	if err != nil {
		panic("testsmtp: " + err.Error())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(certPEM)
	return cert, pool
}
