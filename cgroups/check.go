package cgroups

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Controllers peapod needs for pod accounting and container limits; the
// kubelet requires the same set.
var (
	requiredV1 = []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer"}
	requiredV2 = []string{"cpu", "cpuset", "memory", "pids"}
)

// Check reports what keeps peapod from managing pod cgroups on this host,
// one line per problem, each saying what to do. No lines means fine.
func Check() []string {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &st); err != nil ||
		(st.Type != unix.CGROUP2_SUPER_MAGIC && st.Type != unix.TMPFS_MAGIC) {
		return []string{"no cgroup filesystem at /sys/fs/cgroup: mount cgroup2 there " +
			"(mount -t cgroup2 none /sys/fs/cgroup) or the v1 hierarchies on a tmpfs"}
	}
	if DetectMode() == ModeV2 {
		return checkV2(unifiedMountpoint)
	}
	return checkV1()
}

func checkV1() []string {
	roots, err := hierarchyRoots(ModeV1)
	if err != nil {
		return []string{fmt.Sprintf("cgroup v1: %v: mount the controller hierarchies under /sys/fs/cgroup, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)", err)}
	}
	var out []string
	for _, c := range requiredV1 {
		if _, ok := roots[c]; !ok {
			out = append(out, fmt.Sprintf("cgroup v1 controller %q is not mounted: mount it "+
				"(mkdir /sys/fs/cgroup/%[1]s && mount -t cgroup -o %[1]s cgroup /sys/fs/cgroup/%[1]s), "+
				"or check that it is not disabled with cgroup_disable= on the kernel command line", c))
		}
	}
	for key, root := range roots {
		if line := checkWritable(root, "cgroup v1 hierarchy "+hierarchyName(key)); line != "" {
			out = append(out, line)
		}
	}
	return out
}

func checkV2(root string) []string {
	var out []string
	data, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return []string{fmt.Sprintf("cgroup v2: cannot read %s/cgroup.controllers (%v): is cgroup2 mounted there?", root, err)}
	}
	have := strings.Fields(string(data))
	for _, c := range requiredV2 {
		if !slices.Contains(have, c) {
			out = append(out, fmt.Sprintf("cgroup v2 controller %q is not available in %s: it is disabled "+
				"(cgroup_disable= on the kernel command line) or held by a v1 hierarchy (cgroup_no_v1=all frees them)", c, root))
		}
	}
	if line := checkWritable(root, "cgroup v2 hierarchy"); line != "" {
		out = append(out, line)
	}
	return out
}

// checkWritable checks that cgroups can be created where peapod creates
// them: the hierarchy root for root, the own (delegated) cgroup otherwise.
func checkWritable(root, what string) string {
	if inUserNS() {
		// Rootless: the hierarchies are the host's; what matters is
		// the subtree delegated to the user (Unavailability).
		return ""
	}
	dir := root
	if os.Geteuid() != 0 {
		own, err := ownCgroup(root)
		if err != nil {
			return fmt.Sprintf("%s: cannot find own cgroup: %v", what, err)
		}
		dir = filepath.Join(root, own)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		if os.Geteuid() != 0 {
			return fmt.Sprintf("%s: %s is not writable by uid %d (%v): without a delegated subtree pods run "+
				"without cgroup accounting; on cgroup v2 run peapod in a systemd unit with Delegate=yes, "+
				"on v1 chown a subtree to this user in every hierarchy", what, dir, os.Geteuid(), err)
		}
		return fmt.Sprintf("%s: %s is not writable (%v): remount it read-write", what, dir, err)
	}
	return ""
}

// ownCgroup is this process's cgroup in the hierarchy mounted at root.
func ownCgroup(root string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return "", err
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	base := filepath.Base(root)
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		v2 := f[0] == "0" && f[1] == ""
		if st.Type == unix.CGROUP2_SUPER_MAGIC {
			if v2 {
				return f[2], nil
			}
			continue
		}
		// v1: "4:cpu,cpuacct:/x" for a mount named cpu,cpuacct (or cpu),
		// "1:name=systemd:/x" for /sys/fs/cgroup/systemd.
		if !v2 && (f[1] == base || f[1] == "name="+base || slices.Contains(strings.Split(f[1], ","), base)) {
			return f[2], nil
		}
	}
	return "", fmt.Errorf("no entry for %s in /proc/self/cgroup", root)
}

func hierarchyName(key string) string {
	if key == "" {
		return "unified (cgroup2)"
	}
	return key
}
