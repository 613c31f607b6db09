package queue

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"time"

	"github.com/sluicemail/sluice/upstream"
)

func tempFail(d delivery, rcpt string, n int) error {
	if d.From == "" {
		return nil // reports go through
	}
	return &upstream.Error{Upstream: "fake", Code: 421, Enhanced: [3]int{4, 7, 0}, Message: "throttled"}
}

func TestListJSONFields(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts, _ := testOptions(t, dir, &fakeUpstream{decide: tempFail})
	opts.Config.Retry = []time.Duration{time.Hour}
	q := running(t, opts)
	const prefix = "DKIM-Signature: v=1; d=example.com; b=abc\r\n"
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, prefix, testMsg)
	waitFor(t, "first attempt recorded", func() bool {
		infos, _ := List(dir)
		return len(infos) == 1 && infos[0].LastError != ""
	})
	infos, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(infos[0])
	var m map[string]any
	json.Unmarshal(b, &m)
	for _, k := range []string{"id", "sender", "recipients", "age_seconds", "attempts", "next_attempt", "last_error", "held"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, b)
		}
	}
	in := infos[0]
	if in.ID != id || in.Sender != "alice@example.com" || in.Attempts != 1 || in.Held || in.NextAttempt == nil ||
		len(in.Recipients) != 1 || in.Recipients[0] != (RcptInfo{Address: "bob@example.org", State: StatePending}) ||
		!strings.Contains(in.LastError, "421 4.7.0 throttled") {
		t.Errorf("info = %s", b)
	}
	if d := time.Until(*in.NextAttempt); d < 50*time.Minute || d > 70*time.Minute {
		t.Errorf("next attempt in %v, want about an hour", d)
	}
	det, err := Show(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(det.Headers, "Subject: hello") || len(det.History) < 2 {
		t.Errorf("show: headers %q, history %v", det.Headers, det.History)
	}
	// The listing reads no prefix but counts it, as show does.
	if want := int64(len(prefix) + len(testMsg)); in.Size != want || det.Size != want || !det.Signed {
		t.Errorf("size: list %d, show %d (signed %v); want %d", in.Size, det.Size, det.Signed, want)
	}
}

// exercise runs hold, release, retry and delete through do and checks the
// files and, when q runs, the deliveries.
func TestOperationsThroughControlSocket(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	up := &fakeUpstream{decide: tempFail}
	opts, _ := testOptions(t, dir, up)
	opts.Config.Retry = []time.Duration{time.Hour}
	opts.ControlSocket = filepath.Join(t.TempDir(), "control.sock")
	q := running(t, opts)
	waitFor(t, "control socket", func() bool { _, err := os.Stat(opts.ControlSocket); return err == nil })
	if fi, _ := os.Stat(opts.ControlSocket); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
	waitFor(t, "first attempt", func() bool { return len(up.deliveries()) == 1 })

	ctl := func(a Action, id string) {
		t.Helper()
		if _, err := Control(opts.ControlSocket, Request{Action: a, ID: id}); err != nil {
			t.Fatalf("%s %s: %v", a, id, err)
		}
	}
	// retry: attempted again at once instead of in an hour.
	ctl(ActionRetry, id)
	waitFor(t, "retried attempt", func() bool { return len(up.deliveries()) == 2 })

	ctl(ActionHold, id)
	if d, _ := Show(dir, id); !d.Held {
		t.Error("hold not recorded in the spool")
	}
	ctl(ActionFlush, "") // a held message stays held
	ctl(ActionRelease, id)
	waitFor(t, "attempt after release", func() bool { return len(up.deliveries()) == 3 })
	if d, _ := Show(dir, id); d.Held {
		t.Error("release not recorded")
	}

	// delete bounces the pending recipient.
	ctl(ActionDelete, id)
	waitFor(t, "deletion report", func() bool { return q.Len() == 0 && len(up.deliveries()) == 4 })
	_, status, _ := parseDSN(t, up.deliveries()[3].Data)
	if !strings.Contains(status, "Final-Recipient: rfc822; bob@example.org") {
		t.Errorf("deletion report:\n%s", status)
	}
	if _, err := Show(dir, id); err == nil {
		t.Error("deleted message still shown")
	}
	if _, err := Control(opts.ControlSocket, Request{Action: ActionHold, ID: "0123456789ABCDEF"}); err == nil {
		t.Error("hold of an unknown ID succeeded")
	}
	if _, err := Control(opts.ControlSocket, Request{Action: "explode", ID: id}); err == nil {
		t.Error("unknown action accepted")
	}
}

func TestOperationsWithoutDaemon(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	up := &fakeUpstream{}
	opts, _ := testOptions(t, dir, up)
	opts.ControlSocket = filepath.Join(t.TempDir(), "control.sock") // nobody listens
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	keep := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
	gone := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"carol@example.org"}}, "", testMsg)
	silent := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"dave@example.org"}}, "", testMsg)
	q.Close()

	if _, err := Control(opts.ControlSocket, Request{Action: ActionHold, ID: keep}); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("Control without daemon = %v, want ErrNoDaemon", err)
	}
	for _, r := range []Request{{Action: ActionHold, ID: keep}, {Action: ActionDelete, ID: gone}, {Action: ActionDelete, ID: silent, Silent: true}} {
		if _, err := Do(opts, r); err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
	}
	infos, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	// keep (held) and the report for gone remain.
	if len(infos) != 2 || infos[0].ID != keep || !infos[0].Held || infos[1].Sender != "" || infos[1].Recipients[0].Address != "alice@example.com" {
		b, _ := json.Marshal(infos)
		t.Fatalf("after offline actions: %s", b)
	}
	// A restarted daemon honours the hold and sends the report.
	q2 := running(t, opts)
	waitFor(t, "report delivered", func() bool { return q2.Len() == 1 && len(up.deliveries()) == 1 })
	if d := up.deliveries()[0]; d.From != "" || !strings.Contains(string(d.Data), "carol@example.org") {
		t.Errorf("delivered %+v, want the report for carol", d)
	}
	if _, err := Do(opts, Request{Action: ActionRelease, ID: keep}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "released message delivered", func() bool { return q2.Len() == 0 })
}

// TestRequestCheck: the one place that says which requests make sense, for
// the command line and the daemon alike.
func TestRequestCheck(t *testing.T) {
	t.Parallel()
	const id = "0123456789ABCDEF"
	for _, c := range []struct {
		r  Request
		ok bool
	}{
		{Request{Action: ActionRetry, ID: id}, true},
		{Request{Action: ActionRetry, All: true}, true},
		{Request{Action: ActionFlush}, true},
		{Request{Action: ActionHold, ID: id}, true},
		{Request{Action: ActionRelease, ID: id}, true},
		{Request{Action: ActionDelete, ID: id, Silent: true}, true},
		{Request{Action: ActionRetry}, false},
		{Request{Action: ActionRetry, ID: id, All: true}, false},
		{Request{Action: ActionHold, All: true}, false},
		{Request{Action: ActionHold, ID: id, Silent: true}, false},
		{Request{Action: ActionFlush, ID: id}, false},
		{Request{Action: ActionDelete, ID: "../../etc/passwd"}, false},
		{Request{Action: "explode", ID: id}, false},
		{Request{}, false},
	} {
		if err := c.r.Check(); (err == nil) != c.ok {
			t.Errorf("%+v: Check() = %v, want ok=%v", c.r, err, c.ok)
		}
	}
}

// TestControlSocketRefusesOldRequests: the daemon decodes the typed request
// strictly; the flag-string form of before is a bad request, not a guess.
func TestControlSocketRefusesOldRequests(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts, _ := testOptions(t, dir, &fakeUpstream{})
	opts.ControlSocket = filepath.Join(t.TempDir(), "control.sock")
	running(t, opts)
	waitFor(t, "control socket", func() bool { _, err := os.Stat(opts.ControlSocket); return err == nil })
	c, err := net.Dial("unix", opts.ControlSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, `{"cmd":"retry","args":["--all"]}`+"\n")
	var rep ctlReply
	if err := json.NewDecoder(c).Decode(&rep); err != nil || !strings.HasPrefix(rep.Err, "queue: bad request: ") {
		t.Errorf("old request: %+v %v, want a bad request", rep, err)
	}
}

// A flush is the advance record of the attempt it makes due (one
// spool-wide record, no state log written per message): the process that
// flushed makes that attempt without recording it first, and the count goes
// up by one, once. After a restart nobody knows whether a flushed message's
// attempt was made, so it counts (spool.Boot) and the next attempt is
// recorded before it is made (STYLE 6): a message that crashed the process
// at each attempt still climbs its count.
func TestFlushIsTheAttemptsRecord(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	type seen struct{ shown, logged int }
	var at []seen
	var id string
	attemptsLogged := func() int {
		m, err := Show(dir, id)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, r := range m.History {
			if r.T == "attempt" {
				n = max(n, r.N)
			}
		}
		return n
	}
	up := &fakeUpstream{decide: func(d delivery, rcpt string, n int) error {
		if n > 0 { // what the spool said while the attempt was being made
			m, err := Show(dir, d.ID)
			if err != nil {
				t.Error(err)
				return nil
			}
			at = append(at, seen{m.Attempts, attemptsLogged()})
		}
		if n < 2 {
			return tempFail(d, rcpt, n)
		}
		return nil
	}}
	opts, _ := testOptions(t, dir, up)
	opts.Config.Retry = []time.Duration{time.Hour}
	opts.ControlSocket = filepath.Join(t.TempDir(), "control.sock")
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	id = enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
	waitFor(t, "first attempt deferred", func() bool { return attemptsLogged() == 1 })
	if _, err := Control(opts.ControlSocket, Request{Action: ActionFlush}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "flushed attempt deferred", func() bool { return attemptsLogged() == 2 })
	cancel()
	<-done
	q.Close()
	if len(at) != 1 || at[0] != (seen{shown: 1, logged: 1}) {
		t.Fatalf("during the flushed attempt the spool said %+v, want 1 attempt, its log not yet written", at)
	}
	if m, _ := Show(dir, id); m.Attempts != 2 {
		t.Errorf("after the flushed attempt: attempts %d, want 2 (counted once)", m.Attempts)
	}

	// Flushed with no daemon running: nothing attempted, nothing counted
	// yet. The next start counts the flush's attempt (3: it might have
	// been made), and the attempt after it (4) is recorded first.
	if out, err := Apply(opts, Request{Action: ActionFlush}); err != nil || out != "1 message(s) scheduled now\n" {
		t.Fatalf("offline flush: %q, %v", out, err)
	}
	if m, _ := Show(dir, id); m.Attempts != 2 {
		t.Errorf("after the offline flush: attempts %d, want still 2", m.Attempts)
	}
	q2 := running(t, opts)
	waitFor(t, "delivery after the restart", func() bool { return q2.Len() == 0 })
	if len(at) != 2 || at[1] != (seen{shown: 4, logged: 4}) {
		t.Fatalf("during the attempt after the restart the spool said %+v, want attempt 4 recorded before it was made", at[1:])
	}
}
