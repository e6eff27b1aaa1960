// Package atomicfile writes files so that a crash at any moment leaves
// either the old or the new content, never a torn file: the state records
// of sandboxes and containers and the image store's metadata depend on it.
package atomicfile

import (
	"os"
	"path/filepath"
)

// WriteFile writes data to a temporary file in the same directory, syncs
// it and renames it over path. A new file's directory is synced too, so
// the name survives a power loss; a replaced file's is not: until the
// file system commits the rename (seconds), a power loss leaves the old
// content, which is as consistent as the new, and the sync would cost
// about a millisecond on every update of a record.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	_, err := os.Lstat(path)
	existed := err == nil
	if err := write(path, data, perm, true); err != nil {
		return err
	}
	if existed {
		return nil
	}
	return SyncDir(filepath.Dir(path))
}

// Replace is WriteFile without any sync: still never a torn file for a
// process that dies, but no promise across a power loss. It is for files
// of the runtime state dir (/run), which a reboot empties anyway.
func Replace(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false)
}

func write(path string, data []byte, perm os.FileMode, sync bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if sync {
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// SyncDir makes a directory's entries (a rename, a removal) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
