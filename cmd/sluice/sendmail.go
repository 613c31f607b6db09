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
	from := fs.String("f", "", "envelope sender (-r is the same)")
	fromHeaders := fs.Bool("t", false, "take recipients from To:, Cc: and Bcc: (or the Resent- ones)")
	path := fs.String("c", defaultConfig, "configuration file (to find a listener)")
	server := fs.String("server", "", "host:port (default: a loopback-trusting listener of the config)")
	userName := fs.String("user", "", "SMTP AUTH user (password from $SLUICE_PASSWORD)")
	fs.String("F", "", "ignored (full name)")
	fs.String("B", "", "ignored (body type: 7BIT or 8BITMIME)")
	fs.String("L", "", "ignored (syslog tag)")
	fs.String("h", "", "ignored (hop count)")
	rcpts, err := parseFlags(fs, sendmailArgs(args))
	if err != nil {
		return usageErr(stderr, sendmailUsage)
	}
	msg, err := io.ReadAll(stdin)
	if err != nil {
		return err
	}
	msg = dropMboxFrom(msg)
	for i, r := range rcpts {
		if rcpts[i], err = checkAddress(r); err != nil {
			return fmt.Errorf("recipient: %w", err)
		}
	}
	if *fromHeaders {
		m, err := mail.ReadMessage(bytes.NewReader(msg))
		if err != nil {
			return fmt.Errorf("-t: cannot parse the message headers: %w", err)
		}
		hr, err := headerRecipients(m.Header)
		if err != nil {
			return fmt.Errorf("-t: %w", err)
		}
		rcpts = append(rcpts, hr...)
		// Blind copies stay blind, also when -t was not given.
	}
	msg = dropHeader(msg, "Bcc", "Resent-Bcc")
	if len(rcpts) == 0 {
		return errors.New("no recipients (give them as arguments, or use -t)")
	}
	switch *from {
	case "":
		name := "root"
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
		host, _ := os.Hostname()
		*from = name + "@" + host
	case "<>":
		*from = "" // the null sender, as bounce scripts ask for it
	default:
		if *from, err = checkAddress(*from); err != nil {
			return fmt.Errorf("-f: %w", err)
		}
	}
	addr := *server
	if addr == "" {
		cfg, err := loadNoSecrets(*path)
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

const sendmailUsage = "usage: sluice sendmail [-f FROM] [-t] [--server H:P] [--user U] [RCPT...]"

// sendmailNoops are sendmail options that change nothing here, accepted so
// that scripts and sendmail_path settings written for sendmail or Postfix
// work as they are: -i/-oi (a lone dot never ends the message: stdin is
// read to its end), delivery modes (-odb, -odi, -odq: the relay queues
// anyway), error modes (-oem, -oee, -oep, -oeq, -oew, -em, …: errors go to
// stderr and the exit code), -v, -bm (deliver mail: the only mode), -U,
// -n, -m, -G.
var sendmailNoops = map[string]bool{
	"-i": true, "-oi": true, "-om": true, "-odb": true, "-odi": true, "-odq": true, "-odd": true,
	"-oem": true, "-oee": true, "-oep": true, "-oeq": true, "-oew": true,
	"-em": true, "-ee": true, "-ep": true, "-eq": true, "-ew": true,
	"-v": true, "-bm": true, "-U": true, "-n": true, "-m": true, "-G": true,
}

// sendmailArgs rewrites sendmail's own option syntax into what the flag
// package reads: no-op options are dropped, -r is -f, and values attached
// to their option (-fADDR, -FNAME, -B8BITMIME, as PHP's mail() and many
// sendmail_path settings pass them) are split off.
func sendmailArgs(args []string) []string {
	var out []string
	for i, a := range args {
		switch {
		case a == "--":
			return append(out, args[i:]...)
		case sendmailNoops[a]:
			continue
		case a == "-r":
			out = append(out, "-f")
		case len(a) > 2 && a[0] == '-' && strings.IndexByte("frFBLh", a[1]) >= 0 && a[2] != '=' && a[2] != '-':
			opt := a[:2]
			if opt == "-r" {
				opt = "-f"
			}
			out = append(out, opt, a[2:])
		default:
			out = append(out, a)
		}
	}
	return out
}

// dropMboxFrom removes a leading mbox "From sender date" line, which some
// scripts pipe along with a message saved from a mailbox.
func dropMboxFrom(msg []byte) []byte {
	if !bytes.HasPrefix(msg, []byte("From ")) {
		return msg
	}
	if i := bytes.IndexByte(msg, '\n'); i >= 0 {
		return msg[i+1:]
	}
	return nil
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

// dropHeader removes every field with one of names from the header section.
func dropHeader(msg []byte, names ...string) []byte {
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
					skipping = false
					if name, _, ok := bytes.Cut(trim, []byte(":")); ok {
						name = bytes.TrimRight(name, " \t")
						for _, n := range names {
							if strings.EqualFold(string(name), n) {
								skipping = true
							}
						}
					}
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
