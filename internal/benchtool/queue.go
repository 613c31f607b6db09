package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// queueMode is `--queue N` (DESIGN §5, a queue of a million): it accepts N
// messages with the upstream down, restarts sluice, and measures how soon
// it listens and answers /healthz, how long until the queue is recovered
// (/readyz no longer says "recovering" and sluice_queue_messages counts
// every message), the RSS, and `sluice queue list` — the first ten lines
// through a pipe that closes, as `| head` does, then the whole listing to
// /dev/null — with its time and peak memory. Then the sink comes up,
// sluice is restarted and the queue flushed, and the drain is timed; every
// accepted message must arrive exactly once.
func queueMode(o *options, bin, dir, cfgPath string, st setup, cl *client, runID string, stdout io.Writer) error {
	sinkAddr := "127.0.0.1:" + strconv.Itoa(st.SinkPort)
	httpBase := "http://" + st.HTTP
	sl, err := startSluice(bin, cfgPath, filepath.Join(dir, "sluice.log"), st.Listen, 30*time.Second)
	if err != nil {
		return err
	}
	defer func() { sl.killUnlessExited() }() // sl is replaced on restarts
	fmt.Fprintf(stdout, "queue %d: accepting with the upstream down (%d sessions)\n", o.queue, o.conns)
	t0 := time.Now()
	res := runLoad(cl, o.conns, o.queue, o.size, false, t0.Add(o.timeout), runID)
	accDur := res.lastAcc.Sub(res.start)
	if res.nAcc == 0 {
		return fmt.Errorf("no message accepted: %v", res.errs)
	}
	mem, _ := readMem(sl.pid())
	fmt.Fprintf(stdout, "  accepted %d of %d in %.1fs (%.0f msg/s), p50 %.1f ms, p99 %.1f ms; RSS %s, peak %s; %s\n",
		res.nAcc, o.queue, accDur.Seconds(), float64(res.nAcc)/accDur.Seconds(),
		ms(percentile(sortedCopy(res.lat), 50)), ms(percentile(sortedCopy(res.lat), 99)), mb(mem.RSS), mb(mem.HWM), loadavg())
	for _, e := range sortedErrs(res.errs) {
		fmt.Fprintln(stdout, "  error: "+e)
	}
	if err := sl.stop(60 * time.Second); err != nil {
		fmt.Fprintln(stdout, "  stop: "+err.Error())
	}

	// The restart: time to the SMTP port, to /healthz, and to a recovered queue.
	start := time.Now()
	sl, err = startSluice(bin, cfgPath, filepath.Join(dir, "sluice-restart.log"), st.Listen, 15*time.Minute)
	if err != nil {
		return err
	}
	listen := time.Since(start)
	health := waitHTTP(httpBase+"/healthz", func(code int, _ string) bool { return code == 200 }, start.Add(15*time.Minute))
	recovered := time.Duration(0)
	for deadline := start.Add(15 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		code, body := get(httpBase + "/readyz")
		if code == 0 || strings.Contains(body, "recovering") {
			continue
		}
		if n, ok := metric(httpBase+"/metrics", "sluice_queue_messages"); ok && n >= float64(res.nAcc) {
			recovered = time.Since(start)
			break
		}
	}
	mem, _ = readMem(sl.pid())
	fmt.Fprintf(stdout, "  restart: listening after %s, /healthz after %s, recovered after %s; RSS %s (%.0f bytes per message), peak %s; %s\n",
		secs(listen), secs(health), secs(recovered), mb(mem.RSS), float64(mem.RSS)/float64(res.nAcc), mb(mem.HWM), loadavg())

	first, headDur, headRSS, err := queueList(bin, cfgPath, 10)
	if err != nil {
		return err
	}
	_, allDur, allRSS, err := queueList(bin, cfgPath, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "  queue list | head: first line %s, 10 lines %s, peak RSS %s; whole list %s, peak RSS %s; %s\n",
		secs(first), secs(headDur), mb(headRSS), secs(allDur), mb(allRSS), loadavg())

	// The drain: sluice stops, the sink comes up where the upstream was,
	// sluice starts again (breakers live in memory, so one opened while the
	// upstream was down does not hold the drain back) and the queue is
	// flushed so nothing waits for its retry time.
	if err := sl.stop(60 * time.Second); err != nil {
		fmt.Fprintln(stdout, "  stop: "+err.Error())
	}
	snk, err := startSinkAt(sinkAddr)
	if err != nil {
		return err
	}
	defer snk.close()
	up := time.Now()
	sl, err = startSluice(bin, cfgPath, filepath.Join(dir, "sluice-drain.log"), st.Listen, 15*time.Minute)
	if err != nil {
		return err
	}
	relisten := time.Since(up)
	if out, err := exec.Command(bin, "queue", "flush", "-c", cfgPath).CombinedOutput(); err != nil {
		fmt.Fprintf(stdout, "  queue flush: %v: %s\n", err, strings.TrimSpace(string(out)))
	}
	all := snk.waitCount(res.nAcc, up.Add(o.timeout))
	n, last := snk.snapshot()
	firstAt := snk.firstArrival()
	mem, _ = readMem(sl.pid())
	if err := sl.stop(60 * time.Second); err != nil {
		fmt.Fprintln(stdout, "  stop: "+err.Error())
	}
	lost, dups := snk.tally(res.accepted)
	rate := 0.0
	if n > 1 && last.After(firstAt) {
		rate = float64(n) / last.Sub(firstAt).Seconds()
	}
	fmt.Fprintf(stdout, "  drain: restarted with the sink up, listening after %s; %d of %d arrived; first %s after the start, %.0f msg/s from first to last; peak RSS %s; lost %d, duplicates %d; %s\n",
		secs(relisten), n, res.nAcc, secs(firstAt.Sub(up)), rate, mb(mem.HWM), lost, dups, loadavg())
	if !all || lost > 0 || dups > 0 {
		return &exitError{code: 1}
	}
	return nil
}

// loadavg is the machine's load average now (1, 5, 15 minutes): the
// queue mode's phases are minutes long on a shared machine.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return "load " + strings.Join(f[:3], " ")
	}
	return "load unknown"
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func secs(d time.Duration) string {
	if d <= 0 {
		return "never"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

// get returns an HTTP status and body; 0 when nothing answered.
func get(url string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b)
}

// waitHTTP polls url until ok says so, and returns how long it took since
// the deadline's start (0 if never).
func waitHTTP(url string, ok func(int, string) bool, deadline time.Time) time.Duration {
	start := time.Now()
	for time.Now().Before(deadline) {
		if ok(get(url)) {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}

// metric reads one unlabelled sample from a Prometheus text page.
func metric(url, name string) (float64, bool) {
	code, body := get(url)
	if code != 200 {
		return 0, false
	}
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// queueList runs `sluice queue list` and reads its output: lines > 0 stops
// after that many lines and closes the pipe (as `| head` does). It returns
// the time to the first line, to the end, and the command's peak RSS.
func queueList(bin, cfgPath string, lines int) (first, total time.Duration, rss int64, err error) {
	cmd := exec.Command(bin, "queue", "list", "-c", cfgPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return 0, 0, 0, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, 0, err
	}
	// The peak RSS is the child's VmHWM, polled: its rusage maxrss would
	// be this process's own (Go starts a child with CLONE_VM, and exec
	// records the shared address space's high-water mark as the child's).
	var peak atomic.Int64
	poll := func() {
		if m, err := readMem(cmd.Process.Pid); err == nil && m.HWM > peak.Load() {
			peak.Store(m.HWM)
		}
	}
	stop, polled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(polled)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			poll()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	br := bufio.NewReaderSize(out, 64<<10)
	for n := 0; lines == 0 || n < lines; n++ {
		if _, err := br.ReadSlice('\n'); err != nil && err != bufio.ErrBufferFull {
			break
		}
		if n == 0 {
			first = time.Since(start)
		}
	}
	poll() // with `| head` the child lives until the pipe closes
	out.Close()
	total = time.Since(start)
	werr := cmd.Wait()
	close(stop)
	<-polled
	rss = peak.Load()
	if werr != nil && lines == 0 {
		return first, total, rss, fmt.Errorf("sluice queue list: %w", werr)
	}
	return first, total, rss, nil
}

// startSinkAt is startSink on a given address: in the queue mode the
// upstream is down (nothing listens there) until the drain.
func startSinkAt(addr string) (*sink, error) {
	var ln net.Listener
	var err error
	for range 50 { // the port was free when the config was written
		if ln, err = net.Listen("tcp", addr); err == nil {
			return serveSink(ln), nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil, fmt.Errorf("sink: listen %s: %w", addr, err)
}
