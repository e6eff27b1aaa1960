package shim

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// reaper reaps every child of the shim: the one-shot helpers (`shim lc`,
// helper_linux.go), the container inits and exec processes those leave
// behind (re-parented to the shim, the pod's child-subreaper, when the
// helper exits), and any orphan of the pod's processes.
//
// A helper starts a process and exits; the shim learns the process's pid
// from the helper's reply, after the fact. The process may have died (and
// been reaped here) before that: so while any helper is in flight
// (begin/end), the exit of a pid nobody registered is kept, and register
// hands it over. Outside that window an unknown pid is an orphan and its
// exit is dropped, which bounds what is kept.
//
// Signals go through the reaper too (signal): a pid is signalled only while
// it is registered and not yet reaped, under the lock the reaping takes,
// so a signal can never reach another process that reused the pid.
type reaper struct {
	mu       sync.Mutex
	waiters  map[int]func(exit)
	early    map[int]exit  // exits of pids not registered yet
	inflight int           // helpers whose processes are not all registered
	kick     chan struct{} // a child may exist now (begin)
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
	r := &reaper{waiters: map[int]func(exit){}, early: map[int]exit{}, kick: make(chan struct{}, 1)}
	go r.loop()
	return r
}

// loop reaps whenever a child has ended. It does not use os/signal: its
// SIGCHLD delivery keeps three OS threads of its own (the signal-mask
// thread, the template thread that one needs, the receiver), and in a
// process that runs once per pod each thread costs ~40 KiB. A blocking
// waitid with WNOWAIT, which leaves the child to reap, parks one thread.
// With no child at all (ECHILD) it waits for begin or register, which
// every start of a helper goes through (orphans only come from
// descendants, so none can appear meanwhile), or for a second to pass, for
// a child started some other way.
func (r *reaper) loop() {
	for {
		r.reap()
		var info unix.Siginfo
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOWAIT, nil)
		switch err {
		case nil, unix.EINTR:
		case unix.ECHILD:
			select {
			case <-r.kick:
			case <-time.After(time.Second):
			}
		default:
			// Not expected from waitid(P_ALL); do not spin.
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// begin opens a window in which exits of unregistered pids are kept: call
// it before starting a helper, and end once every pid the helper reported
// (and its own) is registered.
func (r *reaper) begin() {
	r.mu.Lock()
	r.inflight++
	r.mu.Unlock()
	r.poke()
}

// poke wakes the loop if it waits for a first child.
func (r *reaper) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *reaper) end() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inflight--
	if r.inflight == 0 && len(r.early) > 0 {
		// Nobody can register these any more: orphans.
		r.early = map[int]exit{}
	}
}

// register calls onExit (on the reaper's goroutine, or right here if the
// process already ended) when pid is reaped. onExit must not block. The
// pid must be a child of the shim or of a helper in flight (begin).
func (r *reaper) register(pid int, onExit func(exit)) {
	defer r.poke()
	r.mu.Lock()
	e, done := r.early[pid]
	delete(r.early, pid)
	if done && unix.Kill(pid, 0) == nil {
		// The pid exists again (a live process or a zombie not reaped
		// yet): the kept exit was an earlier holder's, reaped before
		// this process got its pid.
		done = false
	}
	if !done {
		r.waiters[pid] = onExit
	}
	r.mu.Unlock()
	if done {
		onExit(e)
	}
}

// signal sends sig to pid if it is registered and not reaped yet; it
// reports whether it did.
func (r *reaper) signal(pid int, sig unix.Signal) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.waiters[pid]; !ok || pid <= 0 {
		return false
	}
	return unix.Kill(pid, sig) == nil
}

// running reports whether pid is registered and not reaped yet.
func (r *reaper) running(pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.waiters[pid]
	return ok
}

func (r *reaper) reap() {
	for {
		r.mu.Lock()
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == unix.EINTR {
			r.mu.Unlock()
			continue
		}
		if err != nil || pid <= 0 {
			r.mu.Unlock()
			return
		}
		if ws.Stopped() || ws.Continued() {
			r.mu.Unlock()
			continue
		}
		e := exit{status: ws, at: time.Now()}
		fn := r.waiters[pid]
		delete(r.waiters, pid)
		if fn == nil && r.inflight > 0 {
			r.early[pid] = e
		}
		r.mu.Unlock()
		if fn != nil {
			fn(e)
		}
	}
}
