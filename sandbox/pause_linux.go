package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"peapod/internal/procfs"
)

// startPauseCmd starts the pause process in new namespaces of the given kinds
// (CLONE_NEW* flags), placed in its cgroup at birth on v2 (cgroupFD >= 0).
// The process is its own session leader so that it survives the daemon.
// release becomes the pause's fd 3: it waits for one byte on it.
func startPauseCmd(binary string, cloneFlags uintptr, cgroupFD int, release *os.File) (*exec.Cmd, *PauseProcess, error) {
	cmd := exec.Command(binary)
	// The pause's whole environment. One P is all it needs, and a second
	// costs it ~100 KiB (P state, threads spinning for it) per pod. No
	// transparent huge pages for its heap: where THP is "always" (Debian's
	// kernels) its first heap touch would fault in a 2 MiB page, five times
	// its whole footprint. Nothing else of the daemon's environment should
	// reach it. pause/pause_test.go measures the pause started with this
	// same environment.
	cmd.Env = []string{"GOMAXPROCS=1", "GODEBUG=disablethp=1"}
	cmd.ExtraFiles = []*os.File{release}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Cloneflags: cloneFlags,
	}
	if cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = cgroupFD
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start pause %s: %w", binary, err)
	}
	st, err := procfs.StartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, fmt.Errorf("start pause: %w", err)
	}
	return cmd, &PauseProcess{PID: cmd.Process.Pid, StartTime: st}, nil
}

// openPause returns a pidfd for the recorded pause process, or -1 when that
// process no longer exists (it exited, or its pid now belongs to another
// process). Opening the pidfd before checking the start time makes the
// check race-free: the fd pins the process it was opened for.
func openPause(p *PauseProcess) (int, error) {
	if p == nil || p.PID <= 0 {
		return -1, nil
	}
	fd, err := unix.PidfdOpen(p.PID, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return -1, nil
	}
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", p.PID, err)
	}
	if !procfs.Alive(p.PID, p.StartTime) {
		unix.Close(fd)
		return -1, nil
	}
	return fd, nil
}

// pauseAlive reports whether the recorded pause process still runs.
func pauseAlive(p *PauseProcess) bool {
	fd, err := openPause(p)
	if err != nil || fd < 0 {
		return false
	}
	unix.Close(fd)
	return true
}

// stopPause sends SIGTERM, waits up to grace for the exit, then SIGKILL.
// A missing process is success.
func stopPause(p *PauseProcess, grace time.Duration) error {
	fd, err := openPause(p)
	if err != nil {
		return err
	}
	if fd < 0 {
		return nil
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal pause %d: %w", p.PID, err)
	}
	if procfs.WaitPidfd(fd, grace) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill pause %d: %w", p.PID, err)
	}
	if !procfs.WaitPidfd(fd, 5*time.Second) {
		return fmt.Errorf("pause %d did not exit after SIGKILL", p.PID)
	}
	return nil
}

// watchPause calls onExit once the recorded pause process exits. It parks a
// goroutine on the runtime's poller (a pidfd is readable once its process
// has exited), so watching costs no OS thread per pod.
func watchPause(p *PauseProcess, onExit func()) error {
	fd, err := openPause(p)
	if err != nil {
		return err
	}
	if fd < 0 {
		go onExit()
		return nil
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return err
	}
	go func() {
		defer f.Close()
		first := true
		_ = rc.Read(func(uintptr) bool {
			if first {
				first = false
				return false // wait for readability
			}
			return true
		})
		onExit()
	}()
	return nil
}
