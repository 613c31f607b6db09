// Package durable writes small files whole or not at all.
package durable

import "os"

// WriteFile replaces path with data: written to path+".tmp" (mode 0600),
// fsync'd, then renamed over path, so a crash leaves the old file or the new
// one, never a part. On failure the temp file is removed. The directory is
// not fsync'd: the caller does that when the rename itself must survive a
// crash.
func WriteFile(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
