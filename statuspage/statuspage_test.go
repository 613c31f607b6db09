package statuspage

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/passwd"
	"github.com/sluicemail/sluice/journal"
)

type fakeJournal struct{ ev journal.Event }

func (f fakeJournal) Recent() journal.Recent {
	return journal.Recent{Minutes: []journal.Minute{{Start: time.Unix(0, 0), Counts: map[string]int{"delivered": 3, "accepted": 4}}}, Latest: []journal.Event{f.ev}}
}

func (f fakeJournal) Trace(q string, _ time.Time) journal.Result {
	return journal.Result{Trails: []journal.Trail{{QueueID: f.ev.QueueID, Sender: f.ev.Sender, Subject: f.ev.Subject, Events: []journal.Event{f.ev}}}}
}

func TestAuthAndEscaping(t *testing.T) {
	t.Parallel()
	hash, err := passwd.HashBcrypt("pw")
	if err != nil {
		t.Fatal(err)
	}
	ev := journal.Event{Time: time.Now(), Event: journal.Bounced, QueueID: "0ABCDEFGHJKMNPQR", Sender: `a"b&c@example.com`,
		Recipient: "r@example.org", Subject: "<script>alert(1)</script>", Code: 550, Text: "<img src=x onerror=alert(2)>"}
	h := New(Options{Hostname: "relay.test", Users: func() map[string]string { return map[string]string{"admin": hash} },
		Upstreams: func() []Upstream { return []Upstream{{Name: "primary", Breaker: "open", LastError: "<b>x</b>"}} },
		Queue:     func() Queue { return Queue{Messages: 7} },
		Journal:   func() Journal { return fakeJournal{ev} }})
	mux := http.NewServeMux()
	h.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	get := func(path, user, pw string) (int, string) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if user != "" {
			req.SetBasicAuth(user, pw)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, c := range [][2]string{{"", ""}, {"admin", "wrong"}, {"nobody", "pw"}} {
		if code, _ := get("/", c[0], c[1]); code != 401 {
			t.Errorf("%q/%q: %d, want 401", c[0], c[1], code)
		}
	}
	for range 2 { // the second time from the cache
		code, body := get("/", "admin", "pw")
		if code != 200 || !strings.Contains(body, `id="queue-count">7<`) || !strings.Contains(body, "primary") {
			t.Fatalf("page: %d\n%s", code, body)
		}
		if strings.Contains(body, "<img") || strings.Contains(body, "<b>x") || !strings.Contains(body, "&lt;img src=x onerror=alert(2)&gt;") {
			t.Errorf("unescaped text on the page")
		}
	}
	code, body := get("/trace?q=%3Cx%3E", "admin", "pw")
	if code != 200 || strings.Contains(body, "<script>") || !strings.Contains(body, "&lt;script&gt;alert(1)&lt;/script&gt;") || !strings.Contains(body, `value="&lt;x&gt;"`) {
		t.Errorf("trace page: %d\n%s", code, body)
	}
	if code, _ := get("/other", "admin", "pw"); code != 404 {
		t.Errorf("/other: %d, want 404", code)
	}
}
