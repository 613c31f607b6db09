package upstream

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// deliverMaildir writes the message to <Path>/<ID>.eml: a temp name in the
// same directory, fsync, rename, fsync the directory, so a reader never
// sees a partial file. It accepts every recipient.
func (u *upstream) deliverMaildir(m *Message, rcpts []string) txOutcome {
	out := txOutcome{rcptErrs: make([]error, len(rcpts)), reusable: true}
	if err := writeMaildir(u.cfg.Path, m); err != nil {
		out.err = &Error{Upstream: u.cfg.Name, Stage: StageData, Err: err}
	}
	return out
}

func writeMaildir(dir string, m *Message) error {
	if m.ID == "" || strings.ContainsAny(m.ID, `/\`) || m.ID == "." || m.ID == ".." {
		return fmt.Errorf("maildir: bad message id %q", m.ID)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("maildir: %w", err)
	}
	rc, err := m.Open()
	if err != nil {
		return fmt.Errorf("maildir: open message %s: %w", m.ID, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(dir, ".tmp-"+m.ID+"-*")
	if err != nil {
		return fmt.Errorf("maildir: %w", err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("maildir: write %s: %w", m.ID, err)
	}
	if _, err := io.Copy(f, rc); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("maildir: write %s: %w", m.ID, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, m.ID+".eml")); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("maildir: rename %s: %w", m.ID, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
