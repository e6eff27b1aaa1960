package main

import "peapod/shim"

// runShim is `peapod shim`: the per-pod monitor the daemon starts with
// shim.Start when this peapod carries no lean shim binary (shim/embedded).
// It is not meant to be run by hand.
func runShim(args []string) error {
	return shim.Main(args)
}
