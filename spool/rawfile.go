package spool

import (
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// rawFile is a read-only descriptor used without *os.File: recovery opens
// one message file (and maybe its state log) per queued message, and at a
// million os.OpenFile's bookkeeping (an attempt to register the descriptor
// with the runtime's poller, its undoing, the finalizer, the close's
// reference counting) was a third of recovery's CPU, more than the open
// itself. Only the real file system hands these out (openRead).
type rawFile struct {
	fd   int
	name string
}

// openRead opens name for reading: a rawFile on the real file system, else
// through the FS (the tests' simulated disk).
func (s *Spool) openRead(name string) (File, error) {
	if _, ok := s.fs.(osFS); !ok {
		return s.fs.OpenFile(name, os.O_RDONLY, 0)
	}
	for {
		fd, err := syscall.Open(name, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "open", Path: name, Err: err}
		}
		return &rawFile{fd: fd, name: name}, nil
	}
}

func (f *rawFile) err(op string, err error) error {
	return &fs.PathError{Op: op, Path: f.name, Err: err}
}

func (f *rawFile) Read(p []byte) (int, error) {
	for {
		n, err := syscall.Read(f.fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, f.err("read", err)
		}
		if n == 0 && len(p) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

func (f *rawFile) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := syscall.Pread(f.fd, p[done:], off+int64(done))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return done, f.err("read", err)
		}
		if n == 0 {
			return done, io.EOF
		}
		done += n
	}
	return done, nil
}

func (f *rawFile) Write([]byte) (int, error)      { return 0, f.err("write", syscall.EBADF) }
func (f *rawFile) Seek(int64, int) (int64, error) { return 0, f.err("seek", syscall.ESPIPE) }
func (f *rawFile) Truncate(int64) error           { return f.err("truncate", syscall.EBADF) }
func (f *rawFile) Sync() error                    { return f.err("sync", syscall.EBADF) }
func (f *rawFile) Close() error                   { return syscall.Close(f.fd) }
func (f *rawFile) Stat() (fs.FileInfo, error) {
	var st syscall.Stat_t
	if err := syscall.Fstat(f.fd, &st); err != nil {
		return nil, f.err("stat", err)
	}
	return rawInfo{name: f.name, st: st}, nil
}

type rawInfo struct {
	name string
	st   syscall.Stat_t
}

func (i rawInfo) Name() string       { return i.name }
func (i rawInfo) Size() int64        { return i.st.Size }
func (i rawInfo) Mode() fs.FileMode  { return fs.FileMode(i.st.Mode & 0o777) }
func (i rawInfo) ModTime() time.Time { return time.Unix(i.st.Mtim.Unix()) }
func (i rawInfo) IsDir() bool        { return i.st.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (i rawInfo) Sys() any           { return &i.st }
