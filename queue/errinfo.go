package queue

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
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

// classify reads an upstream error. The upstream package's *Error carries
// Temporary(), Code, Enhanced, Message, Upstream and PossibleDuplicate; they
// are read by method and field name rather than by type so the queue depends
// only on upstream's Deliverer contract (and tests can use their own errors).
// An error that says nothing is temporary (STYLE 4).
func classify(err error) failure {
	f := failure{Temporary: true, Diag: err.Error()}
	var t interface{ Temporary() bool }
	if errors.As(err, &t) {
		f.Temporary = t.Temporary()
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		v := reflect.ValueOf(e)
		if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
			continue
		}
		s := v.Elem()
		code, ok := intField(s, "Code")
		if !ok {
			continue
		}
		f.Code = code
		if b, ok := s.FieldByName("PossibleDuplicate").Interface().(bool); ok {
			f.PossibleDuplicate = b
		}
		if u := s.FieldByName("Upstream"); u.IsValid() && u.Kind() == reflect.String {
			f.Upstream = u.String()
		}
		if en := s.FieldByName("Enhanced"); en.IsValid() && en.Kind() == reflect.Array && en.Len() == 3 {
			a, b, c := en.Index(0).Int(), en.Index(1).Int(), en.Index(2).Int()
			if a != 0 {
				f.Status = fmt.Sprintf("%d.%d.%d", a, b, c)
			}
		}
		if code > 0 {
			msg := ""
			if m := s.FieldByName("Message"); m.IsValid() && m.Kind() == reflect.String {
				msg = m.String()
			}
			if f.Status != "" {
				f.Diag = fmt.Sprintf("%d %s %s", code, f.Status, msg)
			} else {
				f.Diag = fmt.Sprintf("%d %s", code, msg)
			}
		}
		break
	}
	return f
}

func intField(s reflect.Value, name string) (int, bool) {
	v := s.FieldByName(name)
	if !v.IsValid() || v.Kind() != reflect.Int {
		return 0, false
	}
	return int(v.Int()), true
}

// statusFor returns the DSN status of a failure: the upstream's enhanced code
// when it has the right class, else one derived from the reply code.
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
