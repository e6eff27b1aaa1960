// Command pause is the first process of every peapod pod. It holds the pod's
// namespaces open for as long as the pod lives and, when the pod has its own
// PID namespace, it is PID 1 there: orphans of the pod's containers are
// re-parented to it and it reaps them, so they never pile up as zombies.
//
// It exits 0 on SIGTERM or SIGINT and otherwise sleeps. It is built static
// and small (see pause/embedded); on amd64 and arm64 it imports only
// syscall and unsafe (signals_raw.go), elsewhere os/signal too
// (signals_portable.go).
//
// Start protocol: when fd 3 is a pipe, it is the runtime's release pipe. The
// pause reads one byte from it before it considers itself adopted; if the
// pipe reaches EOF first (the runtime died before recording this pause), the
// pause exits 1 so that no unrecorded pause outlives its runtime. Without an
// fd 3 pipe the pause simply runs.
//
// Footprint: one pause runs per pod, so its memory is multiplied by the pod
// count. Each OS thread of a Go program costs a signal stack, a g0 stack and
// scheduler state, and os/signal alone keeps three threads (a locked thread
// for signal masks, the template thread it needs, and the one parked in the
// signal receiver), plus a goroutine per waiter. The pause therefore does not
// use os/signal or os at all:
//   - SIGTERM and SIGINT get a raw handler (exitZero, in assembly) that calls
//     exit_group(0) directly; nothing of the Go runtime runs for them. (On
//     other architectures os/signal does it: signals_portable.go.)
//   - SIGCHLD is set to SIG_IGN: the kernel then reaps our exited children
//     itself, also orphans re-parented to us and zombies handed over at
//     re-parenting time, so no reaping loop has to wake up.
//   - The main goroutine does the blocking read of the release pipe and then
//     sleeps in ppoll(2); no other goroutine exists, so no thread is parked
//     for us beyond the runtime's own.
//
// The runtime starts it with GOMAXPROCS=1 in its environment (see
// sandbox/pause_linux.go): a second P and the threads that spin for it would
// otherwise make up a good part of the pause's memory.
package main

import (
	"syscall"
	"unsafe"
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
var fatalByDefault = []syscall.Signal{
	syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGABRT, syscall.SIGUSR1,
	syscall.SIGUSR2, syscall.SIGPIPE, syscall.SIGALRM, syscall.SIGVTALRM,
	syscall.SIGXCPU, syscall.SIGXFSZ, syscall.SIGIO, syscall.SIGPWR,
}

func main() {
	if arg, ok := firstArg(); ok {
		switch arg {
		case "-v", "-version", "--version":
			syscall.Write(1, []byte("pause (peapod) "+version+"\n"))
			return
		}
	}

	installHandlers()
	// Children that became zombies before SIGCHLD was ignored are not reaped
	// by the kernel; collect them once.
	reap()

	if isPipe(releaseFD) && !awaitRelease(releaseFD) {
		syscall.Exit(1)
	}

	sleepForever()
}

func fatal(msg string) {
	syscall.Write(2, []byte(msg+"\n"))
	syscall.Exit(2)
}

// firstArg returns argv[1]. It reads /proc/self/cmdline rather than os.Args:
// importing os costs this long-lived process its package initialisation
// (stdio files with finalizers, a finalizer goroutine, more heap size
// classes), about 50 KiB per pod. It uses raw system calls on a static path
// and buffer: the syscall package's Open allocates and its deeper call
// chain grows the main goroutine's stack, which costs another ~40 KiB of
// stack-pool memory. Without /proc there are no flags, which only matters
// for -v.
func firstArg() (string, bool) {
	fd, _, e := syscall.RawSyscall6(syscall.SYS_OPENAT, atFDCWD,
		uintptr(unsafe.Pointer(&procCmdline[0])), syscall.O_RDONLY|syscall.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return "", false
	}
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&cmdline[0])), uintptr(len(cmdline)))
	syscall.RawSyscall(syscall.SYS_CLOSE, fd, 0, 0)
	if e != 0 || n == 0 {
		return "", false
	}
	// argv[0] NUL argv[1] NUL ...
	b := cmdline[:n]
	for i, c := range b {
		if c != 0 {
			continue
		}
		b = b[i+1:]
		for j, c := range b {
			if c == 0 {
				return string(b[:j]), true
			}
		}
		return "", false
	}
	return "", false
}

const atFDCWD = ^uintptr(99) // AT_FDCWD, -100

var (
	procCmdline = [...]byte{'/', 'p', 'r', 'o', 'c', '/', 's', 'e', 'l', 'f', '/', 'c', 'm', 'd', 'l', 'i', 'n', 'e', 0}
	// cmdline is global, not on the stack, for the same reason: a 4 KiB
	// frame would make the main goroutine's stack grow. Only the bytes
	// read are ever touched.
	cmdline [4096]byte
)

// reap collects every exited child without waiting.
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
// the pipe (false), then closes fd so that nothing else inherits it. It runs
// on the main goroutine: a blocking read there ties up no extra thread, and
// SIGTERM/SIGINT end the process from their handler even while it blocks.
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
