package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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
// write of the daemon into the cgroup it is already in, a move that moves
// nothing, as soon as a container creation or an exec begins. Its grace
// period then passes while the daemon mounts the rootfs and the shim's
// helper starts libcontainer, and libcontainer's own write finds the lock
// warm. Hosts that mount cgroups with favordynmods have no such wait, and
// there the extra write costs a few microseconds.

var (
	warmBusy atomic.Bool // a warming write is in flight
	warmOff  atomic.Bool // the daemon may not write its own cgroup: stop trying
)

// warmTarget is the cgroup.procs file of the daemon's own cgroup in one
// hierarchy (v2: the unified one; v1: the first controller hierarchy
// /proc/self/cgroup lists), or "" if there is none.
var warmTarget = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return ""
	}
	mode := hostMode()
	roots, err := hierarchyRoots(mode)
	if err != nil {
		return ""
	}
	return warmTargetFrom(mode, roots, string(b))
})

// warmTargetFrom picks the target from /proc/self/cgroup's text and the
// hierarchy roots (as hierarchyRoots gives them).
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
					return filepath.Join(root, f[2], "cgroup.procs")
				}
			}
		}
	}
	return ""
}

// WarmAttachLock starts, in the background, the no-op move described
// above and returns at once. Only one runs at a time: calls while one is
// in flight do nothing (they would share its grace period anyway). It
// gives up for good once the daemon is refused its own cgroup (a rootless
// daemon in a cgroup it does not own).
func WarmAttachLock() {
	if warmOff.Load() || !warmBusy.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer warmBusy.Store(false)
		if err := warmOnce(warmTarget()); errors.Is(err, os.ErrPermission) || errors.Is(err, os.ErrNotExist) {
			warmOff.Store(true)
		}
	}()
}

// warmOnce writes this process's pid to procs, the cgroup.procs of a
// cgroup it is in.
func warmOnce(procs string) error {
	if procs == "" {
		return os.ErrNotExist
	}
	f, err := os.OpenFile(procs, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(strconv.Itoa(os.Getpid()))
	return err
}

// WarmExecAttach is WarmAttachLock before an exec into a container.
// libcontainer writes an exec'd process into the container's cgroups only
// on v1; on v2 the process is born in them (CLONE_INTO_CGROUP) and waits
// for nothing.
func WarmExecAttach() {
	if hostMode() == ModeV1 {
		WarmAttachLock()
	}
}
