//go:build !amd64 && !arm64

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// On architectures without the raw handler (exit_linux_*.s) the pause
// takes the os/signal route: the same behaviour, at the cost of the
// threads os/signal keeps.

// installHandlers makes SIGTERM and SIGINT end the pause with status 0,
// reaps children on SIGCHLD, and ignores fatalByDefault, last.
func installHandlers() {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	go func() {
		for s := range ch {
			if s == syscall.SIGCHLD {
				reap()
				continue
			}
			syscall.Exit(0)
		}
	}()
	ignored := make([]os.Signal, len(fatalByDefault))
	for i, s := range fatalByDefault {
		ignored[i] = s
	}
	signal.Ignore(ignored...)
}

// sleepForever waits for the signal that ends the pause.
func sleepForever() { select {} }
