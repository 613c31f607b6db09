package main

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// runSend sends one test message through a Sluice listener (or any
// submission server), the way an application would.
func runSend(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	server := fs.String("server", "127.0.0.1:587", "host:port of the submission listener")
	user := fs.String("user", "", "SMTP AUTH user (empty: no AUTH)")
	password := fs.String("password", "", "password (else $SLUICE_PASSWORD, else a prompt)")
	from := fs.String("from", "", "envelope and header sender")
	var to stringList
	fs.Var(&to, "to", "recipient (repeatable)")
	mode := fs.String("tls", "starttls", "starttls, implicit or none")
	insecure := fs.Bool("insecure", false, "do not verify the server certificate (self-signed dev certificates)")
	caFile := fs.String("ca", "", "PEM file of the CA that signed the server certificate")
	subject := fs.String("subject", "Sluice test message", "Subject:")
	body := fs.String("body", "This is a test message sent by `sluice send`.", "message body")
	dataFile := fs.String("data", "", "send this file (or - for stdin) as the whole message instead")
	helo := fs.String("helo", "", "EHLO name (default: this host's name)")
	_, err := parseFlags(fs, args)
	if err != nil || *from == "" || len(to) == 0 {
		return usageErr(stderr, "usage: sluice send --server H:P [--user U [--password P]] --from A --to B [--tls starttls|implicit|none] [--insecure|--ca FILE] [--data FILE|-] [--subject S] [--body TEXT] [--helo NAME]")
	}
	if *from, err = checkAddress(*from); err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	for i, r := range to {
		if to[i], err = checkAddress(r); err != nil {
			return fmt.Errorf("--to: %w", err)
		}
	}
	host, _, err := net.SplitHostPort(*server)
	if err != nil {
		return fmt.Errorf("--server: %w", err)
	}
	tc := &tls.Config{ServerName: host, InsecureSkipVerify: *insecure}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return err
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("%s: no certificate found", *caFile)
		}
	}
	pw := *password
	if *user != "" && pw == "" {
		pw = os.Getenv("SLUICE_PASSWORD")
		if pw == "" {
			if pw, err = readPassword(stdin, stderr, false); err != nil {
				return err
			}
		}
	}

	var msg []byte
	switch *dataFile {
	case "":
		id := strings.ToLower(rand.Text()[:16])
		msg = []byte(fmt.Sprintf("From: <%s>\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@sluice-send>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%s\r\n",
			*from, "<"+strings.Join(to, ">, <")+">", *subject, time.Now().Format(time.RFC1123Z), id, *body))
	case "-":
		if msg, err = io.ReadAll(stdin); err != nil {
			return err
		}
	default:
		if msg, err = os.ReadFile(*dataFile); err != nil {
			return err
		}
	}

	conn, err := net.DialTimeout("tcp", *server, 15*time.Second)
	if err != nil {
		return err
	}
	var c *smtp.Client
	switch *mode {
	case "implicit":
		c = smtp.NewClient(tls.Client(conn, tc))
	case "starttls":
		c, err = smtp.NewClientStartTLS(conn, tc)
		if err != nil {
			conn.Close()
			return fmt.Errorf("starttls: %w", err)
		}
	case "none":
		c = smtp.NewClient(conn)
	default:
		conn.Close()
		return usageErr(stderr, "--tls must be starttls, implicit or none")
	}
	defer c.Close()
	if *helo != "" {
		if err := c.Hello(*helo); err != nil {
			return err
		}
	}
	if *user != "" {
		if err := c.Auth(sasl.NewPlainClient("", *user, pw)); err != nil {
			return fmt.Errorf("auth: %w", err)
		}
	}
	if err := c.Mail(*from, nil); err != nil {
		return fmt.Errorf("mail from: %w", err)
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return fmt.Errorf("rcpt to %s: %w", r, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	if _, err := io.Copy(w, bytes.NewReader(msg)); err != nil {
		return err
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return fmt.Errorf("data: %w", err)
	}
	fmt.Fprintf(stdout, "250 %s\n", resp.StatusText)
	return c.Quit()
}
