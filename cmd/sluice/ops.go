package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/policy"
	"github.com/sluicemail/sluice/queue"
	"github.com/sluicemail/sluice/signing"
	"github.com/sluicemail/sluice/upstream"
)

const queueUsage = "usage: sluice queue list [--json] | show ID | retry ID|--all | hold ID | release ID | delete ID [--silent] | flush | import DIR   [-c FILE | --state-dir DIR]"

// runQueue inspects the spool directly (the files are the truth) and sends
// actions to the running daemon over its control socket, or applies them to
// the files when no daemon runs.
func runQueue(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("queue", flag.ContinueOnError)
	path := fs.String("c", defaultConfig, "configuration file")
	asJSON := fs.Bool("json", false, "list: one JSON object per line")
	all := fs.Bool("all", false, "retry: every message")
	silent := fs.Bool("silent", false, "delete: without a bounce")
	dev := fs.Bool("dev", false, "the --dev mode's queue")
	stateDir := fs.String("state-dir", "", "the daemon's state_dir, instead of reading it from the config (which may need the daemon's secrets)")
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) == 0 {
		return usageErr(stderr, queueUsage)
	}
	cfg, err := stateConfig(*path, *dev, *stateDir)
	if err != nil {
		return err
	}
	dir := filepath.Join(cfg.StateDir, "spool")
	switch pos[0] {
	case "list":
		// Both outputs stream as the spool is read, in directory order: the
		// first line comes at once and memory does not grow with the queue.
		walk := func(fn func(queue.Info) error) error { return queue.Walk(dir, fn) }
		if *asJSON {
			bw := bufio.NewWriter(stdout)
			enc := json.NewEncoder(bw)
			err := walk(func(i queue.Info) error { return enc.Encode(i) })
			if ferr := bw.Flush(); err == nil {
				err = ferr
			}
			return err
		}
		return writeList(stdout, walk, time.Now())
	case "show":
		if len(pos) != 2 {
			return usageErr(stderr, queueUsage)
		}
		d, err := queue.Show(dir, pos[1])
		if err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(d)
		}
		b, err := json.MarshalIndent(d, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	case "import":
		if len(pos) != 2 {
			return usageErr(stderr, queueUsage)
		}
		return runImport(cfg, pos[1], stdout, stderr)
	case "retry", "hold", "release", "delete", "flush":
		req := queue.Request{Action: queue.Action(pos[0]), All: *all, Silent: *silent}
		if len(pos) > 2 {
			return usageErr(stderr, queueUsage)
		}
		if len(pos) == 2 {
			req.ID = pos[1]
		}
		if err := req.Check(); err != nil {
			return usageErr(stderr, "%v\n%s", err, queueUsage)
		}
		jr := &offlineJournal{cfg: cfg}
		defer jr.Close()
		out, err := queue.Do(queue.Options{
			Dir:           dir,
			Config:        cfg.Queue,
			Hostname:      cfg.Hostname,
			ControlSocket: filepath.Join(cfg.StateDir, "control.sock"),
			Journal:       jr,
		}, req)
		fmt.Fprint(stdout, out)
		return err
	}
	return usageErr(stderr, queueUsage)
}

// formatList renders infos as the `sluice queue list` table, ages and next
// attempts relative to now.
func formatList(infos []queue.Info, now time.Time) string {
	var b strings.Builder
	writeList(&b, func(fn func(queue.Info) error) error {
		for _, in := range infos {
			if err := fn(in); err != nil {
				return err
			}
		}
		return nil
	}, now)
	return b.String()
}

// listHead is how many rows writeList measures together before printing
// anything: the columns of a short queue align as a tabwriter's would.
const listHead = 100

// writeList prints the `sluice queue list` table as walk yields messages:
// the header and the first listHead rows once they are read (or the walk
// ended), aligned to their widest cells, then every row at once, padded to
// the widest cell seen so far (a wider one pushes only its own line). So
// the first lines come at once and memory stays flat, with a million
// messages queued as with ten; a final line counts them.
func writeList(w io.Writer, walk func(func(queue.Info) error) error, now time.Time) error {
	bw := bufio.NewWriter(w)
	var widths []int
	var head [][]string
	n := 0
	emit := func(row []string) {
		for i, c := range row {
			if i == len(row)-1 {
				bw.WriteString(c)
				break
			}
			bw.WriteString(c)
			for pad := widths[i] + 2 - utf8.RuneCountInString(c); pad > 0; pad-- {
				bw.WriteByte(' ')
			}
		}
		bw.WriteByte('\n')
	}
	measure := func(row []string) {
		if widths == nil {
			widths = make([]int, len(row))
		}
		for i, c := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	flushHead := func() error {
		for _, r := range head {
			emit(r)
		}
		head = nil
		return bw.Flush()
	}
	header := []string{"ID", "AGE", "SIZE", "ATTEMPTS", "NEXT", "STATE", "SENDER", "RECIPIENTS", "LAST ERROR"}
	measure(header)
	head = append(head, header)
	err := walk(func(in queue.Info) error {
		n++
		row := listRow(in, now)
		measure(row)
		if head != nil {
			head = append(head, row)
			if len(head) > listHead {
				return flushHead()
			}
			return nil
		}
		emit(row)
		return nil
	})
	if head != nil {
		flushHead()
	}
	fmt.Fprintf(bw, "%d message(s)\n", n)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err
}

// listRow is one message's cells in the `sluice queue list` table.
func listRow(in queue.Info, now time.Time) []string {
	next := "now"
	if in.NextAttempt != nil && in.NextAttempt.After(now) {
		next = "in " + in.NextAttempt.Sub(now).Round(time.Second).String()
	}
	state := "queued"
	if in.Held {
		state, next = "held", "-"
	}
	var rc []string
	pending := 0
	for _, r := range in.Recipients {
		if r.State == queue.StatePending {
			pending++
			rc = append(rc, r.Address)
		}
	}
	if more := len(in.Recipients) - pending; more > 0 {
		rc = append(rc, fmt.Sprintf("(+%d done)", more))
	}
	sender := in.Sender
	if sender == "" {
		sender = "<>"
	}
	lastErr := in.LastError
	if len(lastErr) > 60 {
		lastErr = lastErr[:57] + "..."
	}
	return []string{in.ID, (time.Duration(in.AgeSeconds) * time.Second).String(), strconv.FormatInt(in.Size, 10),
		strconv.Itoa(in.Attempts), next, state, sender, strings.Join(rc, ","), lastErr}
}

// stateConfig is the configuration of the commands that only look at
// state_dir: with --state-dir no file is read (an operator may not have the
// secrets a full load expands); queue defaults then shape offline bounces.
func stateConfig(path string, dev bool, stateDir string) (*config.Config, error) {
	if stateDir == "" {
		return loadFor(path, dev)
	}
	host, _ := os.Hostname()
	return &config.Config{StateDir: stateDir, Hostname: host, Queue: config.Queue{Retry: config.DefaultRetry(), BounceFrom: config.DefaultBounceFrom(host)}}, nil
}

func loadFor(path string, dev bool) (*config.Config, error) {
	if dev {
		cfg, _, err := devConfig("./sluice-dev")
		return cfg, err
	}
	return loadNoSecrets(path)
}

// loadNoSecrets loads the configuration for a command that uses none of
// the upstreams' or the webhook's secrets, so an operator's shell need not
// have the daemon's environment (config.Loader.UnresolvedSecrets). Only
// serve and check-config load everything.
func loadNoSecrets(path string) (*config.Config, error) {
	return (&config.Loader{UnresolvedSecrets: true}).Load(path)
}

// runPolicy prints what the policy decides for one message; exit 0 allowed,
// 1 denied, 2 usage (DESIGN §3).
func runPolicy(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	const use = "usage: sluice policy explain --user U --from A --to B [--to C ...] [--size N] [-c FILE]"
	fs := flag.NewFlagSet("policy", flag.ContinueOnError)
	path := fs.String("c", defaultConfig, "configuration file")
	user := fs.String("user", "", "SMTP AUTH user")
	from := fs.String("from", "", "sender address")
	var to stringList
	fs.Var(&to, "to", "recipient address (repeatable, or comma-separated: each gets its route)")
	size := fs.String("size", "0", "message size (bytes, or 25MB)")
	dev := fs.Bool("dev", false, "the --dev configuration")
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) != 1 || pos[0] != "explain" || *user == "" || *from == "" || len(to) == 0 {
		return usageErr(stderr, use)
	}
	n, err := strconv.ParseInt(*size, 10, 64)
	if err != nil {
		sz, serr := config.ParseSize(*size)
		if serr != nil {
			return usageErr(stderr, "--size: %v\n%s", serr, use)
		}
		n = int64(sz)
	}
	cfg, err := loadFor(*path, *dev)
	if err != nil {
		return err
	}
	cfg.RateLimit.Redis = "" // explain decides rules; it never spends a shared token
	store := signing.NewStore(cfg.StateDir)
	eng, err := policy.New(cfg, policy.Options{ManagedKeyActive: func(domain string) bool {
		keys, _ := store.Keys(domain) // unreadable state: no active key, as the signer would see it
		for _, k := range keys {
			if k.State == signing.StateActive {
				return true
			}
		}
		return false
	}})
	if err != nil {
		return err
	}
	defer eng.Close()
	var rcpts []string
	for _, t := range to {
		for _, a := range strings.Split(t, ",") {
			if a = strings.TrimSpace(a); a != "" {
				rcpts = append(rcpts, a)
			}
		}
	}
	if len(rcpts) == 0 {
		return usageErr(stderr, use)
	}
	text, allowed := eng.Explain(*user, *from, rcpts, n)
	fmt.Fprint(stdout, text)
	if !allowed {
		return &exitError{code: 1}
	}
	return nil
}

// runUpstreams prints the state the running daemon last wrote.
func runUpstreams(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("upstreams", flag.ContinueOnError)
	path := fs.String("c", defaultConfig, "configuration file")
	dev := fs.Bool("dev", false, "the --dev configuration")
	asJSON := fs.Bool("json", false, "JSON output")
	stateDir := fs.String("state-dir", "", "the daemon's state_dir, instead of reading it from the config")
	if _, err := parseFlags(fs, args); err != nil {
		return usageErr(stderr, "usage: sluice upstreams [-c FILE | --state-dir DIR] [--json]")
	}
	cfg, err := stateConfig(*path, *dev, *stateDir)
	if err != nil {
		return err
	}
	st, err := upstream.ReadStatus(filepath.Join(cfg.StateDir, "upstreams.json"))
	if err != nil {
		return fmt.Errorf("%w (is `sluice serve` running with this configuration?)", err)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(st)
	}
	fmt.Fprint(stdout, upstream.FormatStatus(st))
	return nil
}
