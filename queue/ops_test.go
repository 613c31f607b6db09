package queue

import (
	"encoding/json"
	"errors"
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
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	running(t, q)
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
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
	table := FormatList(infos)
	if !strings.Contains(table, id) || !strings.Contains(table, "bob@example.org") || !strings.Contains(table, "1 message(s)") {
		t.Errorf("table:\n%s", table)
	}
	det, err := Show(dir, id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(det.Headers, "Subject: hello") || len(det.History) < 2 {
		t.Errorf("show: headers %q, history %v", det.Headers, det.History)
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
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	running(t, q)
	waitFor(t, "control socket", func() bool { _, err := os.Stat(opts.ControlSocket); return err == nil })
	if fi, _ := os.Stat(opts.ControlSocket); fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
	waitFor(t, "first attempt", func() bool { return len(up.deliveries()) == 1 })

	ctl := func(cmd string, args ...string) {
		t.Helper()
		if _, err := Control(opts.ControlSocket, cmd, args...); err != nil {
			t.Fatalf("%s %v: %v", cmd, args, err)
		}
	}
	// retry: attempted again at once instead of in an hour.
	ctl("retry", id)
	waitFor(t, "retried attempt", func() bool { return len(up.deliveries()) == 2 })

	ctl("hold", id)
	if d, _ := Show(dir, id); !d.Held {
		t.Error("hold not recorded in the spool")
	}
	ctl("flush") // a held message stays held
	ctl("release", id)
	waitFor(t, "attempt after release", func() bool { return len(up.deliveries()) == 3 })
	if d, _ := Show(dir, id); d.Held {
		t.Error("release not recorded")
	}

	// delete bounces the pending recipient.
	ctl("delete", id)
	waitFor(t, "deletion report", func() bool { return q.Len() == 0 && len(up.deliveries()) == 4 })
	_, status, _ := parseDSN(t, up.deliveries()[3].Data)
	if !strings.Contains(status, "Final-Recipient: rfc822; bob@example.org") {
		t.Errorf("deletion report:\n%s", status)
	}
	if _, err := Show(dir, id); err == nil {
		t.Error("deleted message still shown")
	}
	if _, err := Control(opts.ControlSocket, "hold", "0123456789ABCDEF"); err == nil {
		t.Error("hold of an unknown ID succeeded")
	}
	if _, err := Control(opts.ControlSocket, "explode", id); err == nil {
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

	if _, err := Control(opts.ControlSocket, "hold", keep); !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("Control without daemon = %v, want ErrNoDaemon", err)
	}
	for _, c := range [][]string{{"hold", keep}, {"delete", gone}, {"delete", silent, "--silent"}} {
		if _, err := Do(opts, c[0], c[1:]...); err != nil {
			t.Fatalf("%v: %v", c, err)
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
	q2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	running(t, q2)
	waitFor(t, "report delivered", func() bool { return q2.Len() == 1 && len(up.deliveries()) == 1 })
	if d := up.deliveries()[0]; d.From != "" || !strings.Contains(string(d.Data), "carol@example.org") {
		t.Errorf("delivered %+v, want the report for carol", d)
	}
	if _, err := Do(opts, "release", keep); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "released message delivered", func() bool { return q2.Len() == 0 })
}
