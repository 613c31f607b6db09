package testsmtp

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func send(t *testing.T, c *smtp.Client, from string, to []string, body string) error {
	t.Helper()
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write([]byte(body)); err != nil {
		return err
	}
	return w.Close()
}

func TestStartTLSAuthRecords(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{TLS: TLSStartTLS, Username: "u", Password: "p"})
	c, err := smtp.DialStartTLS(s.Addr(), &tls.Config{RootCAs: certPool(s), ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("a@example.com", nil); err == nil {
		t.Fatal("MAIL before AUTH accepted")
	}
	if err := c.Auth(sasl.NewPlainClient("", "u", "p")); err != nil {
		t.Fatal(err)
	}
	if err := send(t, c, "a@example.com", []string{"b@example.org"}, "Subject: x\r\n\r\n.dot\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	m := s.WaitMessages(t, 1, 5*time.Second)[0]
	if m.From != "a@example.com" || m.To[0] != "b@example.org" || !m.TLS || m.User != "u" || m.Session != 1 {
		t.Fatalf("recorded %+v", m)
	}
	if string(m.Data) != "Subject: x\r\n\r\n.dot\r\n" {
		t.Fatalf("data %q", m.Data)
	}
}

func certPool(s *Server) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.Cert().Leaf)
	return p
}

func TestFailRulesAndSessions(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	s.FailRule(Rule{Stage: StageRcpt, Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "no such user", Rcpt: "bad@example.org"})
	s.FailRule(Rule{Stage: StageMail, Code: 454, Message: "Throttling failure", Times: 1})
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	err = send(t, c, "a@example.com", []string{"b@example.org"}, "x\r\n")
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 454 {
		t.Fatalf("first MAIL: %v", err)
	}
	c.Reset()
	err = send(t, c, "a@example.com", []string{"b@example.org", "bad@example.org"}, "x\r\n")
	if !errors.As(err, &se) || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) {
		t.Fatalf("bad rcpt: %v", err)
	}
	c.Reset()
	if err := send(t, c, "a@example.com", []string{"b@example.org"}, "x\r\n"); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	if got := s.Sessions(); got.Total != 1 || got.Max != 1 {
		t.Fatalf("sessions %+v", got)
	}
}

func TestRefuseAndSilent(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Mode: Refuse})
	c, err := net.Dial("tcp", s.Addr())
	if err == nil {
		buf := make([]byte, 10)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(buf); err == nil {
			t.Fatalf("refused connection sent %q", buf[:n])
		}
		c.Close()
	}
	s.SetMode(Silent)
	c, err = net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := c.Read(make([]byte, 10)); !isTimeout(err) {
		t.Fatalf("silent port answered: %v", err)
	}
	c.Close()
	if s.AcceptCount() != 2 || s.Sessions().Total != 0 {
		t.Fatalf("accepts %d sessions %+v", s.AcceptCount(), s.Sessions())
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestStallAfterDotAndRelease(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{})
	s.Stall(StageAfterDot)
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	c.SubmissionTimeout = 300 * time.Millisecond
	err = send(t, c, "a@example.com", []string{"b@example.org"}, "x\r\n")
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("stalled DATA: %v", err)
	}
	c.Close()
	s.Release()
	if n := len(s.Messages()); n > 1 {
		t.Fatalf("%d messages", n)
	}
}

func TestXOAUTH2AndLogin(t *testing.T) {
	t.Parallel()
	s := Start(t, Options{Username: "u", Password: "p", BearerToken: "tok"})
	c, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Auth(xo{"u", "wrong"}); err == nil {
		t.Fatal("wrong token accepted")
	}
	if err := c.Auth(xo{"u", "tok"}); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	c2, err := smtp.Dial(s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Auth(sasl.NewLoginClient("u", "p")); err != nil {
		t.Fatal(err)
	}
	c2.Quit()
}

type xo struct{ u, tok string }

func (x xo) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.u + "\x01auth=Bearer " + x.tok + "\x01\x01"), nil
}
func (x xo) Next([]byte) ([]byte, error) { return []byte{}, nil }
