// Package testdns is an authoritative DNS server on 127.0.0.1 for tests:
// UDP and TCP on one port, records the test sets and changes while it
// runs (TXT of several strings, several TXT records at a name, CNAMEs,
// failures). Answers larger than the client's UDP size are truncated, so
// clients must retry over TCP as with a real server.
package testdns

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
)

// Server answers from its records; names are case-insensitive.
type Server struct {
	// Addr is host:port for UDP and TCP.
	Addr string
	// Queries counts questions answered.
	Queries atomic.Int64

	mu     sync.Mutex
	txt    map[string][][]string
	cname  map[string]string
	fail   map[string]bool
	chase  bool
	closer []func() error
}

func key(name string) string { return dns.Fqdn(strings.ToLower(name)) }

// Start runs a server until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{txt: map[string][][]string{}, cname: map[string]string{}, fail: map[string]bool{}}
	var err error
	for range 20 {
		var pc net.PacketConn
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			continue
		}
		var l net.Listener
		l, err = net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue
		}
		s.Addr = pc.LocalAddr().String()
		h := dns.HandlerFunc(s.serve)
		udp := &dns.Server{PacketConn: pc, Handler: h}
		tcp := &dns.Server{Listener: l, Handler: h}
		go udp.ActivateAndServe()
		go tcp.ActivateAndServe()
		s.closer = []func() error{udp.Shutdown, tcp.Shutdown}
		break
	}
	if err != nil {
		t.Fatalf("testdns: %v", err)
	}
	t.Cleanup(func() {
		for _, c := range s.closer {
			c()
		}
	})
	return s
}

// SetTXT replaces the TXT records at name: one record per argument, each
// record the list of its character-strings. No argument removes them.
func (s *Server) SetTXT(name string, records ...[]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(records) == 0 {
		delete(s.txt, key(name))
		return
	}
	s.txt[key(name)] = records
}

// SetValue publishes one TXT record holding value, split into strings of
// at most 255 bytes as a zone file would.
func (s *Server) SetValue(name, value string) {
	var parts []string
	for len(value) > 255 {
		parts = append(parts, value[:255])
		value = value[255:]
	}
	s.SetTXT(name, append(parts, value))
}

// SetCNAME makes name an alias of target ("" removes it).
func (s *Server) SetCNAME(name, target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if target == "" {
		delete(s.cname, key(name))
		return
	}
	s.cname[key(name)] = key(target)
}

// SetFail makes questions for name answer SERVFAIL (false: normal again).
func (s *Server) SetFail(name string, fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[key(name)] = fail
}

// SetChase makes answers include the records at a CNAME's target, as a
// recursive resolver does; by default only the CNAME is answered, as an
// authoritative server does for a target outside its zone.
func (s *Server) SetChase(chase bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.chase = chase
}

func (s *Server) serve(w dns.ResponseWriter, r *dns.Msg) {
	s.Queries.Add(1)
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := key(q.Name)
	s.mu.Lock()
	if s.fail[name] {
		s.mu.Unlock()
		m.Rcode = dns.RcodeServerFailure
		w.WriteMsg(m)
		return
	}
	exists := false
	for range 10 {
		if target, ok := s.cname[name]; ok {
			exists = true
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(name, dns.TypeCNAME), Target: target})
			if !s.chase {
				break
			}
			name = target
			continue
		}
		if recs, ok := s.txt[name]; ok {
			exists = true
			if q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY {
				for _, strs := range recs {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(name, dns.TypeTXT), Txt: strs})
				}
			}
		}
		break
	}
	s.mu.Unlock()
	if !exists {
		m.Rcode = dns.RcodeNameError
	}
	size := dns.MinMsgSize
	if o := r.IsEdns0(); o != nil {
		size = int(o.UDPSize())
		m.SetEdns0(o.UDPSize(), false)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

func hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: 60}
}
