package rootless

import (
	"errors"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"peapod/cgroups"
)

// On a cgroup v2 host a user's processes get cgroups of their own only
// where systemd delegated a subtree to them: a user service with
// Delegate=yes (contrib/peapod.service) starts in its own cgroup, e.g.
// /user.slice/user-1000.slice/user@1000.service/app.slice/peapod.service,
// whose files the user owns. Before it starts anything, the parent readies
// that subtree (cgroups.PrepareDelegatedV2): it moves itself into the leaf
// CgroupLeaf, since a cgroup that passes controllers to children may hold
// no processes itself, and enables the controllers the cgroup has (cpu,
// memory, pids, io, cpuset: what systemd delegates) for its children. The
// holder, the network helper and the daemon then start in the leaf, and
// the daemon's pods go to a sibling, <cgroup>/pods (see
// ParentOptions.PodCgroup). A restarted parent, placed by systemd in the
// unit's cgroup again or already in the leaf, does the same.
//
// Without such a subtree (a login session's scope belongs to root) the
// parent logs why and goes on: pods run without cgroups, and the daemon's
// Status and `peapod check` say why accounting is unavailable.

// CgroupLeaf is the child of the delegated cgroup v2 subtree in which the
// parent, the holder, the network helper, the daemon and the shims run.
const CgroupLeaf = "supervisor"

// delegatedCgroupV2 readies the delegated cgroup v2 subtree of this
// process, if any, and returns it ("" when there is none, or on cgroup
// v1, where root delegates /peapod-<user> instead).
func delegatedCgroupV2(log *slog.Logger) string {
	if cgroups.DetectMode() != cgroups.ModeV2 {
		return ""
	}
	own, err := cgroups.PrepareDelegatedV2(CgroupLeaf)
	if err != nil {
		log.Warn("no delegated cgroup v2 subtree: pods run without cgroup limits or accounting; "+
			"run peapod as a systemd user service with Delegate=yes (contrib/peapod.service) and see `peapod check`",
			"err", err)
		return ""
	}
	dir := filepath.Join("/sys/fs/cgroup", own)
	if mark := delegationMark(dir); mark == "0" {
		// systemd (v251 and later) marks the cgroups of units with
		// Delegate=yes; a unit without it is systemd's to manage, and
		// it may undo what we did. Older systemd marks nothing.
		log.Warn("this cgroup is writable but systemd did not mark it as delegated (user.delegate): give the unit Delegate=yes", "cgroup", own)
	}
	ctrls, _ := readFileString(filepath.Join(dir, "cgroup.subtree_control"))
	log.Info("delegated cgroup v2 subtree ready", "cgroup", own, "leaf", path.Join(own, CgroupLeaf), "controllers", ctrls)
	return own
}

// podCgroupParent is the --cgroup-parent the daemon gets when the parent
// found the delegated subtree own: own/name, nil when there is none or
// when name is "" (the user chose the pods' parent).
func podCgroupParent(own, name string) []string {
	if own == "" || name == "" {
		return nil
	}
	return []string{"--cgroup-parent", path.Join(own, name)}
}

// delegationMark reads the mark systemd leaves on a delegated cgroup:
// "1" delegated, "0" not marked (or marked otherwise), "" when the file
// system cannot tell (no xattr support).
func delegationMark(dir string) string {
	buf := make([]byte, 16)
	for _, name := range []string{"user.delegate", "trusted.delegate"} {
		n, err := unix.Getxattr(dir, name, buf)
		switch {
		case err == nil:
			if strings.TrimSpace(string(buf[:n])) == "1" {
				return "1"
			}
		case errors.Is(err, unix.ENOTSUP):
			return ""
		}
	}
	return "0"
}

func readFileString(p string) (string, error) {
	b, err := os.ReadFile(p)
	return strings.TrimSpace(string(b)), err
}
