// Command peapod is a Kubernetes container runtime: `peapod serve` runs the
// CRI daemon, `peapod check` checks the host, `peapod version` prints the
// version.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func usage() {
	fmt.Fprintf(os.Stderr, `peapod %s: a Kubernetes CRI runtime

Usage:
  peapod serve [flags]    run the CRI daemon (see peapod serve -h)
  peapod check [flags]    check that this host can run pods; one line per problem
  peapod version          print the version
`, version)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	addSbinToPath()
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "check":
		err = check(os.Args[2:])
	case "image":
		err = imageCommand(os.Args[2:])
	case "shim":
		err = runShim(os.Args[2:])
	case "init":
		// Handled in init.go before main runs; reaching here is a failed init.
		os.Exit(255)
	case "version", "--version", "-v":
		fmt.Printf("peapod %s\n", version)
	case "help", "-h", "--help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "peapod: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "peapod: %v\n", err)
		os.Exit(1)
	}
}

// addSbinToPath appends the sbin directories missing from PATH. The CNI
// plugins peapod runs inherit its PATH and need iptables, which Debian
// installs in /usr/sbin, off an ordinary user's PATH.
func addSbinToPath() {
	path := os.Getenv("PATH")
	have := map[string]bool{}
	for _, d := range filepath.SplitList(path) {
		have[d] = true
	}
	for _, d := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin"} {
		if !have[d] {
			if path != "" {
				path += string(os.PathListSeparator)
			}
			path += d
		}
	}
	os.Setenv("PATH", path)
}
