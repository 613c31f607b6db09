package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/textproto"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/testsmtp"
)

// TestClassify: at RCPT the reply names one recipient, so quota text alone
// does not throttle the upstream there; the throttling codes still do.
func TestClassify(t *testing.T) {
	t.Parallel()
	type reply struct {
		code  int
		enh   [3]int
		text  string
		class Class
		want  [3]int
	}
	for stage, replies := range map[Stage][]reply{
		StageMail: {
			{454, [3]int{}, "Throttling failure: Maximum sending rate exceeded.", Throttled, [3]int{4, 0, 0}},
			{454, [3]int{4, 7, 0}, "Throttling failure: Daily message quota exceeded.", Throttled, [3]int{4, 7, 0}},
			{421, [3]int{4, 4, 5}, "Too busy", Throttled, [3]int{4, 4, 5}},
			{421, [3]int{}, "Service not available", Throttled, [3]int{4, 0, 0}},
			{451, [3]int{4, 7, 1}, "Try again later", Throttled, [3]int{4, 7, 1}},
			{451, [3]int{4, 3, 0}, "Local error in processing", Temporary, [3]int{4, 3, 0}},
			{451, [3]int{}, "Temporary local problem", Temporary, [3]int{4, 0, 0}},
			{554, [3]int{5, 7, 0}, "Sending quota exceeded", Throttled, [3]int{5, 7, 0}},
			{550, [3]int{5, 7, 1}, "Daily user sending quota exceeded.", Throttled, [3]int{5, 7, 1}},
			{450, [3]int{4, 2, 1}, "The user you are trying to contact is receiving mail at a rate that prevents additional messages", Temporary, [3]int{4, 2, 1}},
			{452, [3]int{4, 5, 3}, "Too many recipients", Temporary, [3]int{4, 5, 3}},
			{550, [3]int{5, 1, 1}, "No such user", Permanent, [3]int{5, 1, 1}},
			{554, [3]int{}, "Message rejected: Email address is not verified.", Permanent, [3]int{5, 0, 0}},
			{535, [3]int{5, 7, 8}, "Authentication Credentials Invalid", Permanent, [3]int{5, 7, 8}},
			{552, [3]int{5, 3, 4}, "Message too big", Permanent, [3]int{5, 3, 4}},
			{250, [3]int{}, "OK", Temporary, [3]int{2, 0, 0}},
			{0, [3]int{}, "", Temporary, [3]int{}},
		},
		StageRcpt: {
			{552, [3]int{5, 2, 2}, "Mailbox over quota", Permanent, [3]int{5, 2, 2}},
			{550, [3]int{5, 7, 1}, "Daily user sending quota exceeded.", Permanent, [3]int{5, 7, 1}},
			{452, [3]int{4, 5, 3}, "rate limit for this recipient", Temporary, [3]int{4, 5, 3}},
			{454, [3]int{}, "Throttling failure", Throttled, [3]int{4, 0, 0}},
			{451, [3]int{4, 7, 1}, "Try again later", Throttled, [3]int{4, 7, 1}},
			{421, [3]int{}, "closing", Throttled, [3]int{4, 0, 0}},
		},
	} {
		for _, r := range replies {
			class, enh := Classify(stage, r.code, r.enh, r.text)
			if class != r.class || enh != r.want {
				t.Errorf("Classify(%s, %d, %v, %q) = %v %v, want %v %v", stage, r.code, r.enh, r.text, class, enh, r.class, r.want)
			}
		}
	}
}

func TestErrorTemporary(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		temp bool
		text string
	}{
		{errors.New("connection reset by peer"), true, "upstream p: mail: connection reset by peer"},
		{&smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}, true, "upstream p: mail: 451 4.3.0 try later"},
		{&smtp.SMTPError{Code: 550, Message: "no"}, false, "upstream p: mail: 550 5.0.0 no"},
		{&smtp.SMTPError{Code: 554, Message: "quota exceeded"}, true, "upstream p: mail: 554 5.0.0 quota exceeded"},
	} {
		e := newError("p", StageMail, tc.err)
		if e.Temporary() != tc.temp || e.Error() != tc.text {
			t.Errorf("%v: Temporary %v, Error %q; want %v %q", tc.err, e.Temporary(), e.Error(), tc.temp, tc.text)
		}
	}
}

// FuzzSMTPErr checks that reply parsing keeps the basic code and that a
// parsed enhanced code is printed back as it came.
func FuzzSMTPErr(f *testing.F) {
	f.Add(454, "4.7.0 Throttling failure")
	f.Add(550, "No such user")
	f.Add(421, "4.4.5.1 odd")
	f.Fuzz(func(t *testing.T, code int, msg string) {
		var se *smtp.SMTPError
		if !errors.As(smtpErr(textprotoError(code, msg)), &se) {
			t.Fatal("not an SMTPError")
		}
		if se.Code != code {
			t.Fatalf("code %d → %d", code, se.Code)
		}
		if se.EnhancedCode != (smtp.EnhancedCode{}) {
			e := se.EnhancedCode
			prefix := []byte(msg[:len(msg)-len(se.Message)])
			if len(prefix) == 0 || string(prefix) != sprintEnh(e)+" " {
				t.Fatalf("%q parsed as %v + %q", msg, e, se.Message)
			}
		}
	})
}

func textprotoError(code int, msg string) error { return &textproto.Error{Code: code, Msg: msg} }

func sprintEnh(e smtp.EnhancedCode) string { return fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2]) }

// TestRcptMailboxOverQuotaFailsOnlyThatRecipient: Gmail answers a
// recipient whose mailbox is full with "552 5.2.2 The email account that
// you tried to reach is over quota." at RCPT. That is the recipient's
// problem (RFC 3463 X.2.2 mailbox full), a 5xx on RCPT: it must fail that
// recipient only, not be retried for max_age as throttling, and must not
// take the whole upstream out of service.
func TestRcptMailboxOverQuotaFailsOnlyThatRecipient(t *testing.T) {
	t.Parallel()
	s := testsmtp.Start(t, testsmtp.Options{})
	s.FailRule(testsmtp.Rule{Stage: testsmtp.StageRcpt, Code: 552, Enhanced: [3]int{5, 2, 2},
		Message: "The email account that you tried to reach is over quota.", Rcpt: "full@example.org"})
	d := newDispatcher(t, Options{Upstreams: []config.Upstream{smtpUp("gmail", s, 10)}})

	r := d.Deliver(context.Background(), msg("m1", body, "a@example.org", "full@example.org"))
	var e *Error
	if r.Errs[0] != nil {
		t.Fatalf("a@example.org: %v", r.Errs[0])
	}
	if !errors.As(r.Errs[1], &e) || e.Temporary() {
		t.Errorf("mailbox full at RCPT (552 5.2.2): got %v (temporary=%v), want a permanent failure of that recipient", r.Errs[1], e != nil && e.Temporary())
	}

	// The same reply as the message's only recipient must not open the
	// upstream's breaker: one full mailbox says nothing about the provider.
	d.Deliver(context.Background(), msg("m2", body, "full@example.org"))
	if st := status(d, "gmail"); st.Breaker != "closed" {
		t.Errorf("after one recipient's mailbox-full reply the upstream's breaker is %s (%s)", st.Breaker, st.LastError)
	}
}
