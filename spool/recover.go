package spool

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Recover reads the spool back after a start, a crash or a power cut, and
// calls fn for every message still to deliver (its State counts the
// unrecorded first attempt). On the way it removes drafts and probes (never
// acknowledged), orphan state logs, and messages whose recipients all have
// a final outcome; moves unreadable files to Dir/corrupt/; and takes free
// files back into the pool, emptied. Everything it changed is made durable
// before it returns and before a free file is written over.
func (s *Spool) Recover(fn func(*Message)) error {
	sn, err := s.Scan()
	if err != nil {
		return err
	}
	return sn.Recover(func(m *Message) bool { fn(m); return true })
}

// Snapshot is the spool's directory listing taken before this process
// wrote anything: what recovery works through. Taking it first lets a
// daemon accept mail while it recovers in the background — every name
// written after the snapshot is this process's own, and not in it.
type Snapshot struct {
	s     *Spool
	names []string
	have  map[string]bool
}

// Scan lists the spool for Snapshot.Recover (one readdir, no file read).
func (s *Spool) Scan() (*Snapshot, error) {
	names, err := s.fs.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("spool: read %s: %w", s.dir, err)
	}
	have := make(map[string]bool, len(names))
	for _, n := range names {
		have[n] = true
	}
	// A log whose message is still staged by an interrupted import is not
	// an orphan: the import moves the log first.
	staged, _ := s.fs.ReadDir(s.stageDir())
	for _, n := range staged {
		have[n] = true
	}
	return &Snapshot{s: s, names: names, have: have}, nil
}

// Len is the number of names in the snapshot (messages, logs, free files).
func (sn *Snapshot) Len() int { return len(sn.names) }

// Recover is Spool.Recover over the snapshot; fn returning false stops it
// (the spool is closing): what was done so far is safe, the rest is done at
// the next start. A message that went away meanwhile (deleted by a control
// action) is skipped.
func (sn *Snapshot) Recover(fn func(*Message) bool) error {
	s, names, have := sn.s, sn.names, sn.have
	sn.names, sn.have = nil, nil // a million names need not outlive recovery
	var free []string
	for _, name := range names {
		switch {
		case strings.HasPrefix(name, freePrefix):
			free = append(free, name)
		case isTemp(name):
			s.fs.Remove(s.path(name))
			s.log.Info("spool: removed unacknowledged draft", "file", name)
		case strings.HasSuffix(name, stateSuffix):
			if !have[strings.TrimSuffix(name, stateSuffix)] {
				s.fs.Remove(s.path(name))
			}
		case !ValidID(name):
			s.moveCorrupt(name, errNotID)
		default:
			m, err := s.Read(name)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if errors.Is(err, ErrCorrupt) {
				s.moveCorrupt(name, err)
				if have[name+stateSuffix] {
					s.moveCorrupt(name+stateSuffix, errors.New("state of a corrupt message"))
				}
				continue
			}
			if err != nil {
				return err
			}
			st := m.State()
			pending := 0
			for _, to := range m.Env.To {
				if st.RcptState(to) == StatePending {
					pending++
				}
			}
			if pending == 0 { // finished before the crash; its removal was not yet durable
				fname, err := s.unlink(name)
				if err != nil {
					return err
				}
				s.fs.Remove(s.path(name + stateSuffix))
				if fname != "" {
					free = append(free, fname)
				}
				continue
			}
			if !fn(m) {
				return nil
			}
		}
	}
	// One directory fsync covers every removal and rename above, and the
	// free names found: after a kill -9 a free name may still be only in
	// the page cache, and writing over the file before it is durable could
	// bring the finished message's name back over new bytes.
	if err := s.syncDir(); err != nil {
		return fmt.Errorf("spool: fsync spool directory: %w", err)
	}
	for _, name := range free {
		s.recycle(name, nil)
	}
	if err := s.recoverStaged(); err != nil {
		return fmt.Errorf("spool: fsync %s: %w", s.stageDir(), err)
	}
	return nil
}
