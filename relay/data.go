package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/journal"
	"github.com/sluicemail/sluice/queue"
	"github.com/sluicemail/sluice/signing"
)

// Data runs the DATA pipeline: line endings, header checks and edits,
// Received:, DKIM (once, here, so retries resend identical bytes), the
// spool, and only then 250. Headers are held in memory (bounded); the body
// streams from the client to the spool file and the signer.
func (s *session) Data(r io.Reader) error {
	// Data owns a copy of the transaction (and its rate token): a Reset
	// from the connection goroutine during BDAT cannot change it under us.
	s.mu.Lock()
	tx := s.tx
	s.tx.reserve = nil
	s.mu.Unlock()
	if tx.pol == nil {
		return ReplyAuthRequired
	}
	accepted := false
	defer func() {
		if !accepted && tx.reserve != nil {
			tx.reserve.Cancel()
		}
	}()
	pol := tx.pol
	bufs := dataBufPool.Get().(*dataBufs)
	defer dataBufPool.Put(bufs)
	cr := &bufs.cr
	*cr = crlfReader{r: r, in: bufs.cr.in, out: bufs.cr.out[:0]}
	br := bufs.br
	br.Reset(cr)

	// Whether or not the client sent the blank line, one is written
	// between the header section and the body.
	fields, _, first, err := readHeader(br)
	if err != nil {
		return s.dataError(err)
	}

	// Masquerade (DESIGN §8.5): From:, Sender: and Return-Path: are
	// rewritten before they are checked and signed; the original From: is
	// kept for the journal only.
	fields, origHeaderFrom, err := masquerade(fields, pol, s.user)
	if err != nil {
		s.reject("header_from", "data", "malformed")
		return ReplyHeaderFromDenied
	}

	// The header From: must be one the user may send as (DESIGN §7); a
	// message without one gets the envelope sender, as submission servers do.
	from, present, perr := addresses(fields, "From")
	if perr != nil || (present && len(from) == 0) {
		s.reject("header_from", "data", "malformed")
		return ReplyHeaderFromDenied
	}
	var added []string
	if !present && tx.from != "" {
		from = []string{tx.from}
		added = append(added, "From: <"+tx.from+">\r\n")
	}
	// Sender: and the Resent- fields name who sends just as From: does
	// (a resent message shows Resent-From: as its author), so each must be
	// one the user may send as.
	senders := append([]string(nil), from...)
	for _, name := range []string{"Sender", "Resent-From", "Resent-Sender"} {
		addrs, _, perr := addresses(fields, name)
		if perr != nil {
			s.reject("header_from", "data", "malformed "+strings.ToLower(name))
			return ReplyHeaderFromDenied
		}
		senders = append(senders, addrs...)
	}
	if d := pol.CheckHeaderFrom(s.user, senders); d != nil {
		return s.deny(d, "data", strings.Join(senders, ","))
	}

	domain := ""
	if len(from) > 0 {
		domain = domainOf(from[0])
	}
	// Recipient routes may split the message (DESIGN §8.5): one draft and
	// queue ID per route group, the same bytes written to each, signed once
	// for the strictest profile of all the groups. The first group (that of
	// the first recipient) is the primary: its ID is in the 250 reply, the
	// Received: field and a generated Message-ID of every copy.
	groups, profile := s.st.policy.Split(pol, s.user, domainOf(tx.from), tx.rcpts)
	requireTLS := tx.mailOpts != nil && tx.mailOpts.RequireTLS
	needsUTF8 := needsSMTPUTF8(tx, fields)
	for _, g := range groups {
		if requireTLS && len(g.TLSOnly) == 0 {
			s.reject("requiretls", "data", strings.Join(g.Upstreams, ","))
			return ReplyRequireTLSRoute
		}
	}
	drafts := make([]*queue.Draft, len(groups))
	writers := make([]io.Writer, 0, len(groups)+1)
	for i := range groups {
		d, err := s.srv.queue.Begin()
		if err != nil {
			s.log.Error("rejected", "reason", "spool", "err", err)
			mRejected.Inc("spool")
			return ReplySpoolFailed
		}
		defer d.Abort()
		drafts[i] = d
		writers = append(writers, d)
	}
	draft := drafts[0]
	log := s.log.With("queue_id", draft.ID)

	now := s.srv.now()
	if !has(fields, "Date") {
		added = append(added, "Date: "+now.Format(time.RFC1123Z)+"\r\n")
	}
	msgID := headerValue(fields, "Message-ID")
	if !has(fields, "Message-ID") {
		msgID = draft.ID + "@" + s.st.cfg.Hostname
		added = append(added, fmt.Sprintf("Message-ID: <%s>\r\n", msgID))
	}

	var signer *signing.Signer
	if s.st.keys != nil {
		signer, err = s.st.keys.NewSigner(domain, profile)
		if err != nil {
			log.Error("rejected", "reason", "dkim", "err", err)
			return ReplySpoolFailed
		}
	}
	if signer == nil && pol.RequireDKIM {
		s.reject("dkim", "data", domain)
		return ReplyDKIMRequired
	}

	if signer != nil {
		writers = append(writers, signer)
	}
	w := writers[0]
	if len(writers) > 1 {
		w = io.MultiWriter(writers...)
	}
	bw := bufs.bw
	bw.Reset(w)
	defer bw.Reset(nil)
	bw.WriteString(s.received(draft.ID, now, tx.rcpts))
	for _, f := range fields {
		if removed(pol.RemoveHeaders, f.name) || (!pol.KeepBcc && isBcc(f.name)) {
			continue
		}
		bw.Write(f.raw)
	}
	for _, a := range added {
		bw.WriteString(a)
	}
	bw.WriteString("\r\n")
	// Body lines longer than 998 bytes are folded (docs/configuration.md
	// "Limits"), before signing, so the signature covers what is sent.
	fold := &lineFolder{w: bw}
	var last byte = '\n' // an empty body needs no extra line end
	if len(first) > 0 {
		fold.Write(first)
		last = first[len(first)-1]
	}
	last, err = copyBody(fold, br, bufs.copy, last, func() bool { return cr.n > pol.MaxMessageSize })
	if err == nil && last != '\n' {
		_, err = fold.Write([]byte("\r\n"))
	}
	if err == nil {
		err = fold.flushHold() // only after an error-free body, for safety
	}
	if err != nil {
		return s.dataError(err)
	}
	endOfData := time.Now() // the client's final dot has been read
	if err := bw.Flush(); err != nil {
		return s.dataError(&writeError{err})
	}
	var prefix []byte
	if signer != nil {
		if err := signer.Close(); err != nil {
			log.Error("rejected", "reason", "dkim", "err", err)
			return ReplySpoolFailed
		}
		prefix = signer.Header()
	}

	msgIDNorm := journal.NormalizeMessageID(msgID)
	subject := ""
	if s.srv.journal != nil {
		subject = decodeSubject(headerValue(fields, "Subject"))
	}
	var selectors []string
	if signer != nil {
		selectors = signer.Selectors()
	}
	for i, g := range groups {
		d := drafts[i]
		env := &queue.Envelope{
			ID:         d.ID,
			MessageID:  msgIDNorm,
			From:       tx.from,
			To:         slices.Clone(g.Recipients),
			User:       s.user,
			Client:     s.ip,
			Route:      g.Upstreams,
			Received:   now,
			RequireTLS: requireTLS,
			SMTPUTF8:   needsUTF8,
		}
		setDSN(env, tx.mailOpts, tx.rcpts, tx.rcptOpts)
		// A later copy failing leaves the earlier ones committed: the
		// client's retry may then duplicate them, which loses nothing.
		if err := d.Commit(env, prefix); err != nil {
			log.Error("rejected", "reason", "spool", "err", err, "committed", i)
			mRejected.Inc("spool")
			return ReplySpoolFailed
		}
		if i == 0 {
			accepted = true // the message counts against the rate, once
			mAccepted.Inc()
		}
		if s.srv.journal != nil {
			s.srv.journal.Append(journal.Event{Time: now, Event: journal.Accepted, QueueID: d.ID, MessageID: msgIDNorm, Sender: tx.from,
				User: s.user, IP: s.ip, Listener: s.l.cfg.Name, Recipients: env.To, Size: cr.n, DKIM: selectors, Route: g.Upstreams,
				Subject: subject, OriginalSender: tx.origFrom, OriginalFrom: origHeaderFrom}) // one write(2): it survives kill -9 once the 250 is sent
		}
		s.log.Info("accepted", "queue_id", d.ID, "from", tx.from, "rcpts", len(env.To), "size", cr.n, "signed", signer != nil, "route", strings.Join(g.Upstreams, ","), "folded_lines", fold.folds)
	}
	mAcceptSecs.Observe(time.Since(endOfData).Seconds())
	return replyQueued(draft.ID)
}

// dataBufs are the buffers of one DATA, pooled: allocating and zeroing
// ~200 KiB per message showed up as a tenth of the CPU under load.
type dataBufs struct {
	cr   crlfReader
	br   *bufio.Reader
	bw   *bufio.Writer
	copy []byte
}

var dataBufPool = sync.Pool{New: func() any {
	return &dataBufs{
		cr:   crlfReader{in: make([]byte, 32<<10), out: make([]byte, 0, 64<<10)},
		br:   bufio.NewReaderSize(nil, 64<<10),
		bw:   bufio.NewWriterSize(nil, 32<<10),
		copy: make([]byte, 32<<10),
	}
}}

// writeError marks a failure of the spool side, as opposed to the client.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }

// errTooLarge: the message exceeds the user's max_message_size.
var errTooLarge = errors.New("relay: message exceeds the policy's size limit")

// copyBody copies the body and returns the last byte written; it stops as
// soon as tooLarge says the user's limit is passed, so a message over the
// limit never fills the spool.
func copyBody(w io.Writer, r *bufio.Reader, buf []byte, last byte, tooLarge func() bool) (byte, error) {
	for {
		n, err := r.Read(buf)
		if tooLarge() {
			return last, errTooLarge
		}
		if n > 0 {
			last = buf[n-1]
			if _, werr := w.Write(buf[:n]); werr != nil {
				return last, &writeError{werr}
			}
		}
		if err == io.EOF {
			return last, nil
		}
		if err != nil {
			return last, err
		}
	}
}

// dataError maps a failure while reading or storing DATA to its reply.
func (s *session) dataError(err error) error {
	var we *writeError
	var ne net.Error
	switch {
	case errors.Is(err, errBareCR):
		s.reject("bare_cr", "data", "")
		return ReplyBareCR
	case errors.Is(err, errHeaderTooLarge):
		s.reject("header_size", "data", "")
		return ReplyHeaderTooLarge
	case errors.Is(err, errHeaderLine):
		s.reject("header_line", "data", "")
		return ReplyBadHeaderLine
	case errors.Is(err, smtp.ErrDataTooLarge), errors.Is(err, errTooLarge):
		s.reject("size", "data", "")
		return ReplyTooLarge
	case errors.As(err, &we):
		s.log.Error("rejected", "reason", "spool", "err", err)
		mRejected.Inc("spool")
		return ReplySpoolFailed
	case errors.As(err, &ne) && ne.Timeout():
		s.reject("timeout", "data", "")
		return ReplyTimeout
	}
	s.log.Info("rejected", "reason", "data_read", "err", err)
	mRejected.Inc("data_read")
	return ReplyTimeout
}

// isBcc: blind-copy fields, removed before signing unless the policy keeps
// them (clients such as curl, swaks and smtplib leave them in; Postfix drops
// them too, message_drop_headers).
func isBcc(name string) bool {
	return strings.EqualFold(name, "Bcc") || strings.EqualFold(name, "Resent-Bcc")
}

// lineFolder writes the body, breaking a line longer than maxLineBytes
// (RFC 5321: 998 bytes before CRLF) with a CRLF, as Postfix's
// smtp_line_length_limit does; the break goes before the UTF-8 character
// that would cross the limit, so no character is split. The last three
// bytes before the limit are held until it is known whether the line ends
// or crosses it. Its input is CRLF-normalised, so a CR comes only before an
// LF; the final CRLF must be written through it too.
type lineFolder struct {
	w     io.Writer
	col   int // bytes on the current line, CR and LF not counted
	hold  []byte
	folds int
}

const holdFrom = maxLineBytes - 3 // a UTF-8 character has at most 4 bytes

func (f *lineFolder) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if c := p[0]; c == '\r' || c == '\n' {
			if err := f.flushHold(); err != nil {
				return 0, err
			}
			if _, err := f.w.Write(p[:1]); err != nil {
				return 0, err
			}
			if c == '\n' {
				f.col = 0
			}
			p = p[1:]
			continue
		}
		if f.col < holdFrom { // a run that stays below the held bytes
			k := bytes.IndexByte(p, '\r')
			if k < 0 {
				k = len(p)
			}
			k = min(k, holdFrom-f.col)
			if _, err := f.w.Write(p[:k]); err != nil {
				return 0, err
			}
			f.col += k
			p = p[k:]
			continue
		}
		if f.col < maxLineBytes {
			f.hold = append(f.hold, p[0])
			f.col++
			p = p[1:]
			continue
		}
		// p[0] is byte 999 of the line: break before the character it
		// belongs to (or before it, when the held bytes are no character).
		seq := append(f.hold, p[0])
		x := len(seq) - 1
		for x > 0 && seq[x]&0xC0 == 0x80 {
			x--
		}
		if x == 0 && seq[0]&0xC0 == 0x80 {
			x = len(seq) - 1
		}
		if _, err := f.w.Write(seq[:x]); err != nil {
			return 0, err
		}
		if _, err := f.w.Write([]byte("\r\n")); err != nil {
			return 0, err
		}
		if _, err := f.w.Write(seq[x:]); err != nil {
			return 0, err
		}
		f.folds++
		f.col = len(seq) - x
		f.hold = f.hold[:0]
		p = p[1:]
	}
	return n, nil
}

func (f *lineFolder) flushHold() error {
	if len(f.hold) == 0 {
		return nil
	}
	_, err := f.w.Write(f.hold)
	f.hold = f.hold[:0]
	return err
}

func removed(list []string, name string) bool {
	for _, h := range list {
		if strings.EqualFold(h, name) {
			return true
		}
	}
	return false
}

// received builds the trace field this relay adds (RFC 5321 §4.4).
func (s *session) received(id string, now time.Time, rcpts []string) string {
	with := "ESMTP"
	if s.tls {
		with += "S"
	}
	if s.user != "" {
		with += "A"
	}
	helo := sanitize(s.conn.Hostname())
	if len(helo) > maxHeloBytes { // a later EHLO (the first is refused)
		helo = helo[:maxHeloBytes] + "..."
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Received: from %s ([%s])\r\n\tby %s (Sluice) with %s id %s", helo, s.ip, s.st.cfg.Hostname, with, id)
	if st, ok := s.conn.TLSConnectionState(); ok {
		fmt.Fprintf(&b, "\r\n\t(version=%s cipher=%s)", tlsVersion(st), tlsCipher(st))
	}
	if len(rcpts) == 1 {
		fmt.Fprintf(&b, "\r\n\tfor <%s>", sanitize(rcpts[0]))
	}
	fmt.Fprintf(&b, ";\r\n\t%s\r\n", now.Format(time.RFC1123Z))
	return b.String()
}

// sanitize keeps client-supplied text from breaking the header.
func sanitize(v string) string {
	return strings.Map(func(r rune) rune {
		if r < 33 || r > 126 || r == '(' || r == ')' || r == ';' {
			return '_'
		}
		return r
	}, v)
}

func setDSN(env *queue.Envelope, mo *smtp.MailOptions, rcpts []string, ro []*smtp.RcptOptions) {
	if mo != nil {
		env.Ret = string(mo.Return)
		env.EnvID = mo.EnvelopeID
	}
	split := len(env.To) != len(rcpts) // a route group: only its recipients
	for i, o := range ro {
		if o == nil || (len(o.Notify) == 0 && o.OriginalRecipient == "") || (split && !slices.Contains(env.To, rcpts[i])) {
			continue
		}
		if env.RcptOpts == nil {
			env.RcptOpts = map[string]queue.RcptDSN{}
		}
		d := queue.RcptDSN{}
		for _, n := range o.Notify {
			d.Notify = append(d.Notify, string(n))
		}
		if o.OriginalRecipient != "" {
			d.ORCPT = string(o.OriginalRecipientType) + ";" + o.OriginalRecipient
		}
		env.RcptOpts[rcpts[i]] = d
	}
}

// needsSMTPUTF8 reports whether the message can only go to an upstream that
// offers SMTPUTF8 (DESIGN §8.5): a UTF-8 address in the envelope, or UTF-8
// in the header section of a message the client declared SMTPUTF8 (Postfix
// sends a raw UTF-8 Subject: so). Without the declaration, 8-bit header
// bytes are the client's own business, passed on as before.
func needsSMTPUTF8(tx txn, fields []field) bool {
	if tx.mailOpts == nil || !tx.mailOpts.UTF8 {
		return false // Mail and Rcpt refused UTF-8 addresses without it
	}
	if !isASCII(tx.from) {
		return true
	}
	for _, r := range tx.rcpts {
		if !isASCII(r) {
			return true
		}
	}
	for _, f := range fields {
		for _, b := range f.raw {
			if b >= 0x80 {
				return true
			}
		}
	}
	return false
}
