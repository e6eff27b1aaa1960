package cgroups

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Moving a process into a cgroup (a pid written to cgroup.procs or tasks)
// takes the kernel's global cgroup threadgroup lock for writing. When no
// such write happened in the last moments, taking that lock first waits
// for an RCU grace period: about 10 ms on this kind of host, the largest
// single cost of starting a container here. The writer holds cgroup_mutex
// meanwhile. A writer that comes while another waits shares that grace
// period, and one that comes within a grace period after the last writer
// finished does not wait at all.
//
// libcontainer writes the container's init into its cgroups (and, on v1,
// every exec'd process) while the caller waits. WarmAttachLock keeps the
// lock warm instead: a thread of the daemon writes itself into the cgroup
// it is already in, a move that moves nothing, every few milliseconds
// (less than a grace period apart), from the moment a pod's pause is in
// its cgroups until its container's init is in its own (EndWarmAttach, at
// the end of CreateContainer), for warmPodWindow at most; and for a
// moment when an exec begins. The first write of a burst waits, beside
// the CNI ADD or while the rootfs is mounted; the init's move then finds
// the lock warm, also when a kubelet creates the container a while after
// RunPodSandbox returned. One write per event did not do: the lock cooled
// down in the time between the pod and its container, and the write that
// then waited held cgroup_mutex, so the helper's first mkdir of the
// container's cgroups waited behind it.
//
// The loop stops as soon as it has served: each write holds the lock for
// some microseconds, in which forks and exits on the host wait, and a
// loop left running for two seconds after each pod slowed the next pods'
// starts by 6-10 ms (p50) while another runtime started pods in between.
// Hosts that mount cgroups with favordynmods keep the lock in this state
// for good.

var (
	warmBusy   atomic.Bool  // the warming loop runs
	warmOff    atomic.Bool  // a warming write failed: stop trying
	warmUntil  atomic.Int64 // the loop runs until then (Unix nanoseconds)
	warmWrites atomic.Int64 // writes done, for tests
)

var (
	// warmPodWindow is how long the lock is kept warm for a pod's first
	// container at most: a kubelet's steps between RunPodSandbox and
	// CreateContainer, without image pulls.
	warmPodWindow = 2 * time.Second
	// warmExecWindow is how long an exec's warming lasts: until its
	// process is in the container's cgroups, a few milliseconds later.
	warmExecWindow = 100 * time.Millisecond
	// warmPeriod is the time between two writes: well below a grace
	// period (about 10 ms here; a few ms on idle hosts with HZ=1000).
	warmPeriod = 3 * time.Millisecond
)

// warmHost is this host's layout and hierarchy roots, found once.
var warmHost = sync.OnceValues(func() (Mode, map[string]string) {
	mode := hostMode()
	roots, err := hierarchyRoots(mode)
	if err != nil {
		return mode, nil
	}
	return mode, roots
})

// warmTargetFrom picks the file the warming write goes to, from the
// calling thread's /proc/thread-self/cgroup text and the hierarchy roots
// (as hierarchyRoots gives them): on v2 the cgroup.procs of its cgroup;
// on v1 the `tasks` of its cgroup in the first controller hierarchy
// listed. "" if there is none.
func warmTargetFrom(mode Mode, roots map[string]string, selfCgroup string) string {
	for _, line := range strings.Split(strings.TrimSpace(selfCgroup), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !strings.HasPrefix(f[2], "/") {
			continue
		}
		switch {
		case mode == ModeV2 && f[0] == "0" && f[1] == "":
			if root, ok := roots[""]; ok {
				return filepath.Join(root, f[2], "cgroup.procs")
			}
		case mode == ModeV1 && f[1] != "" && !strings.HasPrefix(f[1], "name="):
			for _, c := range strings.Split(f[1], ",") {
				if root, ok := roots[c]; ok {
					return filepath.Join(root, f[2], "tasks")
				}
			}
		}
	}
	return ""
}

// WarmAttachLock keeps the lock warm, in the background, until
// EndWarmAttach or for warmPodWindow from now, and returns at once: it
// starts the warming loop or extends the running one's time.
func WarmAttachLock() { warmFor(warmPodWindow) }

// EndWarmAttach ends the warming once the container it was for has its
// init in its cgroups: the loop stops after its next write. Another pod
// started meanwhile loses its warming too; its container's init then
// waits once, as it would without any.
func EndWarmAttach() { warmUntil.Store(0) }

// warmFor keeps the lock warm for d from now. It gives up for good on its
// first failure: a rootless daemon in a cgroup it does not own, a
// read-only cgroup mount; it only ever saves time.
func warmFor(d time.Duration) {
	if warmOff.Load() {
		return
	}
	until := time.Now().Add(d).UnixNano()
	for {
		cur := warmUntil.Load()
		if cur >= until || warmUntil.CompareAndSwap(cur, until) {
			break
		}
	}
	if warmBusy.CompareAndSwap(false, true) {
		go warmLoop()
	}
}

// warmLoop writes until warmUntil passes. Callers hold warmBusy for it.
func warmLoop() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	giveUp := func() {
		warmOff.Store(true)
		warmBusy.Store(false)
	}
	f, id, err := warmWriter()
	if err != nil {
		giveUp()
		return
	}
	defer f.Close()
	for {
		if _, err := f.WriteString(id); err != nil {
			giveUp()
			return
		}
		warmWrites.Add(1)
		if time.Now().UnixNano() < warmUntil.Load() {
			time.Sleep(warmPeriod)
			continue
		}
		warmBusy.Store(false)
		// A caller may have moved warmUntil on after the check above and
		// found the loop busy: carry on for it rather than leave it cold.
		if time.Now().UnixNano() >= warmUntil.Load() || !warmBusy.CompareAndSwap(false, true) {
			return
		}
	}
}

// warmWriter opens the file the warming writes go to, for the calling
// thread (v1) or this process (v2), and gives what to write there. The
// caller keeps its goroutine locked to its thread while it writes. On v1
// it must be the thread alone: the daemon's other threads need not all be
// home (StartPause forks the pause from a thread that moved itself into
// the pause's cgroups), and moving the process would bring such a thread
// back before its fork.
func warmWriter() (*os.File, string, error) {
	mode, roots := warmHost()
	self, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, "", err
	}
	target := warmTargetFrom(mode, roots, string(self))
	if target == "" {
		return nil, "", os.ErrNotExist
	}
	id := os.Getpid()
	if mode == ModeV1 {
		id = unix.Gettid()
	}
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		return nil, "", err
	}
	return f, strconv.Itoa(id), nil
}

// WarmExecAttach warms the lock for an exec into a container, for
// warmExecWindow. libcontainer writes an exec'd process into the
// container's cgroups only on v1; on v2 the process is born in them
// (CLONE_INTO_CGROUP) and waits for nothing.
func WarmExecAttach() {
	if mode, _ := warmHost(); mode == ModeV1 {
		warmFor(warmExecWindow)
	}
}
