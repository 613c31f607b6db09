package spool

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// FS is the file-system seam: every byte and name the spool writes goes
// through it, so tests can stand a simulated disk in its place that forgets,
// at a power cut, whatever an fsync did not cover (powerloss_test.go).
// Names are full paths. A directory is synced by opening it and calling Sync.
type FS interface {
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	// ReadDir returns the names in a directory, in any order.
	ReadDir(name string) ([]string, error)
	MkdirAll(path string, perm fs.FileMode) error
}

// File is an open file (or, for Sync, a directory); *os.File is one.
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Stat() (fs.FileInfo, error)
	Close() error
}

// datasync is fdatasync(2) for a real file, Sync for any other: it makes
// the data durable with the metadata needed to read it back (length,
// blocks), not the modification time, whose inode write fsync would add.
func datasync(f File) error {
	of, ok := f.(*os.File)
	if !ok {
		return f.Sync()
	}
	rc, err := of.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		_, serr = ignoringEINTR(func() (int, error) { return 0, syscall.Fdatasync(int(fd)) })
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: of.Name(), Err: serr}
	}
	return nil
}

// readEnvelopeFD is readEnvelope for recovery on the real file system,
// through a bare descriptor (open, fstat, pread, close): *os.File's
// bookkeeping at each open (a try at the poller, which refuses a regular
// file, four fcntl calls, a finalizer) cost more CPU than the open itself,
// and recovery opens every queued message once. With a million queued and
// a cold page cache, recovery is bound by the CPU of these system calls.
func readEnvelopeFD(path string) (*Envelope, int64, int, error) {
	fd, err := ignoringEINTR(func() (int, error) { return syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0) })
	if err != nil {
		return nil, 0, 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, 0, 0, &os.PathError{Op: "fstat", Path: path, Err: err}
	}
	return readEnvelopeAt(fdReader{fd, path}, st.Size)
}

func ignoringEINTR(fn func() (int, error)) (int, error) {
	for {
		n, err := fn()
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// fdReader reads a bare descriptor at offsets (pread).
type fdReader struct {
	fd   int
	path string
}

func (r fdReader) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := ignoringEINTR(func() (int, error) { return syscall.Pread(r.fd, p[done:], off+int64(done)) })
		if err != nil {
			return done, &os.PathError{Op: "read", Path: r.path, Err: err}
		}
		if n == 0 {
			return done, io.ErrUnexpectedEOF
		}
		done += n
	}
	return done, nil
}

// OS is the real file system.
var OS FS = osFS{}

type osFS struct{}

func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return f, nil
}

// Rename is rename(2) itself: os.Rename first stats the target, a system
// call per commit the spool does not need.
func (osFS) Rename(oldpath, newpath string) error {
	if err := syscall.Rename(oldpath, newpath); err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
	return nil
}

func (osFS) Remove(name string) error { return os.Remove(name) }

func (osFS) MkdirAll(path string, perm fs.FileMode) error { return os.MkdirAll(path, perm) }

func (osFS) ReadDir(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

// SyncDir fsyncs a directory of the real file system (for the queue's
// other durable files, e.g. webhook events).
func SyncDir(dir string) error { return syncDir(OS, dir) }

// walkDir reads a directory 1,024 names at a time (Spool.Walk).
func (osFS) walkDir(dir string, fn func(names []string) error) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", dir, err)
	}
	defer f.Close()
	for {
		names, err := f.Readdirnames(1024)
		if len(names) > 0 {
			if err := fn(names); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("spool: read %s: %w", dir, err)
		}
	}
}

// appendFile appends b to path, creating the file if need be, and with
// sync fsyncs it. created says the file was empty before: most likely just
// made, so its name needs a directory fsync too (the caller's).
func appendFile(fsys FS, path string, b []byte, sync bool) (created bool, err error) {
	f, err := fsys.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return false, err
	}
	st, err := f.Stat()
	created = err == nil && st.Size() == 0
	if err == nil {
		_, err = f.Write(b)
	}
	if err == nil && sync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return created, err
}

// replaceFile replaces path with b atomically: a temporary file beside it,
// fsync'd, renamed over it, and the directory dir fsync'd. On error path is
// as it was. internal/durable.WriteFile does the same on the OS; this one goes
// through the FS seam, where the power-loss tests cut it at every step.
func replaceFile(fsys FS, dir, path string, b []byte) error {
	tmp := path + tmpSuffix
	f, err := fsys.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(fsys, dir)
	}
	if err != nil {
		fsys.Remove(tmp)
	}
	return err
}

// syncDir fsyncs a directory with a descriptor of its own.
func syncDir(fsys FS, dir string) error {
	f, err := fsys.OpenFile(dir, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
