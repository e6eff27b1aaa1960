// Command pause is the first process of every peapod pod. It holds the pod's
// namespaces open for as long as the pod lives and, when the pod has its own
// PID namespace, it is PID 1 there: orphans of the pod's containers are
// re-parented to it and it reaps them, so they never pile up as zombies.
//
// It exits 0 on SIGTERM or SIGINT and otherwise sleeps. It is built static
// and small (see pause/embedded) and imports only os, os/signal and syscall.
//
// Start protocol: when fd 3 is a pipe, it is the runtime's release pipe. The
// pause reads one byte from it before it considers itself adopted; if the
// pipe reaches EOF first (the runtime died before recording this pause), the
// pause exits 1 so that no unrecorded pause outlives its runtime. Without an
// fd 3 pipe the pause simply runs.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const releaseFD = 3

// fatalByDefault are the signals on which the Go runtime would otherwise
// exit or crash. The kernel drops such signals sent to a PID 1 from inside
// its namespace only while their disposition is SIG_DFL, and the Go runtime
// installs handlers for them, so a container could end the whole pod with
// `kill -HUP 1`. Ignoring them gives the pause the protection a C init has,
// also when it is not PID 1 (hostPID pods): only SIGTERM, SIGINT and
// SIGKILL end it.
var fatalByDefault = []os.Signal{
	syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGABRT, syscall.SIGUSR1,
	syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGALRM, syscall.SIGVTALRM,
	syscall.SIGXCPU, syscall.SIGXFSZ, syscall.SIGIO, syscall.SIGPWR,
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-v", "-version", "--version":
			os.Stdout.WriteString("pause (peapod) " + version + "\n")
			return
		}
	}

	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	// Ignore comes last on purpose: once these signals show up in SigIgn of
	// /proc/<pid>/status, the SIGTERM/SIGINT handlers are in place too.
	signal.Ignore(fatalByDefault...)

	var released chan bool
	if isPipe(releaseFD) {
		released = make(chan bool, 1)
		go func() { released <- awaitRelease(releaseFD) }()
	}

	// Children may have been re-parented to us before SIGCHLD was hooked.
	reap()
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGCHLD {
				reap()
				continue
			}
			os.Exit(0)
		case ok := <-released:
			if !ok {
				os.Exit(1)
			}
			released = nil
		}
	}
}

// reap collects every exited child. One SIGCHLD may stand for many exits,
// so it loops until none is left.
func reap() {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 {
			return
		}
	}
}

func isPipe(fd int) bool {
	var st syscall.Stat_t
	if syscall.Fstat(fd, &st) != nil {
		return false
	}
	return st.Mode&syscall.S_IFMT == syscall.S_IFIFO
}

// awaitRelease blocks until the runtime writes one byte (true) or closes
// the pipe (false), then closes fd so that nothing else inherits it.
func awaitRelease(fd int) bool {
	defer syscall.Close(fd)
	var b [1]byte
	for {
		n, err := syscall.Read(fd, b[:])
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			// The runtime handed us a non-blocking pipe; the flag lives on
			// the shared file description, and the runtime has closed its
			// copy of the read end, so clearing it affects only us.
			if syscall.SetNonblock(fd, false) != nil {
				return false
			}
			continue
		}
		return err == nil && n == 1
	}
}
