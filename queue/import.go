package queue

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicemail/sluice/spool"
)

// ErrDaemonRunning means a serve process holds this spool.
var ErrDaemonRunning = errors.New("queue: the daemon is running")

// Import adopts the spool of an instance that died for good (srcDir: its
// state_dir, or that state_dir's spool directory) into the spool of opts,
// with spool.Import's guarantees. It opens the spool as the daemon does —
// recovery, and the control socket bound — so it refuses to run while a
// daemon serves this spool, and no daemon can start until it is done; the
// daemon delivers the adopted messages when it next starts.
func Import(opts Options, srcDir string) (spool.ImportResult, error) {
	if opts.ControlSocket != "" {
		if c, err := net.DialTimeout("unix", opts.ControlSocket, time.Second); err == nil {
			c.Close()
			return spool.ImportResult{}, fmt.Errorf("%w (%s): stop it, run the import, then start it again", ErrDaemonRunning, opts.ControlSocket)
		}
	}
	if fi, err := os.Stat(filepath.Join(srcDir, "spool", "msg")); err == nil && fi.IsDir() {
		srcDir = filepath.Join(srcDir, "spool")
	}
	if fi, err := os.Stat(filepath.Join(srcDir, "msg")); err != nil || !fi.IsDir() {
		return spool.ImportResult{}, fmt.Errorf("queue: import: %s holds no spool (no msg/ directory in it or in its spool/)", srcDir)
	}
	q, err := Open(opts)
	if err != nil {
		return spool.ImportResult{}, err
	}
	defer q.Close()
	res, err := q.spool.Import(srcDir)
	q.log.Info("queue: spool imported", "from", srcDir, "imported", res.Imported, "finished_left", res.Finished, "skipped", len(res.Skipped), "err", err)
	return res, err
}
