package cgroups

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

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
// every exec'd process) while the caller waits. WarmAttachLock starts a
// write of one of the daemon's threads into the cgroup it is already in,
// a move that moves nothing, once a pod's pause is in its cgroups and as
// soon as a container creation or an exec begins. Its grace period then
// passes while the daemon mounts the rootfs and the shim's helper starts
// libcontainer, and libcontainer's own write finds the lock warm. Hosts
// that mount cgroups with favordynmods have no such wait, and there the
// extra write costs a few microseconds.

var (
	warmBusy atomic.Bool // a warming write is in flight
	warmOff  atomic.Bool // a warming write failed: stop trying
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

// WarmAttachLock starts, in the background, the no-op move described
// above and returns at once. Only one runs at a time: calls while one is
// in flight do nothing (they would share its grace period anyway). It
// gives up for good on its first failure: a rootless daemon in a cgroup it
// does not own, a read-only cgroup mount; it only ever saves time.
func WarmAttachLock() {
	if warmOff.Load() || !warmBusy.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer warmBusy.Store(false)
		if warmOnce() != nil {
			warmOff.Store(true)
		}
	}()
}

// warmOnce moves the calling thread (v1) or this process (v2) into the
// cgroup it is in. On v1 it must be the thread alone: the daemon's other
// threads need not all be home (StartPause forks the pause from a thread
// that moved itself into the pause's cgroups), and moving the process
// would bring such a thread back before its fork.
func warmOnce() error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	mode, roots := warmHost()
	self, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return err
	}
	target := warmTargetFrom(mode, roots, string(self))
	if target == "" {
		return os.ErrNotExist
	}
	id := os.Getpid()
	if mode == ModeV1 {
		id = unix.Gettid()
	}
	f, err := os.OpenFile(target, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(strconv.Itoa(id))
	return err
}

// WarmExecAttach is WarmAttachLock before an exec into a container.
// libcontainer writes an exec'd process into the container's cgroups only
// on v1; on v2 the process is born in them (CLONE_INTO_CGROUP) and waits
// for nothing.
func WarmExecAttach() {
	if mode, _ := warmHost(); mode == ModeV1 {
		WarmAttachLock()
	}
}
