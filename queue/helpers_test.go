package queue

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/internal/syncbuf"
	"github.com/sluicemail/sluice/internal/testwait"
	"github.com/sluicemail/sluice/upstream"
)

// delivery is one Deliver call as the fake upstream saw it.
type delivery struct {
	ID, From string
	To       []string
	Route    []string
	Data     []byte
}

// fakeUpstream records deliveries; decide returns the error for a recipient
// on the n-th call (0-based) for that message (nil: accepted).
type fakeUpstream struct {
	mu     sync.Mutex
	got    []delivery
	calls  map[string]int
	decide func(d delivery, rcpt string, n int) error
}

func (f *fakeUpstream) Deliver(ctx context.Context, m *upstream.Message) upstream.Result {
	rc, err := m.Open()
	if err != nil {
		panic(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	d := delivery{ID: m.ID, From: m.From, To: append([]string(nil), m.To...), Route: m.Route, Data: data}
	f.mu.Lock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	n := f.calls[m.ID]
	f.calls[m.ID]++
	f.got = append(f.got, d)
	f.mu.Unlock()
	res := upstream.Result{Upstream: "fake", Errs: make([]error, len(m.To))}
	if f.decide != nil {
		for i, to := range m.To {
			res.Errs[i] = f.decide(d, to, n)
		}
	}
	return res
}

// errNoSuchUser is the upstream's 550 5.1.1 for a recipient it does not know.
func errNoSuchUser() error {
	return &upstream.Error{Upstream: "fake", Code: 550, Enhanced: [3]int{5, 1, 1}, Message: "no such user"}
}

// rejectAll is a fakeUpstream decision: every recipient is unknown.
func rejectAll(delivery, string, int) error { return errNoSuchUser() }

func (f *fakeUpstream) deliveries() []delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]delivery(nil), f.got...)
}

func testOptions(t testing.TB, dir string, up upstream.Deliverer) (Options, *syncbuf.Buffer) {
	lb := &syncbuf.Buffer{}
	return Options{
		Dir:       dir,
		Hostname:  "relay.test",
		Deliverer: up,
		Logger:    slog.New(slog.NewTextHandler(lb, nil)),
		Config: config.Queue{
			Retry:   []time.Duration{10 * time.Millisecond, 20 * time.Millisecond},
			MaxAge:  time.Hour,
			Workers: 4,
		},
	}, lb
}

const testMsg = "From: alice@example.com\r\nTo: bob@example.org\r\nSubject: hello\r\nMessage-ID: <m1@example.com>\r\n\r\nHello Bob.\r\n"

// enqueue spools one message.
func enqueue(t testing.TB, q *Queue, env *Envelope, prefix, msg string) string {
	t.Helper()
	d, err := q.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(d, msg); err != nil {
		t.Fatal(err)
	}
	if err := d.Commit(env, []byte(prefix)); err != nil {
		t.Fatal(err)
	}
	return d.ID
}

// running opens a queue with opts and runs it until cleanup.
func running(t *testing.T, opts Options) *Queue {
	t.Helper()
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	run(t, q)
	return q
}

// run starts q.Run and stops it at cleanup.
func run(t *testing.T, q *Queue) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { q.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; q.Close() })
}

// waitFor polls cond until it holds; the deadline only guards against a hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, 15*time.Second, what, cond)
}
