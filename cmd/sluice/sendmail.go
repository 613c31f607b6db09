package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/mail"
	"net/netip"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/config"
)

// runSendmail is a sendmail-compatible injector for local scripts (cron,
// monitoring): it reads a message on stdin and submits it over SMTP to this
// host's Sluice, on a listener that trusts loopback (auth: none), or with
// --user and $SLUICE_PASSWORD on any listener.
func runSendmail(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sendmail", flag.ContinueOnError)
	from := fs.String("f", "", "envelope sender")
	fromHeaders := fs.Bool("t", false, "take recipients from To:, Cc: and Bcc:")
	path := fs.String("c", defaultConfig, "configuration file (to find a listener)")
	server := fs.String("server", "", "host:port (default: a loopback-trusting listener of the config)")
	userName := fs.String("user", "", "SMTP AUTH user (password from $SLUICE_PASSWORD)")
	fs.Bool("i", false, "ignored (a lone dot never ends the message here)")
	fs.Bool("oi", false, "ignored")
	fs.String("F", "", "ignored (full name)")
	rcpts, err := parseFlags(fs, splitAttached(args))
	if err != nil {
		return usageErr(stderr, "usage: sluice sendmail [-f FROM] [-t] [RCPT...]")
	}
	msg, err := io.ReadAll(stdin)
	if err != nil {
		return err
	}
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if *fromHeaders {
		if err != nil {
			return fmt.Errorf("-t: cannot parse the message headers: %w", err)
		}
		for _, h := range []string{"To", "Cc", "Bcc"} {
			if v := m.Header.Get(h); v != "" {
				list, err := mail.ParseAddressList(v)
				if err != nil {
					return fmt.Errorf("-t: %s: %w", h, err)
				}
				for _, a := range list {
					rcpts = append(rcpts, a.Address)
				}
			}
		}
		msg = dropHeader(msg, "Bcc")
	}
	if len(rcpts) == 0 {
		return errors.New("no recipients (give them as arguments, or use -t)")
	}
	if *from == "" {
		name := "root"
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
		host, _ := os.Hostname()
		*from = name + "@" + host
	}
	addr := *server
	if addr == "" {
		cfg, err := config.Load(*path)
		if err != nil {
			return err
		}
		if addr = loopbackListener(cfg, *userName != ""); addr == "" {
			return errors.New("no listener of the configuration accepts loopback without AUTH; give --server and --user")
		}
	}
	conn, err := net.DialTimeout("tcp", addr, 15*time.Second)
	if err != nil {
		return err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	// STARTTLS when offered, so AUTH works on a submission listener. The
	// certificate is checked unless the relay is this host (the usual
	// case: a loopback address, where a public certificate cannot match).
	if ok, _ := c.Extension("STARTTLS"); ok {
		host, _, _ := net.SplitHostPort(addr)
		ip, _ := netip.ParseAddr(host)
		c.Close()
		if conn, err = net.DialTimeout("tcp", addr, 15*time.Second); err != nil {
			return err
		}
		if c, err = smtp.NewClientStartTLS(conn, &tls.Config{ServerName: host, InsecureSkipVerify: ip.IsLoopback()}); err != nil {
			conn.Close()
			return fmt.Errorf("starttls: %w", err)
		}
		defer c.Close()
	}
	if *userName != "" {
		if err := c.Auth(sasl.NewPlainClient("", *userName, os.Getenv("SLUICE_PASSWORD"))); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	if err := c.SendMail(*from, rcpts, bytes.NewReader(msg)); err != nil {
		return err
	}
	return c.Quit()
}

// splitAttached accepts sendmail's attached option values (-fADDR, -FNAME,
// as PHP's mail() and many sendmail_path settings pass them), which Go's
// flag package would read as unknown flags.
func splitAttached(args []string) []string {
	var out []string
	for _, a := range args {
		if len(a) > 2 && (strings.HasPrefix(a, "-f") || strings.HasPrefix(a, "-F")) && a[2] != '=' {
			out = append(out, a[:2], a[2:])
			continue
		}
		out = append(out, a)
	}
	return out
}

// loopbackListener picks the address of a listener a local script may use.
func loopbackListener(cfg *config.Config, withAuth bool) string {
	lo := netip.MustParseAddr("127.0.0.1")
	for _, l := range cfg.Listeners {
		if l.TLS == config.TLSImplicit || l.ProxyProtocol {
			continue
		}
		ok := withAuth // sendmail speaks STARTTLS when offered
		if l.Auth == config.AuthNone {
			for _, n := range l.TrustedNetworks {
				if p, err := netip.ParsePrefix(n); err == nil && p.Contains(lo) {
					ok = true
				} else if a, err := netip.ParseAddr(n); err == nil && a == lo {
					ok = true
				}
			}
		}
		if ok {
			host, port, err := net.SplitHostPort(l.Address)
			if err != nil {
				continue
			}
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			return net.JoinHostPort(host, port)
		}
	}
	return ""
}

// dropHeader removes every field called name from the header section.
func dropHeader(msg []byte, name string) []byte {
	var out bytes.Buffer
	r := bufio.NewReader(bytes.NewReader(msg))
	skipping, inHeader := false, true
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 {
			if inHeader {
				trim := bytes.TrimRight(line, "\r\n")
				switch {
				case len(trim) == 0:
					inHeader, skipping = false, false
				case line[0] == ' ' || line[0] == '\t':
					// continuation: keep or drop with its field
				default:
					skipping = len(trim) > len(name) && strings.EqualFold(string(trim[:len(name)+1]), name+":")
				}
				if skipping {
					continue
				}
			}
			out.Write(line)
		}
		if err != nil {
			return out.Bytes()
		}
	}
}
