package main

import (
	"peapod/shim"
	"peapod/shim/lc"
)

// runShim is `peapod shim`: the per-pod monitor the daemon starts with
// shim.Start when this peapod carries no lean shim binaries
// (shim/embedded), and `peapod shim lc`, the shim's one-shot libcontainer
// helper, which such a shim runs from this same executable (with `peapod
// init`, init.go, libcontainer's init). The lean programs split these:
// peapod-shim is the resident, peapod-lc the helper and the init. None of
// it is meant to be run by hand.
func runShim(args []string) error {
	if len(args) > 0 && args[0] == lc.Arg {
		lc.Main(args[1:]) // never returns
	}
	return shim.Main(args)
}
