// Command peapod-shim is the per-pod shim as a program of its own: the same
// code as `peapod shim` (package shim) and `peapod init` (libcontainer's
// init of containers and execs), without the daemon's packages (gRPC, CRI,
// images, CNI). Every pod runs one, so its size counts: it starts faster,
// and its heap, data and mapped text are a fraction of the whole peapod's.
//
// The Makefile builds it into shim/embedded/bin/peapod-shim, which peapod
// embeds and writes out under its state directory (shim/embedded).
//
// Usage (by the daemon, through shim.Start):
//
//	peapod-shim shim --dir DIR [--pod-cgroup PATH] [--ready-fd N]
//	peapod-shim shim lc [--idle D]  (the shim's one-shot libcontainer helper)
//	peapod-shim init   (libcontainer, inside a new container or exec)
package main

import (
	"fmt"
	"os"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter's C constructor joins and creates the container's namespaces
	// before the Go runtime starts (cgo), as in cmd/peapod/init.go.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	"peapod/shim"
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
		fmt.Fprintln(os.Stderr, "usage: peapod-shim shim --dir DIR [--pod-cgroup PATH] [--ready-fd N]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "shim":
		if err := shim.Main(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "peapod-shim: %v\n", err)
			os.Exit(1)
		}
	case "init":
		os.Exit(255) // libcontainer.Init returned: a failed init
	case "version", "--version", "-v":
		fmt.Printf("peapod-shim %s\n", version)
	default:
		fmt.Fprintf(os.Stderr, "peapod-shim: unknown command %q (it is started by peapod, not by hand)\n", os.Args[1])
		os.Exit(2)
	}
}
