// Command peapod-shim is the per-pod shim as a program of its own, the
// resident one: package shim's server, reaper, stdio and log pumps, and
// nothing of libcontainer. Every pod runs one for its whole life, so its
// size counts. libcontainer's work runs in one-shot helpers, the other
// program peapod-lc (shim/peapod-lc), whose path it gets with --lc.
//
// It must not link libcontainer, the cgroup packages, eBPF, D-Bus or
// netlink: their package initialisation, data and threads would stay
// resident in every pod (shim/deps_test.go checks). It is built without
// cgo (CGO_ENABLED=0), static.
//
// The Makefile builds it into shim/embedded/bin/peapod-shim, which peapod
// embeds and writes out under its state directory (shim/embedded).
//
// Usage (by the daemon, through shim.Start):
//
//	peapod-shim shim --dir DIR --lc PEAPOD_LC [--pod-cgroup PATH] [--ready-fd N]
package main

import (
	"fmt"
	"os"
	"strings"

	"peapod/shim"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peapod-shim shim --dir DIR --lc PEAPOD_LC [--pod-cgroup PATH] [--ready-fd N]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "shim":
		// Without a helper program it could not create a container:
		// refuse at start, which Start reports, not at the first create.
		if !hasHelperFlag(os.Args[2:]) {
			fmt.Fprintln(os.Stderr, "peapod-shim: --lc PATH (the peapod-lc program) is required: this shim carries no libcontainer")
			os.Exit(2)
		}
		if err := shim.Main(os.Args[2:]); err != nil {
			fmt.Fprintf(os.Stderr, "peapod-shim: %v\n", err)
			os.Exit(1)
		}
	case "version", "--version", "-v":
		fmt.Printf("peapod-shim %s\n", version)
	default:
		fmt.Fprintf(os.Stderr, "peapod-shim: unknown command %q (it is started by peapod, not by hand)\n", os.Args[1])
		os.Exit(2)
	}
}

func hasHelperFlag(args []string) bool {
	for _, a := range args {
		if a == "--lc" || a == "-lc" || strings.HasPrefix(a, "--lc=") || strings.HasPrefix(a, "-lc=") {
			return true
		}
	}
	return false
}
