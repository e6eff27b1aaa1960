// Package embedded carries the lean shim binary (peapod-shim, see
// shim/peapod-shim) inside peapod, as pause/embedded does the pause: a
// single peapod file is all a node needs. The Makefile builds it into
// bin/peapod-shim beside this file (with peapod's cgo and seccomp settings)
// before peapod itself is built.
//
// A peapod built without it (plain `go build`) still works: Install reports
// that none is embedded, and the daemon runs its shims as `peapod shim`,
// the same code in the whole binary.
//
// Only the daemon imports this package, never the shim: the shim binary
// must not embed (an earlier build of) itself.
package embedded

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
)

//go:embed bin
var files embed.FS

const (
	name = "peapod-shim"
	path = "bin/" + name
)

// Binary is the embedded shim executable, or nil when peapod was built
// without one. It copies the bytes; Install does not.
func Binary() []byte {
	b, err := files.ReadFile(path)
	if err != nil {
		return nil
	}
	return b
}

// ErrNone says that this peapod carries no shim binary.
var ErrNone = errors.New("no shim binary embedded in this peapod (build it with `make build`)")

// Install writes the embedded shim binary to <stateDir>/bin, named by its
// content hash so that an upgrade never runs a stale one and the shims of
// running pods keep their executable, and returns its path. It returns
// ErrNone when there is none. It streams from the embedded data: the
// daemon's heap never holds a copy of the binary.
func Install(stateDir string) (string, error) {
	size, sum, err := hashEmbedded()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(stateDir, "bin")
	dst := filepath.Join(dir, name+"-"+hex.EncodeToString(sum)[:12])
	if st, err := os.Stat(dst); err == nil && st.Mode().IsRegular() && st.Size() == size {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	src, err := files.Open(path)
	if err != nil {
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

// hashEmbedded is the size and SHA-256 of the embedded binary, or ErrNone.
func hashEmbedded() (int64, []byte, error) {
	f, err := files.Open(path)
	if err != nil {
		return 0, nil, ErrNone
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, nil, err
	}
	if n == 0 {
		return 0, nil, ErrNone
	}
	return n, h.Sum(nil), nil
}
