package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// PrepareDelegatedV2At readies the delegated cgroup v2 cgroup cgPath (a
// cgroupfs path, e.g. a systemd scope with Delegate=yes) for pods the way
// PrepareDelegatedV2 readies this process's own: every process in it
// moves into the child leaf, then the controllers it has are enabled for
// its children. Done again, it only finds nothing to move. It fails with
// the reason when cgPath is not a writable (delegated) cgroup.
func PrepareDelegatedV2At(cgPath, leaf string) error {
	if hostMode() != ModeV2 {
		return errors.New("delegated cgroup v2 subtree: this host uses cgroup v1")
	}
	if leaf == "" || strings.ContainsAny(leaf, "/\x00") || leaf == "." || leaf == ".." {
		return fmt.Errorf("delegated cgroup v2 subtree: bad leaf name %q", leaf)
	}
	if checkPath(cgPath) != nil || cgPath == "/" {
		return fmt.Errorf("delegated cgroup v2 subtree: bad cgroup %q", cgPath)
	}
	dir := filepath.Join(unifiedMountpoint, cgPath)
	for _, f := range []string{"", "cgroup.procs", "cgroup.subtree_control"} {
		if err := unix.Access(filepath.Join(dir, f), unix.W_OK); err != nil {
			return fmt.Errorf("delegated cgroup v2 subtree: %s", notDelegatedReason(&os.PathError{Op: "write", Path: filepath.Join(dir, f), Err: err}))
		}
	}
	leafDir := filepath.Join(dir, leaf)
	if err := os.Mkdir(leafDir, 0o755); err != nil && !os.IsExist(err) {
		return fmt.Errorf("delegated cgroup v2 subtree: %w", err)
	}
	if err := moveAllProcs(dir, leafDir); err != nil {
		return fmt.Errorf("delegated cgroup v2 subtree: %w", err)
	}
	enableControllers(dir)
	return nil
}

// moveAllProcs moves every process of the cgroup dir into the cgroup to;
// processes may fork meanwhile, so it goes a few rounds until none is left.
func moveAllProcs(dir, to string) error {
	for round := 0; ; round++ {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			return nil
		}
		if round == 10 {
			return fmt.Errorf("processes %v keep appearing in %s", pids, dir)
		}
		for _, pid := range pids {
			err := os.WriteFile(filepath.Join(to, "cgroup.procs"), []byte(pid), 0)
			if err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("move process %s into %s: %w", pid, to, err)
			}
		}
	}
}
