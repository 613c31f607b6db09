// Package dnsclient is Sluice's one way to ask DNS: TXT lookups for DKIM,
// SPF and DMARC records (managed DKIM keys, `sluice doctor`), sent to the
// configured `dns.resolver` or the name servers of /etc/resolv.conf.
//
// It is built on github.com/miekg/dns rather than net.Resolver because the
// answer must be exact: which records exist at one name (several TXT
// records, each of several strings), whether the name is absent (NXDOMAIN or
// no TXT) or the server failed (SERVFAIL, timeout), and CNAME chains that an
// authoritative server answers without the target's records. The standard
// resolver hides the rcode, applies search domains and ndots, and gives up
// on a CNAME whose target is not in the answer; pointing `dns.resolver` at
// the zone's own authoritative server (to check a record before caches see
// it) needs the chain followed here.
package dnsclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// ErrNotFound means the name does not exist or holds no TXT record: the
// answer was authoritative and empty, unlike a failure to get an answer.
var ErrNotFound = errors.New("no such record")

// maxCNAME bounds a CNAME chain (resolvers use about 8-16).
const maxCNAME = 8

// Client sends queries to its servers in order; the first that answers
// (any rcode but SERVFAIL and REFUSED) decides.
type Client struct {
	servers []string
	timeout time.Duration
}

// New makes a client for resolver (host:port) or, when resolver is "", the
// name servers in /etc/resolv.conf (127.0.0.1:53 when it has none).
// timeout bounds each query to each server (0 means 5s).
func New(resolver string, timeout time.Duration) (*Client, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	c := &Client{timeout: timeout}
	if resolver != "" {
		if _, _, err := net.SplitHostPort(resolver); err != nil {
			return nil, fmt.Errorf("dnsclient: resolver %q: want host:port", resolver)
		}
		c.servers = []string{resolver}
		return c, nil
	}
	if cc, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil {
		for _, s := range cc.Servers {
			c.servers = append(c.servers, net.JoinHostPort(s, cc.Port))
		}
	}
	if len(c.servers) == 0 {
		c.servers = []string{"127.0.0.1:53"}
	}
	return c, nil
}

// Servers returns the name servers queried, in order.
func (c *Client) Servers() []string { return append([]string(nil), c.servers...) }

// LookupTXT returns every TXT record at name, one string per record with the
// record's character-strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2),
// following CNAMEs. An absent name or type gives an error matching
// ErrNotFound; any other error means the answer is unknown.
func (c *Client) LookupTXT(ctx context.Context, name string) ([]string, error) {
	qname := dns.Fqdn(strings.ToLower(strings.TrimSpace(name)))
	if _, ok := dns.IsDomainName(qname); !ok {
		return nil, fmt.Errorf("dnsclient: %q is not a domain name", name)
	}
	for range maxCNAME {
		msg, err := c.exchange(ctx, qname, dns.TypeTXT)
		if err != nil {
			return nil, err
		}
		txts, next := txtAnswer(msg, qname)
		if len(txts) > 0 {
			return txts, nil
		}
		if next == "" {
			if msg.Rcode == dns.RcodeNameError {
				return nil, fmt.Errorf("%s: %w (NXDOMAIN)", strings.TrimSuffix(qname, "."), ErrNotFound)
			}
			return nil, fmt.Errorf("%s: %w (no TXT record)", strings.TrimSuffix(qname, "."), ErrNotFound)
		}
		qname = next // the chain left the answer: ask for its end
	}
	return nil, fmt.Errorf("dnsclient: %s: CNAME chain longer than %d", name, maxCNAME)
}

// txtAnswer follows the CNAME chain from qname inside one answer and
// returns the TXT records at its end; when the chain ends in a CNAME whose
// target has no records in the answer, next is that target.
func txtAnswer(msg *dns.Msg, qname string) (txts []string, next string) {
	name := qname
	for range maxCNAME + 1 {
		var cname string
		for _, rr := range msg.Answer {
			if !strings.EqualFold(rr.Header().Name, name) {
				continue
			}
			switch r := rr.(type) {
			case *dns.TXT:
				txts = append(txts, strings.Join(r.Txt, ""))
			case *dns.CNAME:
				cname = strings.ToLower(r.Target)
			}
		}
		if len(txts) > 0 || cname == "" {
			return txts, ""
		}
		name = cname
		if !inAnswer(msg, name) {
			return nil, name
		}
	}
	return nil, ""
}

func inAnswer(msg *dns.Msg, name string) bool {
	for _, rr := range msg.Answer {
		if strings.EqualFold(rr.Header().Name, name) {
			return true
		}
	}
	return false
}

// exchange asks each server in turn: UDP with EDNS0, then TCP when the
// answer was truncated (an RSA-2048 DKIM record is near the 512-byte limit).
func (c *Client) exchange(ctx context.Context, qname string, qtype uint16) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.SetQuestion(qname, qtype)
	q.RecursionDesired = true
	q.SetEdns0(4096, false)
	var errs []error
	for _, server := range c.servers {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		msg, err := c.exchangeOne(ctx, q, server)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", server, err))
			continue
		}
		switch msg.Rcode {
		case dns.RcodeSuccess, dns.RcodeNameError:
			return msg, nil
		}
		errs = append(errs, fmt.Errorf("%s: %s for %s", server, dns.RcodeToString[msg.Rcode], strings.TrimSuffix(qname, ".")))
	}
	return nil, fmt.Errorf("dnsclient: %w", errors.Join(errs...))
}

func (c *Client) exchangeOne(ctx context.Context, q *dns.Msg, server string) (*dns.Msg, error) {
	for _, network := range []string{"udp", "tcp"} {
		cl := &dns.Client{Net: network, Timeout: c.timeout}
		qctx, cancel := context.WithTimeout(ctx, c.timeout)
		msg, _, err := cl.ExchangeContext(qctx, q, server)
		cancel()
		if err != nil {
			return nil, err
		}
		if msg.Id != q.Id {
			return nil, errors.New("answer id does not match the query")
		}
		if !msg.Truncated {
			return msg, nil
		}
	}
	return nil, errors.New("answer truncated even over TCP")
}
