package upstream

import (
	"context"
	"crypto/tls"

	"github.com/sluicemail/sluice/config"
)

// PortProbe is what one port of an upstream did when probed: Err is nil
// when connect, TLS (when configured) and AUTH (when configured) all
// succeeded; otherwise its Stage says which failed.
type PortProbe struct {
	Port int
	Err  *Error
	// TLS is the negotiated TLS version and cipher, when TLS was used.
	TLS *tls.ConnectionState
}

// Probe opens one connection to every port of upstream u the way a
// delivery does — dial, banner, EHLO, STARTTLS or implicit TLS with the
// certificate verified, AUTH — and ends it with QUIT; no message is sent.
// opts supplies the EHLO name, logger and root CAs (Upstreams is ignored).
// `sluice doctor` reports what it finds.
func Probe(ctx context.Context, opts Options, u config.Upstream) ([]PortProbe, error) {
	opts.Upstreams = []config.Upstream{u}
	opts.StatusFile = ""
	d, err := New(opts)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	up := d.ups[0]
	if up.maildir {
		return nil, nil
	}
	out := make([]PortProbe, 0, len(up.cfg.Ports))
	for _, port := range up.cfg.Ports {
		cl, e := up.open(ctx, port)
		p := PortProbe{Port: port, Err: e}
		if e == nil {
			conn := cl.conn
			if g, ok := conn.(*greetedConn); ok {
				conn = g.Conn
			}
			if tc, ok := conn.(*tls.Conn); ok {
				st := tc.ConnectionState()
				p.TLS = &st
			}
			cl.quit()
		}
		out = append(out, p)
	}
	return out, nil
}
