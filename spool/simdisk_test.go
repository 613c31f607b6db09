package spool

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"
)

// simDisk is a file system in memory that knows what an fsync has made
// durable: a file's bytes once the file was synced, a name (creation,
// rename, removal) once its directory was synced. Power is cut after a
// given number of steps (every call that changes or syncs something is
// one); from then on every call fails, and crash returns the disk as it
// comes back, keeping or losing what no fsync covered.
//
// Directories are durable as soon as they are made (the spool makes its
// own once, before any message).
type simDisk struct {
	mu      sync.Mutex
	inodes  map[int]*inode
	dirs    map[string]*simDir
	next    int
	steps   int
	cut     int // steps allowed before the power cut; <0: never
	trace   []string
	failOps map[string]error // op name → injected error (e.g. "sync": EIO)
}

type inode struct {
	data, durable []byte
}

type simDir struct {
	names, durable map[string]int
}

var errPowerCut = errors.New("simdisk: power cut")

func newSimDisk() *simDisk {
	return &simDisk{inodes: map[int]*inode{}, dirs: map[string]*simDir{}, cut: -1}
}

// step counts one state-changing call; false means the power is cut.
func (d *simDisk) step(what string) bool {
	if d.cut >= 0 && d.steps >= d.cut {
		return false
	}
	d.steps++
	d.trace = append(d.trace, what)
	return true
}

func (d *simDisk) dead() bool { return d.cut >= 0 && d.steps >= d.cut }

// lossMode says what survives a power cut besides what fsyncs covered.
type lossMode struct {
	keepNames bool // names changed since the directory's last fsync survive
	keepData  bool // bytes written since the file's last fsync survive
}

func (m lossMode) String() string {
	return fmt.Sprintf("names:%s,data:%s", map[bool]string{true: "kept", false: "lost"}[m.keepNames], map[bool]string{true: "kept", false: "lost"}[m.keepData])
}

// lossModes: everything unsynced lost (the contract's case), and the three
// partial outcomes real disks produce (keep both: a kill -9).
var lossModes = []lossMode{{false, false}, {true, false}, {false, true}, {true, true}}

// crash returns the disk after a power cut in mode m.
func (d *simDisk) crash(m lossMode) *simDisk {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := newSimDisk()
	n.next = d.next
	for p, dir := range d.dirs {
		src := dir.durable
		if m.keepNames {
			src = dir.names
		}
		n.dirs[p] = &simDir{names: maps.Clone(src), durable: maps.Clone(src)}
		for _, ino := range src {
			if n.inodes[ino] != nil {
				continue
			}
			in := d.inodes[ino]
			b := in.durable
			if m.keepData {
				b = in.data
			}
			n.inodes[ino] = &inode{data: slices.Clone(b), durable: slices.Clone(b)}
		}
	}
	return n
}

// clone copies the disk as it is (live state and durable state).
func (d *simDisk) clone() *simDisk {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := newSimDisk()
	n.next = d.next
	for p, dir := range d.dirs {
		n.dirs[p] = &simDir{names: maps.Clone(dir.names), durable: maps.Clone(dir.durable)}
	}
	for i, in := range d.inodes {
		n.inodes[i] = &inode{data: slices.Clone(in.data), durable: slices.Clone(in.durable)}
	}
	return n
}

func pathErr(op, name string, err error) error { return &fs.PathError{Op: op, Path: name, Err: err} }

func (d *simDisk) lookup(name string) (*simDir, string, error) {
	dir := d.dirs[path.Dir(name)]
	if dir == nil {
		return nil, "", fs.ErrNotExist
	}
	return dir, path.Base(name), nil
}

// existing finds name's live entry for op, failing as the OS would (or
// after the power cut). d.mu is held.
func (d *simDisk) existing(op, name string) (dir *simDir, base string, ino int, err error) {
	if d.dead() {
		return nil, "", 0, pathErr(op, name, errPowerCut)
	}
	if dir, base, err = d.lookup(name); err != nil {
		return nil, "", 0, pathErr(op, name, err)
	}
	ino, ok := dir.names[base]
	if !ok {
		return nil, "", 0, pathErr(op, name, fs.ErrNotExist)
	}
	return dir, base, ino, nil
}

func (d *simDisk) MkdirAll(p string, perm fs.FileMode) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead() {
		return pathErr("mkdir", p, errPowerCut)
	}
	for q := path.Clean(p); ; q = path.Dir(q) {
		if d.dirs[q] == nil {
			d.dirs[q] = &simDir{names: map[string]int{}, durable: map[string]int{}}
		}
		if q == "/" || q == "." {
			return nil
		}
	}
}

func (d *simDisk) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead() {
		return nil, pathErr("open", name, errPowerCut)
	}
	if d.dirs[path.Clean(name)] != nil {
		return &simFile{d: d, name: path.Clean(name), isDir: true}, nil
	}
	dir, base, err := d.lookup(name)
	if err != nil {
		return nil, pathErr("open", name, err)
	}
	ino, ok := dir.names[base]
	switch {
	case ok && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, pathErr("open", name, fs.ErrExist)
	case !ok && flag&os.O_CREATE == 0:
		return nil, pathErr("open", name, fs.ErrNotExist)
	case !ok:
		if !d.step("create " + base) {
			return nil, pathErr("open", name, errPowerCut)
		}
		d.next++
		ino = d.next
		d.inodes[ino] = &inode{}
		dir.names[base] = ino
	case flag&os.O_TRUNC != 0:
		if !d.step("trunc " + base) {
			return nil, pathErr("open", name, errPowerCut)
		}
		d.inodes[ino].data = nil
	}
	return &simFile{d: d, name: name, ino: ino, appnd: flag&os.O_APPEND != 0}, nil
}

func (d *simDisk) Rename(oldpath, newpath string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	od, ob, ino, err := d.existing("rename", oldpath)
	if err != nil {
		return err
	}
	nd, nb, err := d.lookup(newpath)
	if err != nil {
		return pathErr("rename", newpath, err)
	}
	if !d.step("rename " + ob + " " + nb) {
		return pathErr("rename", oldpath, errPowerCut)
	}
	delete(od.names, ob)
	nd.names[nb] = ino
	return nil
}

func (d *simDisk) Remove(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	dir, base, _, err := d.existing("remove", name)
	if err != nil {
		return err
	}
	if !d.step("remove " + base) {
		return pathErr("remove", name, errPowerCut)
	}
	delete(dir.names, base)
	return nil
}

func (d *simDisk) ReadDir(name string) ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dead() {
		return nil, pathErr("readdir", name, errPowerCut)
	}
	dir := d.dirs[path.Clean(name)]
	if dir == nil {
		return nil, pathErr("readdir", name, fs.ErrNotExist)
	}
	return slices.Sorted(maps.Keys(dir.names)), nil
}

// names lists a directory's live names (for assertions).
func (d *simDisk) names(dir string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dd := d.dirs[dir]; dd != nil {
		return slices.Sorted(maps.Keys(dd.names))
	}
	return nil
}

type simFile struct {
	d      *simDisk
	name   string
	ino    int
	off    int64
	appnd  bool
	isDir  bool
	closed bool
}

func (f *simFile) check(op string) error {
	if f.closed {
		return pathErr(op, f.name, fs.ErrClosed)
	}
	if f.d.dead() {
		return pathErr(op, f.name, errPowerCut)
	}
	if err := f.d.failOps[op]; err != nil {
		return pathErr(op, f.name, err)
	}
	if f.isDir && op != "sync" && op != "close" {
		return pathErr(op, f.name, errors.New("is a directory"))
	}
	return nil
}

func (f *simFile) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *simFile) ReadAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.check("read"); err != nil {
		return 0, err
	}
	data := f.d.inodes[f.ino].data
	if off >= int64(len(data)) {
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *simFile) Write(p []byte) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if f.appnd {
		f.off = int64(len(f.d.inodes[f.ino].data))
	}
	n, err := f.writeAtLocked(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *simFile) WriteAt(p []byte, off int64) (int, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	return f.writeAtLocked(p, off)
}

func (f *simFile) writeAtLocked(p []byte, off int64) (int, error) {
	if err := f.check("write"); err != nil {
		return 0, err
	}
	if !f.d.step(fmt.Sprintf("write %s %d", path.Base(f.name), len(p))) {
		return 0, pathErr("write", f.name, errPowerCut)
	}
	in := f.d.inodes[f.ino]
	if end := off + int64(len(p)); end > int64(len(in.data)) {
		in.data = append(in.data, make([]byte, end-int64(len(in.data)))...)
	}
	copy(in.data[off:], p)
	return len(p), nil
}

func (f *simFile) Truncate(size int64) error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.check("truncate"); err != nil {
		return err
	}
	if !f.d.step(fmt.Sprintf("truncate %s %d", path.Base(f.name), size)) {
		return pathErr("truncate", f.name, errPowerCut)
	}
	in := f.d.inodes[f.ino]
	if size <= int64(len(in.data)) {
		in.data = in.data[:size:size]
	} else {
		in.data = append(in.data, make([]byte, size-int64(len(in.data)))...)
	}
	return nil
}

// Sync makes a file's bytes durable, or a directory's names.
func (f *simFile) Sync() error {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.check("sync"); err != nil {
		return err
	}
	if !f.d.step("sync " + path.Base(f.name)) {
		return pathErr("sync", f.name, errPowerCut)
	}
	if f.isDir {
		dir := f.d.dirs[f.name]
		dir.durable = maps.Clone(dir.names)
		return nil
	}
	in := f.d.inodes[f.ino]
	in.durable = slices.Clone(in.data)
	return nil
}

func (f *simFile) Stat() (fs.FileInfo, error) {
	f.d.mu.Lock()
	defer f.d.mu.Unlock()
	if err := f.check("stat"); err != nil {
		return nil, err
	}
	return simInfo{name: path.Base(f.name), size: int64(len(f.d.inodes[f.ino].data))}, nil
}

func (f *simFile) Close() error {
	if f.closed {
		return pathErr("close", f.name, fs.ErrClosed)
	}
	f.closed = true
	return nil
}

type simInfo struct {
	name string
	size int64
}

func (i simInfo) Name() string       { return i.name }
func (i simInfo) Size() int64        { return i.size }
func (i simInfo) Mode() fs.FileMode  { return 0o600 }
func (i simInfo) ModTime() time.Time { return time.Time{} }
func (i simInfo) IsDir() bool        { return false }
func (i simInfo) Sys() any           { return nil }

// traceString is the disk's steps, for failure messages.
func (d *simDisk) traceString() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	for i, s := range d.trace {
		fmt.Fprintf(&b, "%3d %s\n", i+1, s)
	}
	return b.String()
}
