// Package suppress closes the bounce loop (DESIGN §8.2): the suppression
// list of addresses that bounced hard or complained, which the relay
// consults at RCPT and the queue feeds with its own 5.1.x/5.2.1 outcomes,
// and the Message-ID index that lets a provider's later report find the
// message it is about. Both live in a Store: a local log in state_dir, or
// Redis when several instances must share them (DESIGN §6).
package suppress

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Store is a small key-value map whose entries expire. Values are opaque
// bytes (JSON in practice).
type Store interface {
	Get(ctx context.Context, key string) ([]byte, bool, error)
	Put(ctx context.Context, key string, val []byte, ttl time.Duration) error
	// PutNX stores val only when key is absent (or expired); it reports
	// whether it did. It is the claim that makes a DSN go out once.
	PutNX(ctx context.Context, key string, val []byte, ttl time.Duration) (bool, error)
	Delete(ctx context.Context, key string) (bool, error)
	// Scan calls fn for every live key starting with prefix, in no order.
	Scan(ctx context.Context, prefix string, fn func(key string, val []byte)) error
	Close() error
}

// ErrLocked means another process (a running daemon) holds the file.
var ErrLocked = errors.New("suppress: the file is in use by a running daemon")

// FileStore keeps the map in memory and appends every change to a log
// file, replayed at open and compacted (rewritten atomically) when dead
// lines outnumber live entries. With Sync each change is fsync'd before
// the call returns; without it a crash may lose the last changes, which is
// acceptable for the index (an event then goes unmatched) but not for the
// list.
type FileStore struct {
	path string
	sync bool
	now  func() time.Time

	mu    sync.Mutex
	m     map[string]fileItem
	f     *os.File
	lines int       // lines in the log, live or dead
	swept time.Time // last sweep of expired entries from m
}

type fileItem struct {
	val []byte
	exp time.Time
}

// logLine is one change. V is the value as a string (JSON in practice).
type logLine struct {
	Op  string `json:"op"` // put | del
	K   string `json:"k"`
	V   string `json:"v,omitempty"`
	Exp int64  `json:"exp,omitempty"` // unix seconds; 0: never
}

// OpenFile opens (creating) the log at path and takes an exclusive lock on
// it, so that an offline command cannot write under a running daemon.
func OpenFile(path string, sync bool, now func() time.Time) (*FileStore, error) {
	if now == nil {
		now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("suppress: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("suppress: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s)", ErrLocked, path)
		}
		return nil, fmt.Errorf("suppress: lock %s: %w", path, err)
	}
	s := &FileStore{path: path, sync: sync, now: now, m: map[string]fileItem{}, f: f}
	if err := s.replay(); err != nil {
		f.Close()
		return nil, err
	}
	if s.lines > 2*len(s.m)+64 {
		if err := s.compactLocked(); err != nil {
			s.f.Close()
			return nil, err
		}
	}
	return s, nil
}

// replay applies the log. A torn last line (a crash mid-append) is
// ignored; it was never acknowledged.
func (s *FileStore) replay() error {
	if _, err := s.f.Seek(0, 0); err != nil {
		return fmt.Errorf("suppress: read %s: %w", s.path, err)
	}
	sc := bufio.NewScanner(s.f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	now := s.now()
	for sc.Scan() {
		s.lines++
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.K == "" {
			continue
		}
		switch l.Op {
		case "put":
			it := fileItem{val: []byte(l.V)}
			if l.Exp != 0 {
				it.exp = time.Unix(l.Exp, 0)
			}
			if it.exp.IsZero() || it.exp.After(now) {
				s.m[l.K] = it
			} else {
				delete(s.m, l.K)
			}
		case "del":
			delete(s.m, l.K)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("suppress: read %s: %w", s.path, err)
	}
	return nil
}

func (s *FileStore) live(it fileItem, now time.Time) bool {
	return it.exp.IsZero() || it.exp.After(now)
}

// appendLocked writes one change, synced when the store is.
func (s *FileStore) appendLocked(l logLine) error {
	if s.f == nil {
		return errors.New("suppress: store closed")
	}
	b, _ := json.Marshal(l)
	b = append(b, '\n')
	if _, err := s.f.Write(b); err != nil {
		return fmt.Errorf("suppress: write %s: %w", s.path, err)
	}
	if s.sync {
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("suppress: fsync %s: %w", s.path, err)
		}
	}
	s.lines++
	if now := s.now(); now.Sub(s.swept) > time.Minute {
		// Expired entries leave memory here (at most once a minute); the
		// log sheds them at the next compaction, which this may trigger.
		s.swept = now
		for k, it := range s.m {
			if !s.live(it, now) {
				delete(s.m, k)
			}
		}
	}
	if s.lines > 2*len(s.m)+1024 {
		// Failing to compact loses nothing: the log still holds it all.
		_ = s.compactLocked()
	}
	return nil
}

// compactLocked rewrites the log with the live entries only: temp file,
// fsync, rename, fsync of the directory; then appends go to the new file.
// The lock moves with it: the new file is locked before the rename.
func (s *FileStore) compactLocked() error {
	now := s.now()
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".compact-*")
	if err != nil {
		return fmt.Errorf("suppress: compact %s: %w", s.path, err)
	}
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("suppress: compact %s: %w", s.path, err)
	}
	if err := syscall.Flock(int(tmp.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fail(err)
	}
	w := bufio.NewWriter(tmp)
	n := 0
	for k, it := range s.m {
		if !s.live(it, now) {
			delete(s.m, k)
			continue
		}
		l := logLine{Op: "put", K: k, V: string(it.val)}
		if !it.exp.IsZero() {
			l.Exp = it.exp.Unix()
		}
		b, _ := json.Marshal(l)
		w.Write(b)
		w.WriteByte('\n')
		n++
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), s.path); err != nil {
		return fail(err)
	}
	if d, err := os.Open(filepath.Dir(s.path)); err == nil {
		d.Sync()
		d.Close()
	}
	s.f.Close()
	// tmp was opened read-write; appends need O_APPEND semantics, which
	// Seek to the end gives a single writer just as well.
	if _, err := tmp.Seek(0, 2); err != nil {
		tmp.Close()
		s.f = nil
		return fmt.Errorf("suppress: compact %s: %w", s.path, err)
	}
	s.f = tmp
	s.lines = n
	return nil
}

func (s *FileStore) Get(_ context.Context, key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.m[key]
	if !ok || !s.live(it, s.now()) {
		return nil, false, nil
	}
	return it.val, true, nil
}

func (s *FileStore) Put(_ context.Context, key string, val []byte, ttl time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.putLocked(key, val, ttl)
}

func (s *FileStore) putLocked(key string, val []byte, ttl time.Duration) error {
	it := fileItem{val: append([]byte(nil), val...)}
	l := logLine{Op: "put", K: key, V: string(val)}
	if ttl > 0 {
		it.exp = s.now().Add(ttl)
		l.Exp = it.exp.Unix()
	}
	if err := s.appendLocked(l); err != nil {
		return err
	}
	s.m[key] = it
	return nil
}

func (s *FileStore) PutNX(_ context.Context, key string, val []byte, ttl time.Duration) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if it, ok := s.m[key]; ok && s.live(it, s.now()) {
		return false, nil
	}
	if err := s.putLocked(key, val, ttl); err != nil {
		return false, err
	}
	return true, nil
}

func (s *FileStore) Delete(_ context.Context, key string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	it, ok := s.m[key]
	if !ok {
		return false, nil
	}
	if err := s.appendLocked(logLine{Op: "del", K: key}); err != nil {
		return false, err
	}
	delete(s.m, key)
	return s.live(it, s.now()), nil
}

func (s *FileStore) Scan(_ context.Context, prefix string, fn func(string, []byte)) error {
	s.mu.Lock()
	now := s.now()
	type kv struct {
		k string
		v []byte
	}
	var out []kv
	for k, it := range s.m {
		if strings.HasPrefix(k, prefix) && s.live(it, now) {
			out = append(out, kv{k, it.val})
		}
	}
	s.mu.Unlock()
	for _, e := range out {
		fn(e.k, e.v)
	}
	return nil
}

// Close releases the file and its lock.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
