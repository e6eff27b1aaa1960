package main

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter's C constructor runs before the Go runtime starts: it joins
	// and creates the container's namespaces while the process still has
	// a single thread. It needs cgo.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// `peapod init` is the first process of every container and exec: the
// shim's libcontainer starts /proc/self/exe init. It must take over before
// main (and before anything starts threads or touches flags), as runc's own
// init.go does; libcontainer.Init never returns.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
	}
}
