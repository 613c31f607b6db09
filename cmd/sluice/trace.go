package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/journal"
)

const traceUsage = "usage: sluice trace QUERY [--since 24h] [--json] [-c FILE | --state-dir DIR]\n" +
	"  QUERY: a queue ID, a Message-ID (with or without <>), or an envelope sender or recipient address"

// runTrace prints what happened to the messages a query finds in the
// journal (DESIGN §8.1). It reads the journal's files, so it works whether
// or not serve runs. Exit 0 when something matched, 1 when nothing did.
func runTrace(args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs, path := newFlags("trace")
	since := fs.String("since", "", "only messages with an event in this last period (e.g. 24h, 7d); default: all the journal keeps")
	asJSON := fs.Bool("json", false, "one JSON object per event per line")
	dev := fs.Bool("dev", false, "the --dev mode's journal")
	stateDir := fs.String("state-dir", "", "the daemon's state_dir, instead of reading it from the config")
	pos, err := parseFlags(fs, args)
	if err != nil || len(pos) != 1 || strings.TrimSpace(pos[0]) == "" {
		return usageErr(stderr, traceUsage)
	}
	var from time.Time
	if *since != "" {
		d, err := config.ParseDuration(*since)
		if err != nil || d <= 0 {
			return usageErr(stderr, "sluice trace: --since %q is not a duration\n%s", *since, traceUsage)
		}
		from = time.Now().Add(-d)
	}
	cfg, err := stateConfig(*path, *dev, *stateDir)
	if err != nil {
		return err
	}
	res, err := journal.TraceDir(journalDir(cfg), pos[0], from)
	if err != nil {
		return err
	}
	if len(res.Trails) == 0 {
		return &exitError{code: 1, msg: fmt.Sprintf("sluice trace: no message matches %q", pos[0])}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		for _, t := range res.Trails {
			for _, e := range t.Events {
				if err := enc.Encode(e); err != nil {
					return err
				}
			}
		}
	} else {
		for _, t := range res.Trails {
			io.WriteString(stdout, formatTrail(t))
		}
	}
	if res.Truncated {
		fmt.Fprintf(stderr, "sluice trace: more than %d messages match; the newest are shown (narrow with --since)\n", journal.MaxTrails)
	}
	return nil
}

// formatTrail renders one message: a line `QUEUE-ID <message-id> from
// SENDER`, then one indented line per event, oldest first.
func formatTrail(t journal.Trail) string {
	var b strings.Builder
	qid := t.QueueID
	if qid == "" {
		qid = "-"
	}
	sender := t.Sender
	if sender == "" {
		sender = "<>"
	}
	fmt.Fprintf(&b, "%s <%s> from %s\n", qid, t.MessageID, sender)
	for _, e := range t.Events {
		b.WriteString("  ")
		b.WriteString(e.Time.Format(time.RFC3339))
		b.WriteString(" ")
		b.WriteString(e.Event)
		for _, kv := range e.Fields() {
			b.WriteString(" " + kv[0] + "=" + quoteIfNeeded(kv[1]))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// quoteIfNeeded quotes values with spaces, quotes or control characters,
// so each line stays one line and splits on spaces.
func quoteIfNeeded(s string) string {
	for _, r := range s {
		if r <= ' ' || r == '"' || r == '\\' || r == 0x7f || !strconv.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}
