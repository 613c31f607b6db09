package spool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// ImportResult counts what Import did.
type ImportResult struct {
	Imported int      // messages moved into this spool
	Finished int      // messages left in the source: every recipient already final
	Skipped  []string // messages left in the source, with the reason
}

// Import adopts the messages of another spool, srcDir (the Options.Dir of
// an instance that died for good), with their envelopes, signatures and
// state logs (attempt counts, holds, recipients already done). Only one
// process may work on this spool meanwhile (queue.Import holds the daemon's
// control socket). Each message is, at every moment, in exactly one of three
// places, and each move is durable before the next:
//
//  1. copied into Dir/import/ (file and log), fsync'd, the directory fsync'd;
//  2. removed from srcDir, its directory fsync'd: Dir/import/ holds the only copy;
//  3. renamed into Dir/msg/ (log first), msg/ then import/ fsync'd.
//
// Killed or cut at any point, a second run finishes the job: a staged copy
// whose source is still there is copied again (the source is the truth
// until step 2), one whose source is gone is committed. A message is thus
// neither lost nor duplicated, and never delivered from two spools.
func (s *Spool) Import(srcDir string) (ImportResult, error) {
	var res ImportResult
	src := View(srcDir, Options{FS: s.fs, Logger: s.log, Now: s.now})
	if sa, err := filepath.Abs(src.dir); err == nil {
		if ta, err := filepath.Abs(s.dir); err == nil && sa == ta {
			return res, fmt.Errorf("spool: import %s: that is this spool", srcDir)
		}
	}
	stage := s.stageDir()
	if err := s.fs.MkdirAll(stage, 0o700); err != nil {
		return res, fmt.Errorf("spool: create %s: %w", stage, err)
	}
	// A message the source committed into a free file whose rename a
	// crash lost is a message too (recoverSlots).
	if err := src.adoptSlots(); err != nil {
		return res, err
	}
	srcIDs, err := src.IDs()
	if err != nil {
		return res, err
	}
	inSrc := map[string]bool{}
	for _, id := range srcIDs {
		inSrc[id] = true
	}

	// What a previous run left staged: committed if its source is gone,
	// else copied again below.
	staged, err := s.fs.ReadDir(stage)
	if err != nil {
		return res, fmt.Errorf("spool: read %s: %w", stage, err)
	}
	var commit []string
	for _, name := range staged {
		if !ValidID(name) {
			continue
		}
		if inSrc[name] {
			continue // overwritten by the copy below
		}
		if s.exists(s.path(name)) {
			s.dropStaged(name) // committed already; a power cut kept the staged name
			continue
		}
		commit = append(commit, name)
	}
	n, err := s.commitStaged(commit)
	res.Imported += n
	if err != nil {
		return res, err
	}

	// Step 1: copy every message still to deliver.
	var copied []string
	for _, id := range srcIDs {
		if s.exists(s.path(id)) {
			res.Skipped = append(res.Skipped, id+": a message with this ID is already in this spool")
			continue
		}
		m, err := src.Read(id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s: %v", id, err))
			continue
		}
		if m.finished() {
			res.Finished++
			continue
		}
		if err := s.copyFile(src.path(id), filepath.Join(stage, id)); err != nil {
			return res, err
		}
		if m.HasLog {
			if err := s.copyFile(src.path(id+stateSuffix), filepath.Join(stage, id+stateSuffix)); err != nil {
				return res, err
			}
		} else {
			s.fs.Remove(filepath.Join(stage, id+stateSuffix)) // a stale one from an earlier run
		}
		copied = append(copied, id)
	}
	if len(copied) == 0 {
		return res, nil
	}
	if err := syncDir(s.fs, stage); err != nil {
		return res, fmt.Errorf("spool: fsync %s: %w", stage, err)
	}
	// Step 2: the source lets go; from here the staged copy is the message.
	for _, id := range copied {
		if err := src.fs.Remove(src.path(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("spool: import: remove %s from %s: %w", id, srcDir, err)
		}
		src.fs.Remove(src.path(id + stateSuffix))
	}
	if err := syncDir(s.fs, src.dir); err != nil {
		return res, fmt.Errorf("spool: fsync %s: %w", src.dir, err)
	}
	// Step 3.
	n, err = s.commitStaged(copied)
	res.Imported += n
	return res, err
}

func (s *Spool) stageDir() string { return filepath.Join(s.root, "import") }

// commitStaged moves staged messages into the spool (each log before its
// message, so a message never arrives without its history) and makes it
// durable.
func (s *Spool) commitStaged(ids []string) (int, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	stage := s.stageDir()
	for _, id := range ids {
		st := filepath.Join(stage, id+stateSuffix)
		if s.exists(st) {
			if err := s.fs.Rename(st, s.path(id+stateSuffix)); err != nil {
				return 0, fmt.Errorf("spool: import %s: %w", id, err)
			}
		}
		if err := s.fs.Rename(filepath.Join(stage, id), s.path(id)); err != nil {
			return 0, fmt.Errorf("spool: import %s: %w", id, err)
		}
	}
	// The staged names may survive a power cut beside the committed ones:
	// Recover, which runs before anything is delivered, fsyncs the staging
	// directory (and removes such leftovers).
	if err := s.syncDir(); err != nil {
		return 0, fmt.Errorf("spool: fsync spool directory: %w", err)
	}
	return len(ids), nil
}

// dropStaged removes a staged copy (and its log).
func (s *Spool) dropStaged(id string) {
	s.fs.Remove(filepath.Join(s.stageDir(), id))
	s.fs.Remove(filepath.Join(s.stageDir(), id+stateSuffix))
}

// copyFile copies src to dst (created or truncated) and fsyncs dst.
func (s *Spool) copyFile(src, dst string) error {
	in, err := s.fs.OpenFile(src, os.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("spool: import: %w", err)
	}
	defer in.Close()
	out, err := s.fs.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("spool: import: %w", err)
	}
	_, err = io.Copy(struct{ io.Writer }{out}, struct{ io.Reader }{in})
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("spool: import: copy %s: %w", filepath.Base(src), err)
	}
	return nil
}

func (s *Spool) exists(path string) bool {
	f, err := s.fs.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// finished reports a message whose recipients all have a final outcome.
func (m *Message) finished() bool {
	st := m.State()
	for _, to := range m.Env.To {
		if st.RcptState(to) == StatePending {
			return false
		}
	}
	return true
}

// recoverStaged, at Recover: a staged copy whose message is already in
// msg/ is a leftover of a committed import (removed); any other means an
// import was interrupted — only `sluice queue import` may finish it, since
// only it knows the source.
func (s *Spool) recoverStaged() error {
	names, err := s.fs.ReadDir(s.stageDir())
	if err != nil {
		return nil // no import ever ran here
	}
	var waiting []string
	for _, name := range names {
		id := strings.TrimSuffix(name, stateSuffix)
		if !ValidID(id) {
			continue
		}
		if s.exists(s.path(id)) {
			s.fs.Remove(filepath.Join(s.stageDir(), name))
			continue
		}
		if name == id {
			waiting = append(waiting, id)
		}
	}
	// Always, not only after a removal here: a commit's renames out of the
	// staging directory (this run's, or a killed run's, still only in the
	// page cache) must be durable before the message can be delivered and
	// finished; else a power cut could bring a staged name back alone, and
	// the next import would commit a delivered message again.
	if err := syncDir(s.fs, s.stageDir()); err != nil {
		return err
	}
	if len(waiting) > 0 {
		s.log.Warn("spool: an import was interrupted; run `sluice queue import DIR` again with the same DIR to finish it", "staged", len(waiting))
	}
	return nil
}
