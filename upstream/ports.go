package upstream

import (
	"context"
	"slices"
	"time"
)

// portReprobe is how long a remembered port that is not the first of
// `ports` is used before the earlier ports are tried again (in the
// background, never on a message's path): a blocked port may open again.
const portReprobe = 10 * time.Minute

// dial tries the remembered port first, then the others in order, and
// remembers the first that connects and completes TLS, so a blocked port
// costs one timeout, not one per message.
func (u *upstream) dial(ctx context.Context) (*client, *Error) {
	u.mu.Lock()
	remembered := u.port
	u.mu.Unlock()
	if remembered == 0 {
		// No port known yet: one delivery finds it while the others wait,
		// so messages due at once do not each pay for a blocked port.
		u.discover.Lock()
		defer u.discover.Unlock()
		u.mu.Lock()
		remembered = u.port
		u.mu.Unlock()
	}
	ports := u.cfg.Ports
	if remembered != 0 {
		ports = append([]int{remembered}, without(u.cfg.Ports, remembered)...)
	}
	var last *Error
	for _, p := range ports {
		cl, e := u.open(ctx, p)
		if e == nil {
			if p != remembered {
				u.remember(p)
			}
			return cl, nil
		}
		last = e
		if e.Stage == StageAuth || ctx.Err() != nil {
			break // the same credentials fail on every port
		}
	}
	return nil, last
}

func (u *upstream) remember(p int) {
	u.mu.Lock()
	u.port, u.portAt = p, u.d.now()
	u.mu.Unlock()
	u.d.log.Info("upstream port remembered", "upstream", u.cfg.Name, "port", p)
	u.d.touch()
}

func without(ports []int, p int) []int {
	var out []int
	for _, q := range ports {
		if q != p {
			out = append(out, q)
		}
	}
	return out
}

// reprobeDue returns the ports before the remembered one when they are due
// for a re-probe, and marks the re-probe as running.
func (u *upstream) reprobeDue(now time.Time) []int {
	u.mu.Lock()
	defer u.mu.Unlock()
	i := slices.Index(u.cfg.Ports, u.port)
	if u.reprobing || i <= 0 || now.Sub(u.portAt) < portReprobe {
		return nil
	}
	u.reprobing = true
	return u.cfg.Ports[:i]
}

// reprobe tries earlier, the ports listed before the remembered one, in
// order; the first that works becomes the remembered port. It runs in the
// background: deliveries keep using the remembered port meanwhile.
func (u *upstream) reprobe(ctx context.Context, earlier []int) {
	defer func() {
		u.mu.Lock()
		u.reprobing = false
		u.mu.Unlock()
	}()
	for _, p := range earlier {
		cl, e := u.open(ctx, p)
		if e == nil {
			cl.quit()
			u.remember(p)
			return
		}
		if ctx.Err() != nil {
			return
		}
	}
	u.mu.Lock()
	u.portAt = u.d.now() // still blocked: ask again in portReprobe
	u.mu.Unlock()
}

// loadPorts takes the remembered ports from a status file written by an
// earlier run, for upstreams with the same name and host whose ports still
// include it: a restart does not pay a blocked port's timeout again.
func (d *Dispatcher) loadPorts(path string) {
	st, err := ReadStatus(path)
	if err != nil {
		return // none yet, or unreadable: the ports are found again
	}
	now := d.now()
	for _, s := range st {
		for _, u := range d.ups {
			if u.cfg.Name == s.Name && u.cfg.Host == s.Host && s.Port != 0 && slices.Contains(u.cfg.Ports, s.Port) {
				u.mu.Lock()
				u.port, u.portAt = s.Port, now
				u.mu.Unlock()
			}
		}
	}
}
