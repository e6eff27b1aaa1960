// Package binfile installs the executables peapod carries (the pause, the
// shim) in a directory they can run from (Dir), named by their content
// hash: an upgrade never runs a stale one, and running processes keep
// theirs.
package binfile

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Install writes the content that open returns to dir/<name>-<hash> with
// mode 0755, unless that file is there already, and returns its path. It
// reads the content twice (hash, then copy) and never holds it in memory.
func Install(dir, name string, open func() (io.ReadCloser, error)) (string, error) {
	src, err := open()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	size, err := io.Copy(h, src)
	src.Close()
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	dst := filepath.Join(dir, name+"-"+hex.EncodeToString(h.Sum(nil))[:12])
	if st, err := os.Stat(dst); err == nil && st.Mode().IsRegular() && st.Size() == size {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if src, err = open(); err != nil {
		return "", err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(dir, "."+name+"-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return dst, os.Rename(tmp.Name(), dst)
}

// Dir returns the first of dirs, made if need be, whose file system lets
// programs run from it: one not mounted noexec. systemd mounts /run, where
// the state dir lives by default, noexec; so may an operator /tmp or
// /var. The error names each dir and why it was passed over.
func Dir(dirs ...string) (string, error) {
	var why []string
	for _, d := range dirs {
		if err := Runnable(d); err != nil {
			why = append(why, err.Error())
			continue
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			why = append(why, err.Error())
			continue
		}
		return d, nil
	}
	return "", fmt.Errorf("no directory where peapod's own programs (pause, shim) could run: %s; give --state or --root on a file system mounted without noexec", strings.Join(why, "; "))
}

// Runnable says why programs in dir could not run (its file system is
// mounted noexec), or nil. A dir that does not exist yet is judged by its
// nearest existing parent, where it would be made; Runnable makes nothing.
func Runnable(dir string) error {
	d := dir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(d, &st)
		if errors.Is(err, unix.ENOENT) && d != filepath.Dir(d) {
			d = filepath.Dir(d)
			continue
		}
		if err != nil {
			return fmt.Errorf("statfs %s: %w", d, err)
		}
		if st.Flags&unix.ST_NOEXEC != 0 {
			return fmt.Errorf("%s is on a file system mounted noexec", dir)
		}
		return nil
	}
}

// Prune removes from dir what an earlier peapod installed there and nothing
// uses any more: programs of other versions (other hashes) and the
// temporaries of an Install that was cut short. A file is in use when a
// process runs it or names it on its command line (a shim names its helper
// there, to run it later); keep lists this version's programs. Without
// Prune, <root>/bin would keep every version a node ever ran. It returns the
// paths it removed.
func Prune(dir string, keep ...string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var candidates []string
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if e.Type().IsRegular() && !slices.Contains(keep, p) {
			candidates = append(candidates, p)
		}
	}
	if len(candidates) == 0 {
		return nil, nil
	}
	used := inUse(dir)
	var removed []string
	var errs []error
	for _, p := range candidates {
		if used[p] {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}

// inUse lists the files of dir that a process runs or names as an argument.
func inUse(dir string) map[string]bool {
	used := map[string]bool{}
	prefix := dir + "/"
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, proc := range procs {
		if exe, err := os.Readlink(proc + "/exe"); err == nil && strings.HasPrefix(exe, prefix) {
			used[strings.TrimSuffix(exe, " (deleted)")] = true
		}
		b, err := os.ReadFile(proc + "/cmdline")
		if err != nil {
			continue
		}
		for _, arg := range strings.Split(string(b), "\x00") {
			if strings.HasPrefix(arg, prefix) {
				used[arg] = true
			}
		}
	}
	return used
}
