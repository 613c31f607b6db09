package queue

import (
	"errors"
	"fmt"
	"strings"

	"github.com/sluicemail/sluice/upstream"
)

// failure is what the queue needs to know about one recipient's error.
type failure struct {
	Temporary         bool
	PossibleDuplicate bool
	Upstream          string
	Code              int    // SMTP reply code, 0 when there was no reply
	Status            string // enhanced status "x.y.z", "" when unknown
	Diag              string // for logs, DSN Diagnostic-Code and the webhook
}

// classify reads an upstream error. An error that is not an *upstream.Error
// and says nothing through Temporary() is temporary (STYLE 4): retrying a
// message that could have been delivered costs less than bouncing it.
func classify(err error) failure {
	f := failure{Temporary: true, Diag: err.Error()}
	var t interface{ Temporary() bool }
	if errors.As(err, &t) {
		f.Temporary = t.Temporary()
	}
	var ue *upstream.Error
	if !errors.As(err, &ue) {
		return f
	}
	f.Temporary = ue.Temporary()
	f.PossibleDuplicate = ue.PossibleDuplicate
	f.Upstream = ue.Upstream
	f.Code = ue.Code
	if ue.Enhanced[0] != 0 {
		f.Status = fmt.Sprintf("%d.%d.%d", ue.Enhanced[0], ue.Enhanced[1], ue.Enhanced[2])
	}
	if ue.Code > 0 {
		// The reply as the upstream gave it, for the DSN's Diagnostic-Code.
		f.Diag = strings.TrimSpace(fmt.Sprintf("%d %s %s", ue.Code, f.Status, ue.Message))
		f.Diag = strings.Join(strings.Fields(f.Diag), " ")
	}
	return f
}

// statusFor returns the DSN status of a failure: the upstream's enhanced code
// when its class matches the outcome, else the class's generic x.0.0.
func statusFor(f failure) string {
	class := "5"
	if f.Temporary {
		class = "4"
	}
	if strings.HasPrefix(f.Status, class+".") {
		return f.Status
	}
	return class + ".0.0"
}
