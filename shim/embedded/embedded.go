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
	"embed"
	"errors"
	"io"
	"path/filepath"

	"peapod/internal/binfile"
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
	if f, err := files.Open(path); err != nil {
		return "", ErrNone
	} else if st, err := f.Stat(); f.Close() != nil || err != nil || st.Size() == 0 {
		return "", ErrNone
	}
	return binfile.Install(filepath.Join(stateDir, "bin"), name, func() (io.ReadCloser, error) { return files.Open(path) })
}
