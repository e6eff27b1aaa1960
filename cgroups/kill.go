package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// killBound is how long killCgroup waits for a cgroup to empty after
// SIGKILL. Killed tasks leave at once unless stuck in the kernel (D state).
const killBound = 5 * time.Second

// killCgroup SIGKILLs every process in cgPath and its descendants, in all
// hierarchies, and waits until none is left or bound has passed.
func killCgroup(mode Mode, roots map[string]string, cgPath string, bound time.Duration) error {
	// Last line of defence: whatever the caller got wrong, never kill the
	// whole host.
	if checkPath(cgPath) != nil || cgPath == "/" {
		return fmt.Errorf("refusing to kill the processes of cgroup %q", cgPath)
	}
	var dirs []string
	for _, root := range roots {
		if dir := filepath.Join(root, cgPath); exists(dir) {
			dirs = append(dirs, dir)
		}
	}
	if len(dirs) == 0 {
		return nil
	}
	if mode == ModeV2 {
		// cgroup.kill (Linux 5.14) kills the subtree atomically, forks
		// included; without it the loop below does the work.
		_ = cgroups.WriteFile(dirs[0], "cgroup.kill", "1")
	} else if dir, ok := roots["freezer"]; ok {
		// A frozen task does not die until thawed.
		thaw(filepath.Join(dir, cgPath))
	}

	deadline := time.Now().Add(bound)
	delay := 5 * time.Millisecond
	for {
		pids, err := cgroupPids(dirs)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		for _, pid := range pids {
			if err := killIfMember(pid, cgPath); err != nil {
				return err
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v still present %v after SIGKILL", cgPath, pids, bound)
		}
		time.Sleep(delay)
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// cgroupPids lists the processes in dirs and their sub-cgroups.
func cgroupPids(dirs []string) ([]int, error) {
	var all []int
	for _, dir := range dirs {
		pids, err := cgroups.GetAllPids(dir)
		// ENODEV: the cgroup was removed while being read (systemd removes
		// a scope's cgroup as soon as its last process is gone).
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list processes of %s: %w", dir, err)
		}
		all = append(all, pids...)
	}
	slices.Sort(all)
	return slices.Compact(all), nil
}

// killIfMember SIGKILLs pid if it is (still) in cgPath or below. The pidfd
// pins the process between the membership check and the signal, so a
// recycled pid can never hit a process outside the pod.
func killIfMember(pid int, cgPath string) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	if !inCgroup(pid, cgPath) {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill %d in cgroup %s: %w", pid, cgPath, err)
	}
	return nil
}

// inCgroup reports whether /proc/<pid>/cgroup places pid in cgPath or
// below it in any hierarchy.
func inCgroup(pid int, cgPath string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		// "hierarchy-ID:controller-list:cgroup-path"
		f := strings.SplitN(line, ":", 3)
		if len(f) == 3 && (f[2] == cgPath || strings.HasPrefix(f[2], cgPath+"/")) {
			return true
		}
	}
	return false
}

// thaw thaws dir and every frozen cgroup beneath it in the v1 freezer.
func thaw(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = cgroups.WriteFile(p, "freezer.state", string(cgroups.Thawed))
		}
		return nil
	})
}

// KillContainer kills whatever still runs in container id's cgroup and
// removes the cgroup, in every hierarchy the pod uses: the work of a
// container's shim (through libcontainer's destroy), for a container whose
// shim is gone. A cgroup that is already gone is fine.
func (p PodCgroup) KillContainer(id string) error {
	if p.PodPath == "" {
		return nil
	}
	if err := p.check(); err != nil {
		return err
	}
	if id == "" || strings.ContainsAny(id, "/.") {
		return fmt.Errorf("kill container cgroup: bad container id %q", id)
	}
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return err
	}
	roots = usableRoots(roots, p.PodPath)
	cgPath := p.ContainerPath(id)
	if p.Driver == DriverSystemd {
		return stopScope(p.Mode, roots, p.Slice, id, cgPath)
	}
	return removeTree(p.Mode, roots, cgPath)
}
