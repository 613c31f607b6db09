package hooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Kinds of provider events Sluice acts on (DESIGN §8.1 provider_event).
const (
	KindBounce    = "bounce"    // a permanent (hard) bounce
	KindComplaint = "complaint" // a spam complaint
	KindDelivery  = "delivery"  // accepted by the receiving server
)

// Event is one recipient's report from a provider, in the provider's
// words. Soft bounces, opens, clicks and the like are not Events: the
// parsers skip them.
type Event struct {
	Provider  string
	Kind      string
	Recipient string
	// HeaderIDs are the original Message-ID header values the payload
	// carries; ProviderIDs the provider's own message IDs (tried too: an
	// index fed with them would match).
	HeaderIDs   []string
	ProviderIDs []string
	Status      string // x.y.z, "" when the provider gives none
	Diag        string // the provider's diagnostic
	Remote      string // the reporting MTA
}

// ErrMalformed marks a body that is not the provider's JSON: 400.
var ErrMalformed = errors.New("hooks: malformed payload")

// ErrSignature marks a Mailgun event whose signature does not verify: 401.
var ErrSignature = errors.New("hooks: bad signature")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
}

var statusRE = regexp.MustCompile(`\b([245])\.(\d{1,3})\.(\d{1,3})\b`)

// statusIn finds an enhanced status code in a provider's text ("smtp; 550
// 5.1.1 unknown user" → "5.1.1").
func statusIn(texts ...string) string {
	for _, t := range texts {
		if m := statusRE.FindString(t); m != "" {
			return m
		}
	}
	return ""
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// --- Amazon SES through SNS ---

// snsEnvelope is an SNS HTTP(S) delivery: a Notification whose Message is
// the SES event as a JSON string, or a SubscriptionConfirmation.
type snsEnvelope struct {
	Type         string `json:"Type"`
	MessageID    string `json:"MessageId"`
	TopicArn     string `json:"TopicArn"`
	Message      string `json:"Message"`
	SubscribeURL string `json:"SubscribeURL"`
}

type sesEvent struct {
	NotificationType string `json:"notificationType"`
	EventType        string `json:"eventType"` // event publishing names it so
	Mail             struct {
		MessageID     string `json:"messageId"`
		Source        string `json:"source"`
		CommonHeaders struct {
			MessageID string `json:"messageId"`
		} `json:"commonHeaders"`
		Headers []struct {
			Name  string `json:"name"`
			Value string `json:"value"`
		} `json:"headers"`
	} `json:"mail"`
	Bounce *struct {
		BounceType        string `json:"bounceType"`
		ReportingMTA      string `json:"reportingMTA"`
		BouncedRecipients []struct {
			EmailAddress   string `json:"emailAddress"`
			Status         string `json:"status"`
			DiagnosticCode string `json:"diagnosticCode"`
		} `json:"bouncedRecipients"`
	} `json:"bounce"`
	Complaint *struct {
		ComplainedRecipients []struct {
			EmailAddress string `json:"emailAddress"`
		} `json:"complainedRecipients"`
		ComplaintFeedbackType string `json:"complaintFeedbackType"`
	} `json:"complaint"`
	Delivery *struct {
		Recipients   []string `json:"recipients"`
		SMTPResponse string   `json:"smtpResponse"`
		ReportingMTA string   `json:"reportingMTA"`
	} `json:"delivery"`
}

// SubscriptionConfirmation is an SNS subscription request: logged with its
// URL for the administrator, never fetched.
type SubscriptionConfirmation struct {
	TopicArn     string
	SubscribeURL string
}

// ParseSES reads an SNS delivery (or, with raw message delivery, the SES
// event itself).
func ParseSES(body []byte) ([]Event, *SubscriptionConfirmation, error) {
	var env snsEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, nil, malformed("ses: %v", err)
	}
	msg := body
	switch env.Type {
	case "SubscriptionConfirmation", "UnsubscribeConfirmation":
		return nil, &SubscriptionConfirmation{TopicArn: env.TopicArn, SubscribeURL: env.SubscribeURL}, nil
	case "Notification":
		msg = []byte(env.Message)
	case "":
		// raw message delivery: the body is the SES event
	default:
		return nil, nil, malformed("ses: unknown SNS message type %q", env.Type)
	}
	var ev sesEvent
	if err := json.Unmarshal(msg, &ev); err != nil {
		return nil, nil, malformed("ses: Message: %v", err)
	}
	typ := ev.NotificationType
	if typ == "" {
		typ = ev.EventType
	}
	if typ == "" {
		return nil, nil, malformed("ses: neither notificationType nor eventType")
	}
	hdrIDs := nonEmpty(ev.Mail.CommonHeaders.MessageID)
	for _, h := range ev.Mail.Headers {
		if strings.EqualFold(h.Name, "Message-ID") {
			hdrIDs = append(hdrIDs, nonEmpty(h.Value)...)
		}
	}
	base := Event{Provider: "ses", HeaderIDs: hdrIDs, ProviderIDs: nonEmpty(ev.Mail.MessageID)}
	var out []Event
	switch typ {
	case "Bounce":
		if ev.Bounce == nil {
			return nil, nil, malformed("ses: Bounce without bounce")
		}
		if ev.Bounce.BounceType != "Permanent" {
			return nil, nil, nil // Transient or Undetermined: SES retries or gave up for reasons not about the address
		}
		for _, r := range ev.Bounce.BouncedRecipients {
			e := base
			e.Kind, e.Recipient, e.Remote = KindBounce, r.EmailAddress, strings.TrimPrefix(ev.Bounce.ReportingMTA, "dns; ")
			e.Diag = strings.TrimSpace(strings.TrimPrefix(r.DiagnosticCode, "smtp;"))
			e.Status = r.Status
			if e.Status == "" {
				e.Status = statusIn(r.DiagnosticCode)
			}
			out = append(out, e)
		}
	case "Complaint":
		if ev.Complaint == nil {
			return nil, nil, malformed("ses: Complaint without complaint")
		}
		diag := "complaint"
		if ev.Complaint.ComplaintFeedbackType != "" {
			diag += " (" + ev.Complaint.ComplaintFeedbackType + ")"
		}
		for _, r := range ev.Complaint.ComplainedRecipients {
			e := base
			e.Kind, e.Recipient, e.Diag = KindComplaint, r.EmailAddress, diag
			out = append(out, e)
		}
	case "Delivery":
		if ev.Delivery == nil {
			return nil, nil, malformed("ses: Delivery without delivery")
		}
		for _, r := range ev.Delivery.Recipients {
			e := base
			e.Kind, e.Recipient, e.Diag, e.Remote = KindDelivery, r, ev.Delivery.SMTPResponse, ev.Delivery.ReportingMTA
			out = append(out, e)
		}
	}
	return out, nil, nil
}

// --- Mailgun ---

type mailgunBody struct {
	Signature *struct {
		Timestamp string `json:"timestamp"`
		Token     string `json:"token"`
		Signature string `json:"signature"`
	} `json:"signature"`
	EventData *struct {
		Event     string `json:"event"`
		Severity  string `json:"severity"`
		Reason    string `json:"reason"`
		Recipient string `json:"recipient"`
		Message   struct {
			Headers struct {
				MessageID string `json:"message-id"`
			} `json:"headers"`
		} `json:"message"`
		DeliveryStatus struct {
			Code         json.RawMessage `json:"code"` // a number, at times a string
			Message      string          `json:"message"`
			Description  string          `json:"description"`
			EnhancedCode string          `json:"enhanced-code"`
			MXHost       string          `json:"mx-host"`
		} `json:"delivery-status"`
	} `json:"event-data"`
}

// ParseMailgun reads one webhook event; with key set its signature (the
// HMAC-SHA256 of timestamp+token, hex) must verify.
func ParseMailgun(body []byte, key string) ([]Event, error) {
	var b mailgunBody
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, malformed("mailgun: %v", err)
	}
	if key != "" {
		if b.Signature == nil {
			return nil, fmt.Errorf("%w: mailgun: no signature", ErrSignature)
		}
		mac := hmac.New(sha256.New, []byte(key))
		mac.Write([]byte(b.Signature.Timestamp + b.Signature.Token))
		want := mac.Sum(nil)
		got, err := hex.DecodeString(b.Signature.Signature)
		if err != nil || !hmac.Equal(got, want) {
			return nil, fmt.Errorf("%w: mailgun", ErrSignature)
		}
	}
	d := b.EventData
	if d == nil {
		return nil, malformed("mailgun: no event-data")
	}
	e := Event{Provider: "mailgun", Recipient: d.Recipient, HeaderIDs: nonEmpty(d.Message.Headers.MessageID)}
	switch d.Event {
	case "failed":
		if d.Severity != "permanent" {
			return nil, nil
		}
		e.Kind = KindBounce
		code := strings.Trim(string(d.DeliveryStatus.Code), `"`)
		if _, err := strconv.Atoi(code); err != nil {
			code = ""
		}
		e.Diag = strings.TrimSpace(strings.Join(nonEmpty(code, d.DeliveryStatus.Message, d.DeliveryStatus.Description), " "))
		if e.Diag == "" {
			e.Diag = d.Reason
		}
		e.Status = statusIn(d.DeliveryStatus.EnhancedCode, d.DeliveryStatus.Message, d.DeliveryStatus.Description)
		e.Remote = d.DeliveryStatus.MXHost
	case "complained":
		e.Kind, e.Diag = KindComplaint, "complaint"
	case "delivered":
		e.Kind = KindDelivery
		e.Diag = strings.TrimSpace(strings.Trim(string(d.DeliveryStatus.Code), `"`) + " " + d.DeliveryStatus.Message)
		e.Remote = d.DeliveryStatus.MXHost
	default:
		return nil, nil
	}
	return []Event{e}, nil
}

// --- SendGrid ---

type sendgridEvent struct {
	Email       string `json:"email"`
	Event       string `json:"event"`
	SMTPID      string `json:"smtp-id"`
	SGMessageID string `json:"sg_message_id"`
	Reason      string `json:"reason"`
	Status      string `json:"status"`
	Type        string `json:"type"` // bounce: "bounce" or "blocked"
	Response    string `json:"response"`
}

// ParseSendGrid reads the Event Webhook's array of events.
func ParseSendGrid(body []byte) ([]Event, error) {
	var evs []sendgridEvent
	if err := json.Unmarshal(body, &evs); err != nil {
		return nil, malformed("sendgrid: %v", err)
	}
	var out []Event
	for _, s := range evs {
		// sg_message_id is "<id>.filter…": its first part is the ID SendGrid
		// answered the submission with.
		pid, _, _ := strings.Cut(s.SGMessageID, ".filter")
		e := Event{Provider: "sendgrid", Recipient: s.Email, HeaderIDs: nonEmpty(s.SMTPID), ProviderIDs: nonEmpty(pid)}
		switch s.Event {
		case "bounce":
			if s.Type == "blocked" {
				continue // refused for the sender's reputation or content, not the address
			}
			e.Kind, e.Diag = KindBounce, s.Reason
			e.Status = s.Status
			if !statusRE.MatchString(e.Status) {
				e.Status = statusIn(s.Reason)
			}
		case "dropped":
			// SendGrid did not send: its own lists already hold the address,
			// or the address is not one. Only those reasons are about the
			// recipient; "Invalid SMTPAPI header", "Spam Content",
			// unsubscribes and the like are the sender's business, and must
			// not suppress the address.
			switch s.Reason {
			case "Spam Reporting Address":
				e.Kind = KindComplaint
			case "Bounced Address":
				e.Kind, e.Status = KindBounce, "5.1.1" // it bounced before: no such mailbox
			case "Invalid":
				e.Kind, e.Status = KindBounce, "5.1.3" // not a valid address
			default:
				continue
			}
			e.Diag = "dropped by SendGrid: " + s.Reason
		case "spamreport":
			e.Kind, e.Diag = KindComplaint, "complaint"
		case "delivered":
			e.Kind, e.Diag = KindDelivery, s.Response
		default:
			continue
		}
		out = append(out, e)
	}
	return out, nil
}

// --- Postmark ---

type postmarkEvent struct {
	RecordType  string `json:"RecordType"`
	Type        string `json:"Type"`
	MessageID   string `json:"MessageID"`
	Email       string `json:"Email"`
	Recipient   string `json:"Recipient"` // Delivery
	Details     string `json:"Details"`
	Description string `json:"Description"`
}

// ParsePostmark reads one Bounce, SpamComplaint or Delivery webhook.
func ParsePostmark(body []byte) ([]Event, error) {
	var p postmarkEvent
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, malformed("postmark: %v", err)
	}
	if p.RecordType == "" {
		return nil, malformed("postmark: no RecordType")
	}
	e := Event{Provider: "postmark", Recipient: p.Email, ProviderIDs: nonEmpty(p.MessageID)}
	switch p.RecordType {
	case "Bounce":
		// Only the kinds that say the address is bad; soft bounces,
		// auto-replies, DNS errors and the like are not.
		if p.Type != "HardBounce" && p.Type != "BadEmailAddress" {
			return nil, nil
		}
		e.Kind = KindBounce
		e.Diag = strings.TrimSpace(strings.Join(nonEmpty(p.Details, p.Description), "; "))
		e.Status = statusIn(p.Details, p.Description)
	case "SpamComplaint":
		e.Kind, e.Diag = KindComplaint, "complaint"
	case "Delivery":
		e.Kind, e.Recipient, e.Diag = KindDelivery, p.Recipient, p.Details
	default:
		return nil, nil
	}
	return []Event{e}, nil
}
