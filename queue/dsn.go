package queue

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/sluicemail/sluice/journal"
)

// maxReturnFull bounds RET=FULL: a larger original is returned as headers
// only (RFC 3461 §4.3 lets the MTA do so), keeping a bounce's memory small.
const maxReturnFull = 10 << 20

// dsnRcpt is one recipient's line group in a delivery-status report.
type dsnRcpt struct {
	Addr   string
	ORCPT  string // "rfc822;addr", as the client sent it
	Action string // failed | delayed
	Status string // 5.1.1, 4.4.7, ...
	Diag   string // "550 5.1.1 no such user" (the upstream's reply)
	Remote string // Remote-MTA when known
}

// dsn holds everything a report is built from; time and IDs are fields so
// the golden test fixes them.
type dsn struct {
	Hostname  string // Reporting-MTA
	From      string // header From: (bounce_from)
	To        string // the original envelope sender
	QueueID   string
	EnvID     string
	Arrival   time.Time
	Date      time.Time
	MessageID string // without brackets
	Boundary  string
	Rcpts     []dsnRcpt
	Original  []byte // the original message: headers only, or whole when Full
	Full      bool
}

// build returns the message: multipart/report (RFC 3462/3464) with a
// human-readable part, message/delivery-status, and the original headers
// (text/rfc822-headers) or the whole original (message/rfc822).
func (d *dsn) build() []byte {
	var b bytes.Buffer
	delayed := len(d.Rcpts) > 0 && d.Rcpts[0].Action == "delayed"
	subject := "Undelivered Mail Returned to Sender"
	if delayed {
		subject = "Delayed Mail (still being retried)"
	}
	h := func(k, v string) { fmt.Fprintf(&b, "%s: %s\r\n", k, v) }
	h("From", "Mail Delivery System <"+d.From+">")
	h("To", "<"+d.To+">")
	h("Subject", subject)
	h("Date", d.Date.Format(time.RFC1123Z))
	h("Message-ID", "<"+d.MessageID+">")
	h("Auto-Submitted", "auto-replied")
	h("MIME-Version", "1.0")
	h("Content-Type", `multipart/report; report-type=delivery-status;`+"\r\n\t"+`boundary="`+d.Boundary+`"`)
	b.WriteString("\r\nThis is a MIME-encapsulated message.\r\n\r\n")

	b.WriteString("--" + d.Boundary + "\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\nContent-Description: Notification\r\n\r\n")
	fmt.Fprintf(&b, "This is the mail system at host %s.\r\n\r\n", d.Hostname)
	if delayed {
		b.WriteString("Your message could not be delivered yet. The mail system will keep\r\n" +
			"trying; you do not need to send it again.\r\n\r\n")
	} else {
		b.WriteString("I'm sorry to have to inform you that your message could not be\r\n" +
			"delivered to one or more recipients. It's attached below.\r\n\r\n")
	}
	for _, r := range d.Rcpts {
		fmt.Fprintf(&b, "<%s>: %s\r\n", r.Addr, r.Diag)
	}
	b.WriteString("\r\n")

	b.WriteString("--" + d.Boundary + "\r\n")
	b.WriteString("Content-Type: message/delivery-status\r\nContent-Description: Delivery report\r\n\r\n")
	h("Reporting-MTA", "dns; "+d.Hostname)
	h("X-Sluice-Queue-ID", d.QueueID)
	if d.EnvID != "" {
		h("Original-Envelope-Id", d.EnvID)
	}
	h("Arrival-Date", d.Arrival.Format(time.RFC1123Z))
	for _, r := range d.Rcpts {
		b.WriteString("\r\n")
		h("Final-Recipient", "rfc822; "+r.Addr)
		if r.ORCPT != "" {
			typ, addr, ok := strings.Cut(r.ORCPT, ";")
			if ok {
				h("Original-Recipient", strings.TrimSpace(typ)+"; "+strings.TrimSpace(addr))
			}
		}
		h("Action", r.Action)
		h("Status", r.Status)
		if r.Remote != "" {
			h("Remote-MTA", "dns; "+r.Remote)
		}
		h("Diagnostic-Code", "smtp; "+oneLine(r.Diag))
		if !delayed {
			h("Last-Attempt-Date", d.Date.Format(time.RFC1123Z))
		}
	}
	b.WriteString("\r\n")

	b.WriteString("--" + d.Boundary + "\r\n")
	if d.Full {
		b.WriteString("Content-Type: message/rfc822\r\nContent-Description: Undelivered Message\r\n\r\n")
	} else {
		b.WriteString("Content-Type: text/rfc822-headers\r\nContent-Description: Undelivered Message Headers\r\n\r\n")
	}
	b.Write(d.Original)
	if !bytes.HasSuffix(d.Original, []byte("\r\n")) {
		b.WriteString("\r\n")
	}
	b.WriteString("\r\n--" + d.Boundary + "--\r\n")
	return b.Bytes()
}

// oneLine keeps a diagnostic on one header line.
func oneLine(s string) string {
	s = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
	return strings.TrimSpace(s)
}

// readOriginal returns the original's header block (up to and including the
// blank line), or the whole message when full is set and it is small enough.
func readOriginal(r io.Reader, size int64, full bool) ([]byte, bool, error) {
	if full && size <= maxReturnFull {
		b, err := io.ReadAll(r)
		return b, true, err
	}
	var out bytes.Buffer
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && (string(line) == "\r\n" || string(line) == "\n") {
			break
		}
		out.Write(line)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, false, err
		}
		if out.Len() > 1<<20 {
			break // headers this long are not worth returning in full
		}
	}
	return out.Bytes(), false, nil
}

// wantsDSN reports whether the recipient's NOTIFY asks for this kind of
// report (RFC 3461: absent means failure, and delay at the MTA's choice).
func wantsDSN(o RcptDSN, action string) bool {
	if len(o.Notify) == 0 {
		return true
	}
	for _, n := range o.Notify {
		n = strings.ToUpper(n)
		if n == "NEVER" {
			return false
		}
		if (action == "failed" && n == "FAILURE") || (action == "delayed" && n == "DELAY") {
			return true
		}
	}
	return false
}

// sendDSN builds a report for rcpts of env's message and enqueues it to the
// original sender, on the original's route. Null-sender messages (bounces
// included) get none: a failing bounce is logged and dropped.
func (q *Queue) sendDSN(e *entry, rcpts []dsnRcpt) {
	env := e.env
	var keep []dsnRcpt
	for _, r := range rcpts {
		if wantsDSN(env.RcptOpts[r.Addr], r.Action) {
			keep = append(keep, r)
		}
	}
	if len(keep) == 0 {
		return
	}
	if env.From == "" {
		q.log.Warn("queue: no report for a null-sender message; dropped", "queue_id", e.id.String(), "bounce", env.Bounce, "rcpt", keep[0].Addr)
		return
	}
	rc, size, err := q.spool.Body(e.id.String())
	if err != nil {
		q.log.Error("queue: read original for report", "queue_id", e.id.String(), "err", err)
		return
	}
	orig, full, err := readOriginal(rc, size, strings.EqualFold(env.Ret, "FULL"))
	rc.Close()
	if err != nil {
		q.log.Error("queue: read original for report", "queue_id", e.id.String(), "err", err)
		return
	}
	from := q.opts.Config.BounceFrom
	var rb [12]byte
	rand.Read(rb[:])
	now := q.now()
	d := &dsn{
		Hostname: q.opts.Hostname, From: from, To: env.From, QueueID: e.id.String(), EnvID: env.EnvID,
		Arrival: env.Received, Date: now,
		MessageID: fmt.Sprintf("%s.%s@%s", e.id.String(), hex.EncodeToString(rb[:4]), q.opts.Hostname),
		Boundary:  e.id.String() + "/" + hex.EncodeToString(rb[4:]) + "/" + q.opts.Hostname,
		Rcpts:     keep, Original: orig, Full: full,
	}
	msg := d.build()
	id, err := q.enqueueBounce(e.id.String(), env, from, msg, d.MessageID)
	if err != nil {
		q.log.Error("queue: enqueue report", "queue_id", e.id.String(), "err", err)
		return
	}
	for _, r := range keep {
		ev := q.event(e, "dsn_sent", now)
		ev.Recipient, ev.DSNQueueID = r.Addr, id
		q.journal(ev)
	}
}

// ProviderBounce is a permanent failure a provider reported after it had
// accepted the message with 250 (DESIGN §8.2): the original is no longer
// in the spool, so what the report needs comes from the index.
type ProviderBounce struct {
	QueueID   string    // the original's queue ID
	MessageID string    // the original's Message-ID, without <>
	Sender    string    // the original envelope sender: the report goes there
	Route     []string  // the original's route ("" : every upstream)
	Received  time.Time // when the original was accepted (Arrival-Date)
	Recipient string
	Status    string // the provider's x.y.z; a missing or non-5 status becomes 5.0.0
	Diag      string // the provider's diagnostic
	Remote    string // the reporting MTA, when the provider names it
	Provider  string // ses | mailgun | sendgrid | postmark
}

// BounceReported queues one RFC 3464 report for b to the original sender,
// signed and routed as the queue's own bounces are, and returns its queue
// ID. Making it once per recipient is the caller's job (a claim); the
// original's headers are gone, so the report carries its Message-ID only.
func (q *Queue) BounceReported(b ProviderBounce) (string, error) {
	if b.Sender == "" {
		return "", fmt.Errorf("queue: no report for a null-sender message (%s)", b.QueueID)
	}
	from := q.opts.Config.BounceFrom
	if from == "" {
		from = "MAILER-DAEMON@" + q.opts.Hostname
	}
	var rb [12]byte
	rand.Read(rb[:])
	d := providerDSN(b, q.opts.Hostname, from, q.now(), rb)
	env := &Envelope{From: b.Sender, Route: b.Route}
	return q.enqueueBounce(d.QueueID, env, from, d.build(), d.MessageID)
}

// providerDSN is the report for b; time and randomness come in, so the
// golden test fixes them.
func providerDSN(b ProviderBounce, hostname, from string, now time.Time, rb [12]byte) *dsn {
	status := b.Status
	if !strings.HasPrefix(status, "5.") {
		status = "5.0.0"
	}
	diag := oneLine(b.Diag)
	if diag == "" {
		diag = "permanent failure reported by " + b.Provider
	}
	arrival := b.Received
	if arrival.IsZero() {
		arrival = now
	}
	id := b.QueueID
	if id == "" {
		id = "provider"
	}
	var orig bytes.Buffer
	if b.MessageID != "" {
		fmt.Fprintf(&orig, "Message-ID: <%s>\r\n", oneLine(b.MessageID))
	}
	fmt.Fprintf(&orig, "To: <%s>\r\n", oneLine(b.Recipient))
	return &dsn{
		Hostname: hostname, From: from, To: b.Sender, QueueID: id,
		Arrival: arrival, Date: now,
		MessageID: fmt.Sprintf("%s.%s@%s", id, hex.EncodeToString(rb[:4]), hostname),
		Boundary:  id + "/" + hex.EncodeToString(rb[4:]) + "/" + hostname,
		Rcpts:     []dsnRcpt{{Addr: b.Recipient, Action: "failed", Status: status, Diag: diag, Remote: oneLine(b.Remote)}},
		Original:  orig.Bytes(),
	}
}

func (q *Queue) enqueueBounce(origID string, env *Envelope, from string, msg []byte, msgID string) (string, error) {
	var prefix []byte
	if q.opts.Sign != nil {
		domain := from[strings.LastIndexByte(from, '@')+1:]
		p, err := q.opts.Sign(domain, msg)
		if err != nil {
			q.log.Warn("queue: signing report failed; sending it unsigned", "queue_id", origID, "err", err)
		} else {
			prefix = p
		}
	}
	// No free-space check: a report must not be lost because fresh mail is
	// being refused; the min_free_space floor keeps room for exactly this.
	dr, err := q.beginUnchecked()
	if err != nil {
		return "", err
	}
	if _, err := dr.Write(msg); err != nil {
		dr.Abort()
		return "", err
	}
	benv := &Envelope{MessageID: msgID, From: "", To: []string{env.From}, Route: slices.Clone(env.Route), Received: q.now(), Bounce: true}
	if err := dr.Commit(benv, prefix); err != nil {
		return "", err
	}
	q.log.Info("queue: report queued", "queue_id", dr.ID, "original", origID, "rcpt", env.From)
	// The report is a message of its own: traceable by its recipient.
	q.journal(journal.Event{Time: benv.Received, Event: journal.Accepted, QueueID: dr.ID, MessageID: msgID,
		Recipients: benv.To, Size: int64(len(prefix) + len(msg)), Route: benv.Route})
	return dr.ID, nil
}
