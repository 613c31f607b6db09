package hooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// The fixtures in testdata/ are the providers' documented sample payloads
// (SES and SNS developer guides, Mailgun's webhook payloads, SendGrid's
// Event Webhook reference, Postmark's webhook docs); testdata/README.md
// names each source and what was changed.

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// summary renders events compactly for comparison.
func summary(evs []Event) string {
	var out []string
	for _, e := range evs {
		out = append(out, fmt.Sprintf("%s %s %s hdr=%v pid=%v status=%s", e.Provider, e.Kind, e.Recipient, e.HeaderIDs, e.ProviderIDs, e.Status))
	}
	return strings.Join(out, "\n")
}

func TestParseFixtures(t *testing.T) {
	for _, c := range []struct {
		file string
		want string
	}{
		{"ses-bounce.json", "ses bounce jane@example.com hdr=[custom-message-ID custom-message-ID] pid=[00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000] status=5.1.1"},
		{"ses-raw-bounce.json", "ses bounce jane@example.com hdr=[custom-message-ID custom-message-ID] pid=[00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa0680-000000] status=5.1.1"},
		{"ses-complaint.json", "ses complaint richard@example.com hdr=[custom-message-ID custom-message-ID] pid=[000001378603177f-7a5433e7-8edb-42ae-af10-f0181f34d6ee-000000] status="},
		{"ses-delivery.json", "ses delivery jane@example.com hdr=[custom-message-ID custom-message-ID] pid=[0000014644fe5ef6-9a483358-9170-4cb4-a269-f5dcdf415321-000000] status="},
		{"ses-subscription-confirmation.json", ""},
		{"mailgun-failed-permanent.json", "mailgun bounce alice@example.org hdr=[20130503192659.13651.20287@mg.example.com] pid=[] status=5.5.0"},
		{"mailgun-complained.json", "mailgun complaint recipient@sample.mailgun.com hdr=[20260212182531.0d5ed3254c319957@sample.mailgun.com] pid=[] status="},
		{"mailgun-delivered.json", "mailgun delivery recipient@sample.mailgun.com hdr=[20260203192030.53383e583ab41f62@sample.mailgun.com] pid=[] status="},
		{"sendgrid-events.json", strings.Join([]string{
			"sendgrid delivery alex@example.com hdr=[<14c5d75ce93.dfd.64b469@ismtpd-555>] pid=[14c5d75ce93.dfd.64b469] status=",
			"sendgrid bounce alex@example.com hdr=[<14c5d75ce93.dfd.64b469@ismtpd-555>] pid=[14c5d75ce93.dfd.64b469] status=5.0.0",
			"sendgrid bounce alex@example.com hdr=[<14c5d75ce93.dfd.64b469@ismtpd-555>] pid=[14c5d75ce93.dfd.64b469] status=5.1.1",
			"sendgrid complaint alex@example.com hdr=[<14c5d75ce93.dfd.64b469@ismtpd-555>] pid=[14c5d75ce93.dfd.64b469] status=",
		}, "\n")},
		{"postmark-bounce.json", "postmark bounce john@example.com hdr=[] pid=[883953f4-6105-42a2-a16a-77a8eac79483] status="},
		{"postmark-spam-complaint.json", "postmark complaint john@example.com hdr=[] pid=[00000000-0000-0000-0000-000000000000] status="},
		{"postmark-delivery.json", "postmark delivery john@example.com hdr=[] pid=[00000000-0000-0000-0000-000000000000] status="},
		{"postmark-soft-bounce.json", ""},
	} {
		var evs []Event
		var err error
		body := fixture(t, c.file)
		switch strings.SplitN(c.file, "-", 2)[0] {
		case "ses":
			evs, _, err = ParseSES(body)
		case "mailgun":
			evs, err = ParseMailgun(body, "")
		case "sendgrid":
			evs, err = ParseSendGrid(body)
		case "postmark":
			evs, err = ParsePostmark(body)
		}
		if err != nil {
			t.Errorf("%s: %v", c.file, err)
			continue
		}
		if got := summary(evs); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.file, got, c.want)
		}
	}
}

// TestSendGridDroppedReasons: of SendGrid's drop reasons only those about
// the address bounce (and so suppress it); a drop for our own header or
// content must not.
func TestSendGridDroppedReasons(t *testing.T) {
	for reason, want := range map[string]string{
		"Bounced Address":                   "sendgrid bounce a@example.com hdr=[] pid=[] status=5.1.1",
		"Invalid":                           "sendgrid bounce a@example.com hdr=[] pid=[] status=5.1.3",
		"Spam Reporting Address":            "sendgrid complaint a@example.com hdr=[] pid=[] status=",
		"Invalid SMTPAPI header":            "",
		"Spam Content":                      "",
		"Unsubscribed Address":              "",
		"Recipient List over Package Quota": "",
	} {
		body := `[{"email":"a@example.com","event":"dropped","reason":` + strconv.Quote(reason) + `,"status":"5.0.0"}]`
		evs, err := ParseSendGrid([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if got := summary(evs); got != want {
			t.Errorf("dropped %q: got %q, want %q", reason, got, want)
		}
	}
}

func TestSESSubscriptionConfirmation(t *testing.T) {
	evs, sub, err := ParseSES(fixture(t, "ses-subscription-confirmation.json"))
	if err != nil || len(evs) != 0 || sub == nil || !strings.HasPrefix(sub.SubscribeURL, "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription") {
		t.Fatalf("got %v %+v %v", evs, sub, err)
	}
}

func TestMailgunSignature(t *testing.T) {
	body := fixture(t, "mailgun-failed-permanent.json")
	var m map[string]any
	json.Unmarshal(body, &m)
	sig := m["signature"].(map[string]any)
	mac := hmac.New(sha256.New, []byte("key-test"))
	mac.Write([]byte(sig["timestamp"].(string) + sig["token"].(string)))
	sig["signature"] = hex.EncodeToString(mac.Sum(nil))
	signed, _ := json.Marshal(m)
	if evs, err := ParseMailgun(signed, "key-test"); err != nil || len(evs) != 1 {
		t.Fatalf("a correctly signed event: %v %v", evs, err)
	}
	if _, err := ParseMailgun(signed, "another-key"); !errors.Is(err, ErrSignature) {
		t.Fatalf("wrong key: %v, want ErrSignature", err)
	}
	sig["token"] = "x" + sig["token"].(string)
	forged, _ := json.Marshal(m)
	if _, err := ParseMailgun(forged, "key-test"); !errors.Is(err, ErrSignature) {
		t.Fatalf("changed token: %v, want ErrSignature", err)
	}
	delete(m, "signature")
	unsigned, _ := json.Marshal(m)
	if _, err := ParseMailgun(unsigned, "key-test"); !errors.Is(err, ErrSignature) {
		t.Fatalf("no signature: %v, want ErrSignature", err)
	}
}

func TestMalformed(t *testing.T) {
	for _, body := range []string{"", "{", "[]", `{"Type":"Notification","Message":"not json"}`, `{"Type":"Bogus"}`, `{"foo":1}`} {
		if _, _, err := ParseSES([]byte(body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("ses %q: %v, want ErrMalformed", body, err)
		}
	}
	for _, body := range []string{"", "[", "{}", `{"event-data":"x"}`} {
		if _, err := ParseMailgun([]byte(body), ""); !errors.Is(err, ErrMalformed) {
			t.Errorf("mailgun %q: %v, want ErrMalformed", body, err)
		}
	}
	for _, body := range []string{"", "{}", `[{"email":1}]`} {
		if _, err := ParseSendGrid([]byte(body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("sendgrid %q: %v, want ErrMalformed", body, err)
		}
	}
	for _, body := range []string{"", "[]", "{}"} {
		if _, err := ParsePostmark([]byte(body)); !errors.Is(err, ErrMalformed) {
			t.Errorf("postmark %q: %v, want ErrMalformed", body, err)
		}
	}
}

// checkEvents is the property every parser keeps, whatever it is fed:
// either an error that is ErrMalformed (or, for Mailgun, ErrSignature), or
// events each of a known kind and provider.
func checkEvents(t *testing.T, provider string, evs []Event, err error) {
	if err != nil {
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrSignature) {
			t.Fatalf("%s: error %v is neither malformed nor signature", provider, err)
		}
		if len(evs) != 0 {
			t.Fatalf("%s: events with an error", provider)
		}
		return
	}
	for _, e := range evs {
		if e.Provider != provider {
			t.Fatalf("event of provider %q from %s", e.Provider, provider)
		}
		switch e.Kind {
		case KindBounce, KindComplaint, KindDelivery:
		default:
			t.Fatalf("%s: event kind %q", provider, e.Kind)
		}
	}
}

func FuzzParsers(f *testing.F) {
	for _, name := range []string{"ses-bounce.json", "ses-complaint.json", "ses-delivery.json", "ses-raw-bounce.json",
		"ses-subscription-confirmation.json", "mailgun-failed-permanent.json", "mailgun-complained.json", "mailgun-delivered.json",
		"sendgrid-events.json", "sendgrid-bounce.json", "postmark-bounce.json", "postmark-spam-complaint.json", "postmark-delivery.json"} {
		f.Add(fixture(f, name))
	}
	f.Add([]byte(`{"Type":"Notification","Message":"{\"notificationType\":\"Bounce\"}"}`))
	f.Add([]byte(`[{"event":"bounce"}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, _, err := ParseSES(body)
		checkEvents(t, "ses", evs, err)
		evs, err = ParseMailgun(body, "")
		checkEvents(t, "mailgun", evs, err)
		evs, err = ParseMailgun(body, "key")
		checkEvents(t, "mailgun", evs, err)
		evs, err = ParseSendGrid(body)
		checkEvents(t, "sendgrid", evs, err)
		evs, err = ParsePostmark(body)
		checkEvents(t, "postmark", evs, err)
	})
}
