package procfs

import (
	"errors"
	"time"

	"golang.org/x/sys/unix"
)

// WaitPidfd waits up to timeout until the process behind the pidfd fd has
// exited (a pidfd turns readable then, reaped or not), and reports whether
// it did.
func WaitPidfd(fd int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for {
		ms := max(int(time.Until(deadline).Milliseconds()), 0)
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
		if err == nil && n > 0 {
			return true
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
