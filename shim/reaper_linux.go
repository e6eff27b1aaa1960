package shim

import (
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// reaper reaps every child of the shim: container inits, exec processes,
// and orphans reparented to it as the pod's subreaper.
//
// libcontainer waits for its own helper processes (the stages of
// `peapod init`) by pid while it starts a process. A wait4(-1) running at
// the same time could steal those exits, so starting takes the read side of
// mu and reaping the write side: no reaping while a start is in flight, and
// the pid a start returns is registered before any reaping can see it exit.
type reaper struct {
	mu      sync.RWMutex
	waitMu  sync.Mutex
	waiters map[int]func(exit)
}

// exit is how a process ended.
type exit struct {
	status unix.WaitStatus
	at     time.Time
}

// code is the exit code the CRI reports: the status, or 128+signal.
func (e exit) code() int {
	if e.status.Signaled() {
		return 128 + int(e.status.Signal())
	}
	return e.status.ExitStatus()
}

func newReaper() *reaper {
	r := &reaper{waiters: map[int]func(exit){}}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, unix.SIGCHLD)
	go func() {
		r.reap()
		for range ch {
			r.reap()
		}
	}()
	return r
}

// start runs fn, which starts a process and returns its pid (or an error),
// and registers onExit for that pid. onExit runs on the reaper's goroutine
// and must not block.
func (r *reaper) start(fn func() (int, error), onExit func(exit)) (int, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	pid, err := fn()
	if err != nil || pid <= 0 {
		return pid, err
	}
	r.waitMu.Lock()
	r.waiters[pid] = onExit
	r.waitMu.Unlock()
	return pid, nil
}

func (r *reaper) reap() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
		if ws.Stopped() || ws.Continued() {
			continue
		}
		r.waitMu.Lock()
		fn := r.waiters[pid]
		delete(r.waiters, pid)
		r.waitMu.Unlock()
		if fn != nil {
			fn(exit{status: ws, at: time.Now()})
		}
	}
}
