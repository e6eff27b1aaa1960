// Package embedded carries the lean shim programs inside peapod, as
// pause/embedded does the pause: a single peapod file is all a node needs.
// They are two: peapod-shim (shim/peapod-shim), the resident per-pod shim,
// built without cgo and without libcontainer, and peapod-lc
// (shim/peapod-lc), its one-shot libcontainer helper and libcontainer's
// container init. The Makefile builds both into bin/ beside this file
// (peapod-lc with peapod's cgo and seccomp settings) before peapod itself
// is built.
//
// A peapod built without them (plain `go build`) still works: Install
// reports that none is embedded, and the daemon runs its shims as `peapod
// shim`, which runs its helpers as `peapod shim lc`: the same code in the
// whole binary.
//
// Only the daemon imports this package, never the shim: the shim programs
// must not embed (an earlier build of) themselves.
package embedded

import (
	"embed"
	"errors"
	"fmt"
	"io"

	"peapod/internal/binfile"
	"peapod/shim"
)

//go:embed bin
var files embed.FS

// The two programs' names, in bin/ here and (with their hash) in the
// directory Install writes them to.
const (
	ShimName   = "peapod-shim"
	HelperName = "peapod-lc"
)

// Binary is the embedded program name (ShimName or HelperName), or nil
// when peapod was built without it. It copies the bytes; Install does not.
func Binary(name string) []byte {
	b, err := files.ReadFile("bin/" + name)
	if err != nil {
		return nil
	}
	return b
}

// ErrNone says that this peapod carries no shim binaries.
var ErrNone = errors.New("no shim binaries embedded in this peapod (build them with `make build`)")

// Install writes the embedded shim programs to dir, each named
// by its content hash so that an upgrade never runs a stale one and the
// shims of running pods keep their executables, and returns the resident
// shim's path and the helper's. It registers the helper's path with package shim
// (shim.RegisterHelper), so that shim.Start with that Binary passes it to
// the shim. It returns ErrNone when peapod carries neither, and an error
// when it carries only one (a broken build). It streams from the embedded
// data: the daemon's heap never holds a copy of a binary.
func Install(dir string) (resident, helper string, err error) {
	hasShim, hasHelper := embeddedFile(ShimName), embeddedFile(HelperName)
	switch {
	case !hasShim && !hasHelper:
		return "", "", ErrNone
	case !hasShim || !hasHelper:
		return "", "", fmt.Errorf("peapod embeds only one of %s and %s: rebuild it with `make build`", ShimName, HelperName)
	}
	// The helper first: a shim never runs without its helper in place.
	helper, err = binfile.Install(dir, HelperName, opener(HelperName))
	if err != nil {
		return "", "", err
	}
	resident, err = binfile.Install(dir, ShimName, opener(ShimName))
	if err != nil {
		return "", "", err
	}
	shim.RegisterHelper(resident, helper)
	return resident, helper, nil
}

// embeddedFile reports whether bin/name is embedded and not empty.
func embeddedFile(name string) bool {
	f, err := files.Open("bin/" + name)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	return err == nil && st.Size() > 0
}

func opener(name string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return files.Open("bin/" + name) }
}
