package main

// `sluice queue`: the table it prints and what its control socket does with
// a peer it must refuse.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sluicemail/sluice/queue"
)

func TestFormatList(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	next := now.Add(90 * time.Second)
	infos := []queue.Info{
		{ID: "K1AAAAAAAAAAAAAA", Sender: "app@example.com", AgeSeconds: 125, Size: 2048, Attempts: 2, NextAttempt: &next,
			LastError:  strings.Repeat("451 4.3.0 try later ", 5),
			Recipients: []queue.RcptInfo{{Address: "a@example.org", State: queue.StatePending}, {Address: "b@example.org", State: queue.StateDelivered}}},
		{ID: "K1BBBBBBBBBBBBBB", Held: true, AgeSeconds: 5, Size: 10,
			Recipients: []queue.RcptInfo{{Address: "c@example.org", State: queue.StatePending}}},
	}
	want := "ID                AGE   SIZE  ATTEMPTS  NEXT      STATE   SENDER           RECIPIENTS               LAST ERROR\n" +
		"K1AAAAAAAAAAAAAA  2m5s  2048  2         in 1m30s  queued  app@example.com  a@example.org,(+1 done)  451 4.3.0 try later 451 4.3.0 try later 451 4.3.0 try lat...\n" +
		"K1BBBBBBBBBBBBBB  5s    10    0         -         held    <>               c@example.org            \n" +
		"2 message(s)\n"
	if got := formatList(infos, now); got != want {
		t.Errorf("formatList:\n%s\nwant:\n%s", got, want)
	}
}

// TestWriteListStreams: the text table's first lines reach the output
// while the walk is still reading the spool (a million queued messages must
// not be read before `queue list | head` sees a line), rows after the first
// block are padded to the widest cell seen so far, and the count is right.
func TestWriteListStreams(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	const total = 5000
	var out strings.Builder
	seenAt := -1 // rows read when the output first held the header and a row
	walk := func(fn func(queue.Info) error) error {
		for i := range total {
			if seenAt < 0 && strings.Count(out.String(), "\n") >= 2 {
				seenAt = i
			}
			sender := "app@example.com"
			if i == listHead+10 {
				sender = "a-much-longer-sender-address@example.com"
			}
			in := queue.Info{ID: fmt.Sprintf("K1%014d", i), Sender: sender, AgeSeconds: 5, Size: 10,
				Recipients: []queue.RcptInfo{{Address: "c@example.org", State: queue.StatePending}}}
			if err := fn(in); err != nil {
				return err
			}
		}
		return nil
	}
	if err := writeList(&out, walk, now); err != nil {
		t.Fatal(err)
	}
	if seenAt < 0 || seenAt > listHead+1 {
		t.Fatalf("first line printed after %d of %d messages were read, want after at most %d", seenAt, total, listHead+1)
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != total+2 || lines[len(lines)-1] != fmt.Sprintf("%d message(s)", total) {
		t.Fatalf("%d lines, last %q; want %d and the count", len(lines), lines[len(lines)-1], total+2)
	}
	// The header and the first block share one width; the long sender
	// widens its own line and every later one.
	col := func(l string) int { return strings.Index(l, "c@example.org") }
	if h, first, long, after := strings.Index(lines[0], "RECIPIENTS"), col(lines[1]), col(lines[listHead+11]), col(lines[listHead+12]); h != first || long <= first || after != long {
		t.Errorf("RECIPIENTS column at %d (header), %d (first row), %d (long sender), %d (after it)", h, first, long, after)
	}
}

// TestControlSocketRefusesOtherUsers: a user other than the daemon's (and
// root) who reaches the socket anyway (its mode loosened) is refused with
// "permission denied", never a broken pipe, and the daemon logs the uid.
func TestControlSocketRefusesOtherUsers(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root to run the CLI as another user")
	}
	const nobody = 65534
	d := launch(t, polCfg("", ""))
	state := filepath.Join(d.dir, "state")
	sock := filepath.Join(state, "control.sock")
	waitFor(t, 10*time.Second, "the control socket", func() bool { _, err := os.Stat(sock); return err == nil })
	for _, d := range []string{filepath.Dir(sluiceBin), filepath.Dir(d.dir), d.dir, state} {
		os.Chmod(d, 0o755)
	}
	os.Chmod(sock, 0o666)
	for i := 0; i < 5; i++ { // the broken pipe was a race: try it several times
		cmd := exec.Command(sluiceBin, "queue", "flush", "--state-dir", state)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != 1 || !strings.Contains(string(out), "permission denied: uid 65534") || strings.Contains(string(out), "broken pipe") {
			t.Fatalf("queue flush as uid %d: exit %d (%v):\n%s", nobody, code, err, out)
		}
	}
	if !d.waitLog(`msg="queue: control socket peer refused" uid=65534`, 5*time.Second) {
		t.Error("the daemon did not log the refused peer")
	}
}
