// Command peapod-lc is the shim's libcontainer side as a program of its
// own: the one-shot helper the resident shim (peapod-shim) runs for each
// create, exec, kill of all processes, delete and update (package
// shim/lc), and libcontainer's init of containers and execs, which
// libcontainer starts by re-executing /proc/self/exe, this program. It
// lives for milliseconds per call, so the weight of libcontainer, cgo and
// the cgroup code costs nothing resident.
//
// The Makefile builds it (cgo for nsenter, static where libc.a and
// libseccomp.a allow) into shim/embedded/bin/peapod-lc, which peapod embeds
// and writes out under its state directory beside peapod-shim
// (shim/embedded).
//
// Usage (by peapod-shim, and by libcontainer):
//
//	peapod-lc lc [--idle D]   (one request on stdin, a unix socket)
//	peapod-lc init            (libcontainer, inside a new container or exec)
package main

import (
	"fmt"
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter's C constructor joins and creates the container's namespaces
	// before the Go runtime starts (cgo), as in cmd/peapod/init.go.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	"peapod/shim/lc"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init() // never returns
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peapod-lc lc [--idle D]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "lc":
		lc.Main(os.Args[2:]) // never returns
	case "init":
		os.Exit(255) // libcontainer.Init returned: a failed init
	case "version", "--version", "-v":
		fmt.Printf("peapod-lc %s\n", version)
	default:
		fmt.Fprintf(os.Stderr, "peapod-lc: unknown command %q (it is started by peapod-shim, not by hand)\n", os.Args[1])
		os.Exit(2)
	}
}
