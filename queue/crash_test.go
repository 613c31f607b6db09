package queue

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"github.com/sluicemail/sluice/spool"
)

// TestHelperProcess is the child of TestKill9LosesNothing: it commits
// messages as fast as it can and prints each ID once Commit has returned,
// the moment the relay would answer 250.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("SLUICE_QUEUE_HELPER_DIR")
	if dir == "" {
		t.Skip("helper process for TestKill9LosesNothing")
	}
	opts, _ := testOptions(t, dir, &fakeUpstream{})
	q, err := Open(opts)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	w := bufio.NewWriter(os.Stdout)
	for i := 0; ; i++ {
		id := enqueue(t, q, &Envelope{From: "alice@example.com", To: []string{"bob@example.org"}}, "", testMsg+strconv.Itoa(i)+"\r\n")
		fmt.Fprintln(w, id)
		w.Flush()
	}
}

func TestKill9LosesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), "SLUICE_QUEUE_HELPER_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if spool.ValidID(sc.Text()) {
			acked = append(acked, sc.Text())
		}
		if len(acked) == 200 {
			cmd.Process.Signal(syscall.SIGKILL) // mid-stream: commits are in flight
			break
		}
	}
	for sc.Scan() { // IDs printed before the kill landed were acknowledged too
		if spool.ValidID(sc.Text()) {
			acked = append(acked, sc.Text())
		}
	}
	cmd.Wait()
	if len(acked) < 200 {
		t.Fatalf("helper acknowledged only %d messages", len(acked))
	}

	opts, _ := testOptions(t, dir, &fakeUpstream{})
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	infos, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, in := range infos {
		have[in.ID] = true
	}
	for _, id := range acked {
		if !have[id] {
			t.Errorf("acknowledged message %s lost", id)
		}
	}
	if q.Len() != len(infos) {
		t.Errorf("recovered %d, listed %d", q.Len(), len(infos))
	}
}
