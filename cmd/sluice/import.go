package main

import (
	"fmt"
	"io"
	"path/filepath"

	"github.com/sluicemail/sluice/config"
	"github.com/sluicemail/sluice/queue"
)

// runImport is `sluice queue import DIR`: adopt the spool of an instance
// that died for good (DIR: its state_dir or its spool directory) into the
// spool of cfg, exactly once, crash-safe (DESIGN §8.6, docs/scaling.md). It
// works offline: with the daemon running it refuses and says to stop it.
func runImport(cfg *config.Config, dir string, stdout, stderr io.Writer) error {
	res, err := queue.Import(queue.Options{
		Dir:           filepath.Join(cfg.StateDir, "spool"),
		Config:        cfg.Queue,
		Hostname:      cfg.Hostname,
		ControlSocket: filepath.Join(cfg.StateDir, "control.sock"),
		Logger:        newLogger(cfg.Log, stderr),
	}, dir)
	for _, s := range res.Skipped {
		fmt.Fprintf(stderr, "skipped %s\n", s)
	}
	if res.Imported > 0 || err == nil {
		fmt.Fprintf(stdout, "%d message(s) imported from %s", res.Imported, dir)
		if res.Finished > 0 {
			fmt.Fprintf(stdout, "; %d finished one(s) left there", res.Finished)
		}
		fmt.Fprintln(stdout)
	}
	if err != nil {
		return err
	}
	if len(res.Skipped) > 0 {
		return fmt.Errorf("queue import: %d message(s) skipped (left in %s)", len(res.Skipped), dir)
	}
	return nil
}
