package relay

import (
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"
)

// TestMultiLineReplyOneRecord: the EHLO reply, ten lines or so, goes out as
// one TLS record (one write) rather than one per line. A tls.Conn Read
// returns at most one record, so one Read must hold the whole reply.
func TestMultiLineReplyOneRecord(t *testing.T) {
	t.Parallel()
	tr := startRelay(t, relayOpts{})
	raw, err := net.Dial("tcp", tr.addr("submissions"))
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, tr.tlsConfig())
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 16<<10)
	n, err := c.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "220 ") {
		t.Fatalf("banner %q, %v", buf[:n], err)
	}
	if _, err := c.Write([]byte("EHLO client.test\r\n")); err != nil {
		t.Fatal(err)
	}
	n, err = c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(buf[:n]), "\r\n"), "\r\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[len(lines)-1], "250 ") {
		t.Fatalf("one read of the EHLO reply gave %d line(s): %q", len(lines), buf[:n])
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.HasPrefix(l, "250-") {
			t.Errorf("line %q", l)
		}
	}
}

// TestCipherNames: the cached names are tls.CipherSuiteName's, for every
// suite Go knows and for one it does not; and they cost no allocation (not
// parallel: AllocsPerRun counts the whole process's, averaged over 100 runs).
func TestCipherNames(t *testing.T) {
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if got := tlsCipher(tls.ConnectionState{CipherSuite: cs.ID}); got != tls.CipherSuiteName(cs.ID) {
			t.Errorf("%#04x: %q, want %q", cs.ID, got, tls.CipherSuiteName(cs.ID))
		}
	}
	if got := tlsCipher(tls.ConnectionState{CipherSuite: 0xfefe}); got != "0xFEFE" {
		t.Errorf("unknown suite: %q", got)
	}
	if a := testing.AllocsPerRun(100, func() { tlsCipher(tls.ConnectionState{CipherSuite: tls.TLS_AES_128_GCM_SHA256}) }); a != 0 {
		t.Errorf("%v allocations per name", a)
	}
}
