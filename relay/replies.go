package relay

import (
	"fmt"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/sluicemail/sluice/suppress"
)

// Every reply a client can see from Sluice's own decisions, one named value
// each (DESIGN §4). go-smtp type-asserts *smtp.SMTPError without errors.As and
// turns any other error into a permanent 554 (Data) or 451 (Mail, Rcpt)
// carrying internal text, so session methods return only these values.
// Client text is generic; the detail goes to the log.
func reply(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

var (
	ReplyAuthRequired      = reply(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required")
	ReplyStartTLSFirst     = reply(530, smtp.EnhancedCode{5, 7, 0}, "Must issue a STARTTLS command first")
	ReplyAuthFailed        = reply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid")
	ReplyAuthBlocked       = reply(421, smtp.EnhancedCode{4, 7, 0}, "Too many failed authentications from your address, try again later")
	ReplyAuthMalformed     = reply(501, smtp.EnhancedCode{5, 5, 2}, "Malformed authentication data")
	ReplyAuthMechanism     = reply(504, smtp.EnhancedCode{5, 7, 4}, "Unrecognized authentication mechanism")
	ReplyAuthInTransaction = reply(503, smtp.EnhancedCode{5, 5, 1}, "AUTH not permitted during a mail transaction")
	ReplyAuthNotOffered    = reply(502, smtp.EnhancedCode{5, 5, 1}, "AUTH not offered on this listener without TLS")
	ReplyNotTrusted        = reply(554, smtp.EnhancedCode{5, 7, 1}, "Access denied: your address may not relay through this listener")
	ReplyRequireTLS        = reply(530, smtp.EnhancedCode{5, 7, 10}, "REQUIRETLS needs a TLS connection")
	ReplyRequireTLSRoute   = reply(550, smtp.EnhancedCode{5, 7, 10}, "REQUIRETLS: no upstream for this message delivers over TLS only")
	ReplyBareCR            = reply(554, smtp.EnhancedCode{5, 6, 0}, "Message contains a bare CR or a NUL byte; lines must end with CRLF")
	ReplySenderDenied      = reply(550, smtp.EnhancedCode{5, 7, 1}, "Sender address not allowed for this user")
	ReplyHeaderFromDenied  = reply(550, smtp.EnhancedCode{5, 7, 1}, "Header From: address not allowed for this user")
	ReplyRecipientDenied   = reply(550, smtp.EnhancedCode{5, 7, 1}, "Recipient address not allowed")
	ReplyTooManyRcpts      = reply(452, smtp.EnhancedCode{4, 5, 3}, "Too many recipients")
	ReplyTooLarge          = reply(552, smtp.EnhancedCode{5, 3, 4}, "Message size exceeds the limit")
	ReplyHeaderTooLarge    = reply(552, smtp.EnhancedCode{5, 3, 4}, "Header section too large (at most 100 KiB a field, 1 MiB in all)")
	ReplyBadHeaderLine     = reply(554, smtp.EnhancedCode{5, 6, 0}, "Malformed header: a line without a colon among the fields, or a line over 998 bytes with no space to fold at")
	ReplyHeloTooLong       = reply(501, smtp.EnhancedCode{5, 5, 2}, "EHLO name too long (at most 255 bytes)")
	ReplyDKIMRequired      = reply(550, smtp.EnhancedCode{5, 7, 1}, "No DKIM key for the header From: domain and this policy requires signing")
	ReplyRateUnavailable   = reply(451, smtp.EnhancedCode{4, 7, 1}, "Rate limit service unavailable, try again later")
	ReplySpoolFailed       = reply(451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem, message not accepted; try again later")
	ReplyTimeout           = reply(451, smtp.EnhancedCode{4, 4, 2}, "Timeout while receiving the message; not accepted")
	ReplyTooManyConns      = reply(421, smtp.EnhancedCode{4, 7, 0}, "Too many connections, try again later")
	ReplyNoPolicy          = reply(451, smtp.EnhancedCode{4, 3, 0}, "No policy configured for this client")
	ReplyBadSender         = reply(553, smtp.EnhancedCode{5, 1, 7}, "Malformed sender address")
	ReplyBadRecipient      = reply(553, smtp.EnhancedCode{5, 1, 3}, "Malformed recipient address")
	ReplyRecipientRouting  = reply(553, smtp.EnhancedCode{5, 1, 3}, "Recipient local part with % or ! (source routing) not allowed")
	ReplyNeedsSMTPUTF8     = reply(553, smtp.EnhancedCode{5, 6, 7}, "UTF-8 address without the SMTPUTF8 parameter on MAIL")
)

// replyRateLimited is the per-user rate reply (450 4.7.1), naming how long to wait.
func replyRateLimited(wait time.Duration) *smtp.SMTPError {
	s := int(wait.Round(time.Second) / time.Second)
	if s < 1 {
		s = 1
	}
	return reply(450, smtp.EnhancedCode{4, 7, 1}, fmt.Sprintf("Rate limit exceeded, try again in %d seconds", s))
}

// replyQueued is the 250 to the end of DATA. The text is fixed by DESIGN §7.
func replyQueued(id string) *smtp.SMTPError {
	return reply(250, smtp.EnhancedCode{2, 0, 0}, "OK queued as "+id)
}

// replySuppressed refuses a recipient on the suppression list (DESIGN §8.2):
// "550 5.1.1 <ADDR>: suppressed after a hard bounce on DATE".
func replySuppressed(addr string, e suppress.Entry) *smtp.SMTPError {
	return reply(550, smtp.EnhancedCode{5, 1, 1}, "<"+addr+">: "+e.Describe())
}
