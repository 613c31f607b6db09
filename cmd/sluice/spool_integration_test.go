package main

import (
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicemail/sluice/internal/testsmtp"
	"github.com/sluicemail/sluice/spool"
)

// fillUntil451 sends messages of kb lines of 1000 bytes (at most max) until
// one is answered 451 4.3.0; it returns the Message-IDs answered 250 and
// whether the 451 came. Any other reply fails the test.
func fillUntil451(t *testing.T, d *testDaemon, kb, max int) (accepted map[string]bool, refused bool) {
	t.Helper()
	body := strings.Repeat(strings.Repeat("x", 998)+"\r\n", kb)
	accepted = map[string]bool{}
	for i := 0; i < max && !refused; i++ {
		id := fmt.Sprintf("full%d", i)
		_, err := d.sendMsg(id, body)
		switch {
		case err == nil:
			accepted[id+"@example.com"] = true
		case replyCode(err) == "451 4.3.0":
			refused = true
		default:
			t.Fatalf("%s: %v, want 250 or 451 4.3.0", id, err)
		}
	}
	return accepted, refused
}

func statfsFree(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Bavail * uint64(st.Bsize)
}

// dirBlocks is the disk space the files below dir occupy (0 if it is absent).
func dirBlocks(t *testing.T, dir string) uint64 {
	t.Helper()
	var n uint64
	_ = filepath.WalkDir(dir, func(path string, de os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) == nil {
			n += uint64(st.Blocks) * 512
		}
		return nil
	})
	return n
}

// spoolFileBytes sums the sizes of the spool's message files (free ones
// included) and counts the free ones.
func spoolFileBytes(t *testing.T, stateDir string) (bytes int64, free int) {
	t.Helper()
	des, err := os.ReadDir(filepath.Join(stateDir, "spool", "msg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, de := range des {
		fi, err := de.Info()
		if err != nil {
			continue
		}
		bytes += fi.Size()
		if strings.HasPrefix(de.Name(), ".free-") {
			free++
		}
	}
	return bytes, free
}

// TestOpsDeliveredMailFreesTheDisk (issue 8 item 1): state_dir on a small
// volume, upstream down, 100 KB messages until 451 4.3.0; once the upstream
// is back and the queue drained, the finished files hold no bytes (neither
// disk space nor delivered content), the volume is as free as before, and
// new mail is accepted — also after a restart.
func TestOpsDeliveredMailFreesTheDisk(t *testing.T) {
	t.Parallel()
	d := launch(t, opsCfg(opsOpts{stateDir: "{{DIR}}/small/state", queue: "  min_free_space: 1MB\n"}), onTmpfs("6m"), refused)
	mnt := filepath.Join(d.dir, "small")
	state := mnt + "/state"
	before := statfsFree(t, mnt)

	accepted, refused := fillUntil451(t, d, 100, 80) // ~100 KB each
	body := strings.Repeat(strings.Repeat("y", 998)+"\r\n", 100)
	if !refused || len(accepted) < 20 {
		t.Fatalf("6 MiB volume: %d accepted, refused=%v; want a 451 4.3.0 after at least 20", len(accepted), refused)
	}
	d.up.SetMode(testsmtp.Serve)
	d.up.WaitMessages(t, len(accepted), 60*time.Second)
	waitFor(t, 30*time.Second, "an empty queue", func() bool { return len(opsQueueList(t, d.cfg)) == 0 })

	check := func(when string) {
		t.Helper()
		n, free := spoolFileBytes(t, state)
		if n != 0 {
			t.Errorf("%s: the spool's files hold %d bytes (%d free files) with the queue empty", when, n, free)
		}
		// Everything the messages took is free again (state files aside,
		// and the delivery journal, which keeps their history by design).
		journal := dirBlocks(t, filepath.Join(state, "journal"))
		if after := statfsFree(t, mnt); after+journal+256<<10 < before {
			t.Errorf("%s: %d bytes free (+%d in the journal), %d before the messages", when, after, journal, before)
		}
		if code, _ := httpGet(t, "http://"+d.httpAddr()+"/readyz"); code != http.StatusOK {
			t.Errorf("%s: /readyz %d with the queue empty, want 200", when, code)
		}
		_, err := d.sendMsg("again-"+when, body)
		if err != nil {
			t.Errorf("%s: new mail refused: %v", when, err)
		}
	}
	check("drained")
	d.stop(20 * time.Second)
	d.serve()
	waitFor(t, 30*time.Second, "an empty queue", func() bool { return len(opsQueueList(t, d.cfg)) == 0 })
	check("restarted")
	t.Logf("%d messages of 100 KB accepted before 451 4.3.0; all delivered, spool files hold 0 bytes", len(accepted))
}

// TestOpsQueueImport (DESIGN §8.6): instance A dies with mail queued (some
// of it already tried); instance B adopts A's spool with `sluice queue
// import` — refused while B runs, killed half-way once, run again, and run
// a third time for nothing — then delivers every message exactly once,
// with its attempt count; A's spool is left empty.
func TestOpsQueueImport(t *testing.T) {
	t.Parallel()
	// A temporary refusal that is neither throttling nor a connection
	// failure: every attempt counts and the breaker stays closed (while it
	// is open, due messages wait without spending an attempt).
	a := launch(t, opsCfg(opsOpts{stateDir: "{{DIR}}/a"}), failAt(testsmtp.StageMail, 451, [3]int{4, 3, 0}, "try again later"))
	// B, beside A in the same directory, adopts A's spool.
	e, up := a.env, a.up
	cfgA := filepath.Join(e.dir, "a.yaml")
	if err := os.Rename(a.cfg, cfgA); err != nil {
		t.Fatal(err)
	}
	cfgB := e.opsConfig(opsOpts{upPort: up.Port(), stateDir: "{{DIR}}/b"})

	const n = 30
	want := map[string]bool{}
	for i := range n {
		id := fmt.Sprintf("imp%d", i)
		a.mustSend(id, "adopt me\r\n")
		want[id+"@example.com"] = true
	}
	waitFor(t, 20*time.Second, "every message tried at least twice", func() bool {
		for _, m := range opsQueueList(t, cfgA) {
			if m["attempts"].(float64) < 2 {
				return false
			}
		}
		return true
	})
	a.kill() // A dies for good
	deadSpool := filepath.Join(e.dir, "a")

	b := start(t, 1, "serve", "-c", cfgB)
	_, stderr, code := runCmd(t, "", "queue", "import", deadSpool, "-c", cfgB)
	if code != 1 || !strings.Contains(stderr, "the daemon is running") || !strings.Contains(stderr, "stop it") {
		t.Fatalf("import beside a running daemon: exit %d, %q; want 1 and 'the daemon is running … stop it'", code, stderr)
	}
	b.stop(20 * time.Second)

	// Killed half-way (wherever the kill lands), then run again.
	runKilled(t, 15*time.Millisecond, "queue", "import", deadSpool, "-c", cfgB)
	out, stderr, code := runCmd(t, "", "queue", "import", deadSpool, "-c", cfgB)
	if code != 0 || !strings.Contains(out, "message(s) imported from") {
		t.Fatalf("import: exit %d, %q %q", code, out, stderr)
	}
	out, _, code = runCmd(t, "", "queue", "import", deadSpool, "-c", cfgB)
	if code != 0 || !strings.HasPrefix(out, "0 message(s) imported") {
		t.Errorf("import run again: exit %d, %q; want 0 imported", code, out)
	}
	if l := opsQueueList(t, cfgA); len(l) != 0 {
		t.Errorf("the dead spool still lists %d messages", len(l))
	}
	list := opsQueueList(t, cfgB)
	if len(list) != n {
		t.Fatalf("after the import B queues %d messages, want %d", len(list), n)
	}
	for _, m := range list {
		if m["attempts"].(float64) < 2 {
			t.Errorf("%v: attempts %v, want the %s's count (≥ 2)", m["id"], m["attempts"], "dead instance")
		}
	}

	up.ClearFailures()
	start(t, 1, "serve", "-c", cfgB)
	waitFor(t, 30*time.Second, "B's queue empty", func() bool { return len(opsQueueList(t, cfgB)) == 0 })
	got := messageIDs(up.Messages()...)
	for id := range want {
		if got[id] != 1 {
			t.Errorf("%s delivered %d times, want once", id, got[id])
		}
	}
}

// noSyncFS is the real file system without fsyncs: a test writes a large
// spool in a second (durability is not what it tests).
type noSyncFS struct{ spool.FS }

type noSyncFile struct{ spool.File }

func (noSyncFile) Sync() error { return nil }

func (f noSyncFS) OpenFile(name string, flag int, perm fs.FileMode) (spool.File, error) {
	file, err := f.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return noSyncFile{file}, nil
}

// TestOpsListensWhileRecovering (issue 14 item 4, in part): with 5,000
// messages queued, the listeners answer and /healthz is up before the
// recovery ends; /readyz says "recovering" meanwhile; mail accepted during
// recovery and every queued message are delivered exactly once.
func TestOpsListensWhileRecovering(t *testing.T) {
	t.Parallel()
	const n = 5000
	d := launch(t, opsCfg(opsOpts{}), before(func(e *env) {
		sp, err := spool.Open(filepath.Join(e.dir, "state", "spool"), spool.Options{FS: noSyncFS{spool.OS}})
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			dr, err := sp.Begin()
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(dr, message("app@example.com", "r@example.org", fmt.Sprintf("q%d", i), "queued\r\n"))
			fr, err := dr.Commit(&spool.Envelope{From: "app@example.com", To: []string{"r@example.org"}}, nil)
			if err != nil {
				t.Fatal(err)
			}
			fr.Close()
		}
		sp.Close()
	}))
	if strings.Contains(d.stderr.String(), "spool recovered") {
		t.Fatalf("the listeners answered only after recovering %d messages", n)
	}
	code, body := httpGet(t, "http://"+d.httpAddr()+"/healthz")
	if code != http.StatusOK {
		t.Errorf("/healthz %d during recovery", code)
	}
	sawRecovering := false
	if code, body := httpGet(t, "http://"+d.httpAddr()+"/readyz"); code == http.StatusServiceUnavailable && strings.Contains(body, "recovering") {
		sawRecovering = true
	}
	if _, err := d.sendMsg("during", "x\r\n"); err != nil {
		t.Fatalf("mail during recovery: %v", err)
	}
	if !d.waitLog("spool recovered", 60*time.Second) {
		t.Fatal("recovery did not end within 60 s")
	}
	if !sawRecovering && !strings.Contains(d.stderr.String(), "spool recovered") {
		t.Errorf("/readyz never said recovering: %s", body)
	}
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		if strings.Contains(l, "spool recovered") {
			t.Log(l)
		}
	}
	msgs := d.up.WaitMessages(t, n+1, 120*time.Second)
	got := messageIDs(msgs...)
	if len(got) != n+1 {
		t.Errorf("%d distinct messages delivered, want %d", len(got), n+1)
	}
	for id, c := range got {
		if c != 1 {
			t.Errorf("%s delivered %d times", id, c)
		}
	}
	waitFor(t, 30*time.Second, "/readyz 200 after recovery", func() bool {
		code, _ := httpGet(t, "http://"+d.httpAddr()+"/readyz")
		return code == http.StatusOK
	})
}
