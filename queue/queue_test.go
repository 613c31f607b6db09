package queue

import (
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"time"

	"github.com/sluicemail/sluice/upstream"
)

func TestCommitSurvivesRestartAndIsDelivered(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	up := &fakeUpstream{}
	opts, _ := testOptions(t, dir, up)
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}, Route: []string{"primary"}}, "DKIM-Signature: v=1\r\n", testMsg)
	q.Close() // "crash": never ran

	q2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if q2.Len() != 1 {
		t.Fatalf("recovered %d messages, want 1", q2.Len())
	}
	run(t, q2)
	waitFor(t, "delivery", func() bool { return q2.Len() == 0 })
	got := up.deliveries()
	if len(got) != 1 {
		t.Fatalf("%d deliveries, want 1", len(got))
	}
	d := got[0]
	if d.ID != id || d.From != "alice@example.com" || strings.Join(d.To, ",") != "bob@example.org" || strings.Join(d.Route, ",") != "primary" {
		t.Errorf("delivery = %+v", d)
	}
	if want := "DKIM-Signature: v=1\r\n" + testMsg; string(d.Data) != want {
		t.Errorf("bytes = %q, want %q", d.Data, want)
	}
	des, _ := os.ReadDir(filepath.Join(dir, "msg"))
	for _, de := range des {
		if !strings.HasPrefix(de.Name(), ".free-") {
			t.Errorf("spool not empty after delivery: %s", de.Name())
		}
	}
	if infos, _ := List(dir); len(infos) != 0 {
		t.Errorf("queue list after delivery: %+v", infos)
	}
}

// TestFreeFilesReused: a finished message's file becomes the next draft, a
// free file is never taken for a message at restart, and a restart keeps
// the pool.
func TestFreeFilesReused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	up := &fakeUpstream{}
	opts, _ := testOptions(t, dir, up)
	q := running(t, opts)
	// Long, then short: the reused file must not keep the old tail.
	bodies := []string{testMsg + strings.Repeat("long line\r\n", 2000), testMsg, testMsg + "x\r\n"}
	for _, b := range bodies {
		enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "P: 1\r\n", b)
		waitFor(t, "delivery", func() bool { return q.Len() == 0 })
	}
	for i, d := range up.deliveries() {
		if string(d.Data) != "P: 1\r\n"+bodies[i] {
			t.Errorf("delivery %d: %d bytes, want %d", i, len(d.Data), len(bodies[i])+7)
		}
	}
	// A message's removal is durable when it is finished, so its file is
	// free at once: messages in turn reuse one file, its content zeroed
	// (spool keeps a small free file's blocks to write over them).
	des, _ := os.ReadDir(filepath.Join(dir, "msg"))
	if len(des) != 1 || !strings.HasPrefix(des[0].Name(), ".free-") {
		t.Fatalf("after three messages in turn the spool holds %v, want one reused free file", des)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "msg", des[0].Name())); err != nil || len(bytes.Trim(b, "\x00")) != 0 {
		t.Errorf("free file keeps content after delivery: %q %v", b, err)
	}
	q2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	if q2.Len() != 0 {
		t.Errorf("a free file was recovered as a message")
	}
	if n := len(up.deliveries()); n != 3 {
		t.Errorf("%d deliveries, want 3", n)
	}
	q2.Close()
}

func TestOpenRemovesDraftsAndMovesCorruptAside(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts, lb := testOptions(t, dir, &fakeUpstream{})
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	d, err := q.Begin()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(d, testMsg) // never committed: never acknowledged
	bad := "0123456789ABCDEF"
	os.WriteFile(filepath.Join(dir, "msg", bad), []byte("not a spool file at all, too short?"), 0o600)
	q.Close()

	q2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	if _, err := os.Stat(filepath.Join(dir, "msg", d.ID+".tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("draft still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "corrupt", bad)); err != nil {
		t.Errorf("corrupt file not moved aside: %v", err)
	}
	if q2.Len() != 0 {
		t.Errorf("Len = %d, want 0", q2.Len())
	}
	if !strings.Contains(lb.String(), "corrupt spool file moved aside") {
		t.Errorf("no log line for the corrupt file:\n%s", lb)
	}
}

func TestNextAttempt(t *testing.T) {
	t.Parallel()
	retry := []time.Duration{time.Minute, 5 * time.Minute, time.Hour}
	for _, tc := range []struct {
		attempt int
		rnd     float64
		want    time.Duration
	}{
		{1, 0.5, time.Minute},
		{2, 0.5, 5 * time.Minute},
		{3, 0.5, time.Hour},
		{4, 0.5, time.Hour}, // the last interval repeats
		{40, 0.5, time.Hour},
		{0, 0.5, time.Minute}, // never attempted: the first interval
		{1, 0, 54 * time.Second},
		{3, 0.999999, 66*time.Minute - 720*time.Microsecond},
	} {
		if got := NextAttempt(retry, tc.attempt, tc.rnd); got != tc.want {
			t.Errorf("NextAttempt(%d, %v) = %v, want %v", tc.attempt, tc.rnd, got, tc.want)
		}
	}
	if got := NextAttempt(nil, 3, 0.5); got != 0 {
		t.Errorf("no schedule: %v", got)
	}
}

func TestTemporaryFailureDefersThenDelivers(t *testing.T) {
	t.Parallel()
	up := &fakeUpstream{decide: func(d delivery, rcpt string, n int) error {
		if n == 0 {
			return &upstream.Error{Upstream: "fake", Code: 0, Message: "connection reset after the final dot", PossibleDuplicate: true}
		}
		return nil
	}}
	opts, lb := testOptions(t, t.TempDir(), up)
	q := running(t, opts)
	before := mDeferred.Value("fake")
	enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)
	waitFor(t, "delivery", func() bool { return q.Len() == 0 })
	if n := len(up.deliveries()); n != 2 {
		t.Errorf("%d attempts, want 2", n)
	}
	if mDeferred.Value("fake") < before+1 {
		t.Error("deferred counter did not move")
	}
	logs := lb.String()
	if !strings.Contains(logs, "msg=deferred") || !strings.Contains(logs, "possible_duplicate=true") || !strings.Contains(logs, "msg=delivered") {
		t.Errorf("logs lack deferred/possible_duplicate/delivered:\n%s", logs)
	}
}

// parseDSN parses a report and returns its delivery-status part.
func parseDSN(t *testing.T, data []byte) (*mail.Message, string, string) {
	t.Helper()
	// The delivered bytes may begin with a DKIM prefix; mail.ReadMessage copes.
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type = %q (%v)", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var status, third string
	for i := 0; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		switch p.Header.Get("Content-Type") {
		case "message/delivery-status":
			status = string(b)
		case "text/rfc822-headers", "message/rfc822":
			third = p.Header.Get("Content-Type") + "\n" + string(b)
		}
	}
	return m, status, third
}

func TestPermanentRecipientFailureBouncesOnlyThatRecipient(t *testing.T) {
	t.Parallel()
	up := &fakeUpstream{decide: func(d delivery, rcpt string, n int) error {
		if rcpt == "nobody@example.org" {
			return errNoSuchUser()
		}
		return nil
	}}
	opts, _ := testOptions(t, t.TempDir(), up)
	var signed []string
	opts.Sign = func(domain string, msg []byte) ([]byte, error) {
		signed = append(signed, domain)
		return []byte("DKIM-Signature: test\r\n"), nil
	}
	q := running(t, opts)
	id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org", "nobody@example.org"}, Route: []string{"primary"},
		RcptOpts: map[string]RcptDSN{"nobody@example.org": {ORCPT: "rfc822;Nobody@example.org"}}}, "", testMsg)
	waitFor(t, "original and bounce delivered", func() bool { return q.Len() == 0 && len(up.deliveries()) == 2 })
	got := up.deliveries()
	if strings.Join(got[0].To, ",") != "bob@example.org,nobody@example.org" {
		t.Errorf("first delivery to %v", got[0].To)
	}
	b := got[1]
	if b.From != "" || strings.Join(b.To, ",") != "alice@example.com" || strings.Join(b.Route, ",") != "primary" {
		t.Errorf("bounce envelope from %q to %v route %v", b.From, b.To, b.Route)
	}
	if len(signed) != 1 || signed[0] != "relay.test" || !bytes.HasPrefix(b.Data, []byte("DKIM-Signature: test\r\n")) {
		t.Errorf("bounce not signed for relay.test: %v", signed)
	}
	m, status, orig := parseDSN(t, b.Data)
	if m.Header.Get("From") != "Mail Delivery System <MAILER-DAEMON@relay.test>" || m.Header.Get("To") != "<alice@example.com>" ||
		m.Header.Get("Subject") != "Undelivered Mail Returned to Sender" || m.Header.Get("Auto-Submitted") != "auto-replied" {
		t.Errorf("bounce headers: %v", m.Header)
	}
	for _, want := range []string{"Reporting-MTA: dns; relay.test", "Final-Recipient: rfc822; nobody@example.org",
		"Original-Recipient: rfc822; Nobody@example.org", "Action: failed", "Status: 5.1.1", "Diagnostic-Code: smtp; 550 5.1.1 no such user", "X-Sluice-Queue-ID: " + id} {
		if !strings.Contains(status, want) {
			t.Errorf("delivery-status lacks %q:\n%s", want, status)
		}
	}
	if strings.Contains(status, "bob@example.org") {
		t.Errorf("delivered recipient in the report:\n%s", status)
	}
	if !strings.HasPrefix(orig, "text/rfc822-headers\n") || !strings.Contains(orig, "Subject: hello") || strings.Contains(orig, "Hello Bob.") {
		t.Errorf("returned original: %q", orig)
	}
}

func TestNullSenderAndFailingBounceAreDropped(t *testing.T) {
	t.Parallel()
	up := &fakeUpstream{decide: rejectAll}
	opts, lb := testOptions(t, t.TempDir(), up)
	q := running(t, opts)
	// A null-sender message that fails: no report at all.
	enqueue(t, q, &Envelope{From: "", To: []string{"x@example.org"}}, "", testMsg)
	// A message whose sender fails too: one report, which fails and is dropped.
	enqueue(t, q, &Envelope{From: "gone@example.com", To: []string{"y@example.org"}}, "", testMsg)
	waitFor(t, "spool empty", func() bool { return q.Len() == 0 && len(up.deliveries()) == 3 })
	got := up.deliveries()
	bounces := 0
	for _, d := range got {
		if d.From == "" && strings.Join(d.To, ",") == "gone@example.com" {
			bounces++
		}
	}
	if len(got) != 3 || bounces != 1 {
		t.Errorf("deliveries %d (want 3: two originals, one report), reports %d", len(got), bounces)
	}
	if !strings.Contains(lb.String(), "no report for a null-sender message") {
		t.Errorf("dropped report not logged:\n%s", lb)
	}
}

func TestMaxAgeExpiresWith447(t *testing.T) {
	t.Parallel()
	up := &fakeUpstream{decide: func(d delivery, rcpt string, n int) error {
		if d.From == "" {
			return nil
		}
		return &upstream.Error{Upstream: "fake", Code: 451, Enhanced: [3]int{4, 3, 0}, Message: "try later"}
	}}
	opts, lb := testOptions(t, t.TempDir(), up)
	// Received an hour and a minute ago with max_age 1h: the next failure expires it.
	q := running(t, opts)
	enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}, Received: time.Now().Add(-61 * time.Minute)}, "", testMsg)
	waitFor(t, "expiry report delivered", func() bool { return q.Len() == 0 && len(up.deliveries()) == 2 })
	_, status, _ := parseDSN(t, up.deliveries()[1].Data)
	if !strings.Contains(status, "Status: 4.4.7") || !strings.Contains(status, "Action: failed") || !strings.Contains(status, "451 4.3.0 try later") {
		t.Errorf("expiry report:\n%s", status)
	}
	if !strings.Contains(lb.String(), "msg=expired") {
		t.Errorf("no expired log line:\n%s", lb)
	}
}

func TestNotifyNeverSuppressesReport(t *testing.T) {
	t.Parallel()
	up := &fakeUpstream{decide: rejectAll}
	opts, _ := testOptions(t, t.TempDir(), up)
	q := running(t, opts)
	enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"x@example.org"}, RcptOpts: map[string]RcptDSN{"x@example.org": {Notify: []string{"NEVER"}}}}, "", testMsg)
	waitFor(t, "spool empty", func() bool { return q.Len() == 0 && len(up.deliveries()) >= 1 })
	if n := len(up.deliveries()); n != 1 {
		t.Errorf("%d deliveries, want 1 (no report with NOTIFY=NEVER)", n)
	}
}

func TestDiskFull(t *testing.T) {
	t.Parallel()
	opts, _ := testOptions(t, t.TempDir(), &fakeUpstream{})
	opts.MinFreeSpace = 1 << 62
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Begin(); !errors.Is(err, ErrDiskFull) {
		t.Errorf("Begin = %v, want ErrDiskFull", err)
	}
	if err := q.Writable(); !errors.Is(err, ErrDiskFull) {
		t.Errorf("Writable = %v, want ErrDiskFull", err)
	}
	free, err := q.FreeSpace()
	if err != nil || free == 0 {
		t.Errorf("FreeSpace = %d, %v", free, err)
	}
}

// TestDiskFullCachedAnswer: Begin reuses a free-space answer only while it
// left spaceMargin above the floor and for spaceTTL at most; near the floor
// every draft asks the file system, so a fill is refused at once.
func TestDiskFullCachedAnswer(t *testing.T) {
	t.Parallel()
	opts, _ := testOptions(t, t.TempDir(), &fakeUpstream{})
	opts.MinFreeSpace = 1
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	free, err := q.FreeSpace()
	if err != nil {
		t.Fatal(err)
	}
	if free < 2*spaceMargin {
		t.Skipf("%d bytes free: too little to test the cached answer", free)
	}
	begin := func() error {
		d, err := q.Begin()
		if err == nil {
			d.Abort()
		}
		return err
	}
	// Far above the floor: the answer is kept.
	if err := begin(); err != nil {
		t.Fatal(err)
	}
	if q.spaceOK.Load() == 0 {
		t.Error("free space far above the floor was not cached")
	}
	// The floor rises to just below the free space (the disk filled to
	// within the margin): once the cached answer is a spaceTTL old, Begin
	// asks again, accepts, and keeps asking.
	q.spaceOK.Store(int64(time.Since(spaceEpoch)) - int64(spaceTTL))
	q.minFre = free - spaceMargin/2
	if err := begin(); err != nil {
		t.Fatalf("Begin %d below the free space = %v", spaceMargin/2, err)
	}
	if q.spaceOK.Load() != 0 {
		t.Error("free space within the margin of the floor was cached")
	}
	// Past the floor: refused by the very next draft.
	q.minFre = free + spaceMargin
	if err := begin(); !errors.Is(err, ErrDiskFull) {
		t.Errorf("Begin past the floor = %v, want ErrDiskFull", err)
	}
}

// TestRecoverInBackground: the daemon's Open lists the spool and returns;
// messages are scheduled as they are read while new mail is committed and
// delivered. Every message, old and new, is delivered exactly once; a Close
// in the middle of a background recovery loses nothing.
func TestRecoverInBackground(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	up := &fakeUpstream{}
	opts, _ := testOptions(t, dir, up)
	q1, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	const old = 150
	want := map[string]bool{}
	for range old {
		want[enqueue(t, q1, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)] = true
	}
	q1.Close() // never run: every message stays queued

	// Closed at once: what the recovery did not reach is still there.
	opts.RecoverInBackground = true
	q2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	q2.Close()

	q3, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	run(t, q3)
	for range 20 { // accepted while the old ones are being read
		want[enqueue(t, q3, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg)] = true
	}
	waitFor(t, "recovery and delivery", func() bool { return !q3.Recovering() && q3.Len() == 0 })
	got := map[string]int{}
	for _, d := range up.deliveries() {
		got[d.ID]++
	}
	for id := range want {
		if got[id] != 1 {
			t.Errorf("%s delivered %d times, want once", id, got[id])
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d messages delivered, want %d", len(got), len(want))
	}
}
