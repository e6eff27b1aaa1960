package integration

import (
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

type syscallStat = syscall.Stat_t

func stat(path string, st *syscall.Stat_t) error { return syscall.Stat(path, st) }

func syscallKill(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

func waitGone(t testing.TB, pid int) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
		// PID 1 of some VMs never reaps orphans: a zombie is gone too.
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := strings.LastIndexByte(string(b), ')'); i > 0 && len(b) > i+2 && b[i+2] == 'Z' {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("pid %d still exists", pid)
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }
