//go:build amd64 || arm64

package main

import (
	"syscall"
	"unsafe"
)

// exitZero is a signal handler that ends the process with status 0 at once.
// It touches no memory and never returns (see exit_linux_*.s).
func exitZero()

// exitZeroPC returns the address of exitZero, to hand it to the kernel.
func exitZeroPC() uintptr

// kernelSigaction is the kernel's struct sigaction for rt_sigaction(2) on
// linux/amd64 and linux/arm64.
type kernelSigaction struct {
	handler  uintptr
	flags    uint64
	restorer uintptr
	mask     uint64
}

const (
	sigIgn = 1
	// SA_RESTORER is mandatory on amd64 (the kernel will not deliver
	// otherwise) and honoured on arm64; exitZero never returns, so the
	// restorer it names is never used.
	saRestorer = 0x04000000
	// SA_ONSTACK: run on the thread's Go signal stack, never on a goroutine
	// stack, even though exitZero uses no stack of its own.
	saOnStack = 0x08000000
)

// setDisposition installs handler (an address, or sigIgn) for sig with
// rt_sigaction directly, past the Go runtime: the runtime does not reinstall
// handlers on its own once it is running, and a handler that exits at once
// needs none of its machinery.
func setDisposition(sig syscall.Signal, handler uintptr) {
	sa := kernelSigaction{
		handler:  handler,
		flags:    saRestorer | saOnStack,
		restorer: exitZeroPC(),
		mask:     ^uint64(0), // block everything while the handler runs
	}
	const sigsetSize = 8
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGACTION, uintptr(sig),
		uintptr(unsafe.Pointer(&sa)), 0, sigsetSize, 0, 0); e != 0 {
		fatal("pause: rt_sigaction: " + e.Error())
	}
}

// installHandlers makes SIGTERM and SIGINT end the pause with status 0
// and ignores SIGCHLD (the kernel then reaps) and fatalByDefault. The
// ignored ones come last on purpose: once they show up in SigIgn of
// /proc/<pid>/status, the SIGTERM/SIGINT handlers are in place too.
func installHandlers() {
	setDisposition(syscall.SIGTERM, exitZeroPC())
	setDisposition(syscall.SIGINT, exitZeroPC())
	setDisposition(syscall.SIGCHLD, sigIgn)
	for _, s := range fatalByDefault {
		setDisposition(s, sigIgn)
	}
}

// sleepForever waits for the signal that ends the pause.
func sleepForever() {
	for {
		// ppoll on no fds without a timeout: pause(2), which arm64 lacks.
		// It returns only when a signal is handled, and the only ones that
		// reach a Go handler now are the runtime's own (e.g. preemption).
		syscall.Syscall6(syscall.SYS_PPOLL, 0, 0, 0, 0, 0, 0)
	}
}
