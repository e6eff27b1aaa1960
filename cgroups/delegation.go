package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/userns"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// Rootless peapod runs as uid 0 in a user namespace. The cgroup
// filesystems are the host's: a hierarchy is usable only where the host
// delegated a subtree to the user (v1: a directory chowned to the user in
// that hierarchy; v2: a subtree with Delegate=yes). Pods get cgroups in the
// delegated hierarchies and none in the others; those controllers are
// reported unavailable (Unavailability) and their statistics are absent,
// not zero.
//
// As real root every hierarchy is usable and nothing here changes
// behaviour.

// inUserNS reports whether peapod runs in a user namespace (rootless:
// under peapod's own bootstrap, RootlessKit or unshare alike). The tests
// run the rootless logic in real user namespaces (rootless_test.go).
var inUserNS = userns.RunningInUserNS

// delegated reports why the hierarchy mounted at root is not usable for
// cgPath by this process: nil when cgPath, or its nearest existing
// ancestor, is writable (what creating, joining and removing cgroups
// there needs).
//
// On a cgroup2 mount, moving a process (the pause, a container) also needs
// write access to cgroup.procs of the common ancestor of the cgroup it
// leaves and the one it joins: the daemon's own cgroup must lie in the
// delegated subtree too (systemd's Delegate=yes, PrepareDelegatedV2).
func delegated(root, cgPath string) error {
	dir := filepath.Join(root, cgPath)
	for dir != root && !exists(dir) {
		dir = filepath.Dir(dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return &os.PathError{Op: "write", Path: dir, Err: err}
	}
	var st unix.Statfs_t
	if unix.Statfs(root, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil
	}
	own, err := ownCgroup(root)
	if err != nil {
		return nil // cannot tell: let the kernel decide
	}
	anc := filepath.Join(root, commonAncestor(own, cgPath), "cgroup.procs")
	if err := unix.Access(anc, unix.W_OK); err != nil {
		return &os.PathError{Op: "write", Path: anc, Err: err}
	}
	return nil
}

// commonAncestor of two clean absolute cgroup paths.
func commonAncestor(a, b string) string {
	for a != "/" && b != a && !strings.HasPrefix(b, a+"/") {
		a = filepath.Dir(a)
	}
	return a
}

// usableRoots is roots without the hierarchies that are not delegated for
// cgPath; as real root, roots itself.
func usableRoots(roots map[string]string, cgPath string) map[string]string {
	if !inUserNS() {
		return roots
	}
	out := make(map[string]string, len(roots))
	for k, root := range roots {
		if delegated(root, cgPath) == nil {
			out[k] = root
		}
	}
	return out
}

// notDelegated tells, for a read of cgPath in the hierarchy at root that
// found no cgroup (err wraps ErrNotFound), whether that is because the
// hierarchy is not delegated (rootless): the controller is unavailable
// for the cgroup, which is not gone.
func notDelegated(root, cgPath string, err error) bool {
	return errors.Is(err, ErrNotFound) && inUserNS() && delegated(root, cgPath) != nil
}

// Unavailability says, for each controller that matters to peapod (limits
// and accounting), why pods under parent (a cgroupfs path such as the
// default cgroup parent; "" for the host as a whole) cannot use it. Only
// unavailable controllers are listed: not mounted (v1), not offered by the
// root (v2), or, in a user namespace, not delegated to this user.
// Verbose Status and `peapod check` report it.
func Unavailability(parent string) map[string]string {
	out := map[string]string{}
	mode := hostMode()
	if mode == ModeV2 {
		data, _ := os.ReadFile(filepath.Join(unifiedMountpoint, "cgroup.controllers"))
		have := strings.Fields(string(data))
		var sub []string // what the delegated subtree gets
		var why string
		if parent != "" && checkPath(parent) == nil && inUserNS() {
			if err := delegated(unifiedMountpoint, parent); err != nil {
				why = notDelegatedReason(err)
			} else {
				dir := nearestExisting(unifiedMountpoint, parent)
				b, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
				sub = strings.Fields(string(b))
				why = fmt.Sprintf("not delegated to this user: not enabled for %s (enable it in the "+
					"parent's cgroup.subtree_control; with systemd, Delegate=yes in the user's unit)", dir)
			}
		}
		for _, c := range []string{"cpu", "cpuset", "memory", "pids", "io", "hugetlb"} {
			switch {
			case !slices.Contains(have, c):
				out[c] = "not available in the cgroup v2 root: disabled (cgroup_disable=) or held by a v1 hierarchy"
			case why != "" && (sub == nil || !slices.Contains(sub, c)):
				out[c] = why
			}
		}
		return out
	}
	roots, _ := v1Roots()
	check := parent != "" && checkPath(parent) == nil && inUserNS()
	for _, c := range []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "hugetlb"} {
		root, ok := roots[c]
		if !ok {
			out[c] = "cgroup v1 hierarchy not mounted"
			continue
		}
		if check {
			if err := delegated(root, parent); err != nil {
				out[c] = notDelegatedReason(err)
			}
		}
	}
	return out
}

func nearestExisting(root, cgPath string) string {
	dir := filepath.Join(root, cgPath)
	for dir != root && !exists(dir) {
		dir = filepath.Dir(dir)
	}
	return dir
}

// notDelegatedReason words a delegated() error for a user: which directory
// it cannot write, as which host user, and what fixes it.
func notDelegatedReason(err error) string {
	user := "this user"
	if uid, ok := hostUID(); ok {
		user = fmt.Sprintf("uid %d", uid)
	}
	what := err.Error()
	var pe *os.PathError
	if errors.As(err, &pe) {
		what = fmt.Sprintf("%s is not writable (%v)", pe.Path, pe.Err)
	}
	return fmt.Sprintf("not delegated to this user: %s; as root, delegate a subtree to %s "+
		"(v1: a directory chowned -R to the user in every hierarchy, as integration/rootless-delegate.sh does; "+
		"v2: Delegate=yes in the user's systemd unit)", what, user)
}

// hostUID is the host uid that uid 0 of this user namespace maps to.
func hostUID() (int, bool) {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return 0, false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		var in, out, n int
		if c, _ := fmt.Sscan(line, &in, &out, &n); c == 3 && in == 0 && n > 0 {
			return out, true
		}
	}
	return 0, false
}

// Undelegated lists the controllers that a cgroup at cgPath (a cgroupfs
// path, existing or to be created) cannot use because the host did not
// delegate them to this user: v1 subsystem names ("memory", "cpu", ...) of
// hierarchies where cgPath cannot be created or written, or on v2 the
// controllers that the parent does not pass down (all of them where the
// subtree is not writable). As real root, and for v1 hierarchies that are
// not mounted at all, it lists nothing: those are not a rootless matter.
// The shim drops the limits of these controllers rather than fail the
// container.
func Undelegated(cgPath string) []string {
	if !inUserNS() || checkPath(cgPath) != nil {
		return nil
	}
	var out []string
	if hostMode() == ModeV2 {
		all := []string{"cpu", "cpuset", "io", "memory", "hugetlb", "pids", "rdma", "misc"}
		root := unifiedMountpoint
		if delegated(root, cgPath) != nil {
			return all
		}
		// A cgroup has the controllers its parent enables for children.
		dir := filepath.Join(root, cgPath)
		file := "cgroup.controllers"
		if !exists(dir) {
			dir, file = nearestExisting(root, cgPath), "cgroup.subtree_control"
		}
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			return all
		}
		have := strings.Fields(string(b))
		for _, c := range all {
			if !slices.Contains(have, c) {
				out = append(out, c)
			}
		}
		return out
	}
	roots, err := hierarchyRoots(ModeV1)
	if err != nil {
		return nil
	}
	for key, root := range roots {
		if key != "" && !strings.HasPrefix(key, "name=") && delegated(root, cgPath) != nil {
			out = append(out, key)
		}
	}
	slices.Sort(out)
	return out
}

// PrepareDelegatedV2 readies, for rootless pods on a cgroup v2 host, the
// subtree that the host delegated to this process's cgroup (systemd's
// Delegate=yes gives a user's service its own cgroup), and returns that
// cgroup's path: the parent under which the pods' cgroups go.
//
// cgroup v2 lets a cgroup either hold processes or pass controllers down
// to children, not both ("no internal processes"). So every process of
// the cgroup (the daemon and its helpers) moves into the child leaf first,
// then the controllers the cgroup has are enabled for its children. A
// process already in leaf (a restarted daemon) keeps it, and the parent
// is leaf's. Without a delegated, writable cgroup it fails with the
// reason; pods then run without cgroups.
func PrepareDelegatedV2(leaf string) (string, error) {
	if hostMode() != ModeV2 {
		return "", errors.New("delegated cgroup v2 subtree: this host uses cgroup v1")
	}
	if leaf == "" || strings.ContainsAny(leaf, "/\x00") || leaf == "." || leaf == ".." {
		return "", fmt.Errorf("delegated cgroup v2 subtree: bad leaf name %q", leaf)
	}
	root := unifiedMountpoint
	own, err := ownCgroup(root)
	if err != nil {
		return "", fmt.Errorf("delegated cgroup v2 subtree: %w", err)
	}
	if filepath.Base(own) == leaf && own != "/" {
		own = filepath.Dir(own) // prepared by an earlier start
	}
	if own == "/" {
		return "", errors.New("delegated cgroup v2 subtree: this process is in the root cgroup, which is not delegated")
	}
	dir := filepath.Join(root, own)
	for _, f := range []string{"", "cgroup.procs", "cgroup.subtree_control"} {
		if err := unix.Access(filepath.Join(dir, f), unix.W_OK); err != nil {
			return "", fmt.Errorf("delegated cgroup v2 subtree: %s", notDelegatedReason(&os.PathError{Op: "write", Path: filepath.Join(dir, f), Err: err}))
		}
	}
	leafDir := filepath.Join(dir, leaf)
	if err := os.Mkdir(leafDir, 0o755); err != nil && !os.IsExist(err) {
		return "", fmt.Errorf("delegated cgroup v2 subtree: %w", err)
	}
	// Processes may fork meanwhile: a few rounds until none is left.
	for round := 0; ; round++ {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return "", fmt.Errorf("delegated cgroup v2 subtree: %w", err)
		}
		pids := strings.Fields(string(b))
		if len(pids) == 0 {
			break
		}
		if round == 10 {
			return "", fmt.Errorf("delegated cgroup v2 subtree: processes %v keep appearing in %s", pids, dir)
		}
		for _, pid := range pids {
			err := os.WriteFile(filepath.Join(leafDir, "cgroup.procs"), []byte(pid), 0)
			if err != nil && !errors.Is(err, unix.ESRCH) {
				return "", fmt.Errorf("delegated cgroup v2 subtree: move process %s into %s: %w", pid, leafDir, err)
			}
		}
	}
	enableControllers(dir)
	return own, nil
}

// DropLimits clears in r the limits of the controllers ctrls (as
// Undelegated names them) and returns those of ctrls that had a limit set:
// rootless peapod applies what the delegated controllers can enforce and
// drops the rest rather than fail.
func DropLimits(r *cgroups.Resources, ctrls []string) []string {
	var had []string
	for _, c := range ctrls {
		set := false
		switch c {
		case "cpu":
			set = r.CpuShares != 0 || r.CpuQuota != 0 || r.CpuPeriod != 0 || r.CpuRtRuntime != 0 ||
				r.CpuRtPeriod != 0 || r.CPUIdle != nil || r.CpuBurst != nil || r.CpuWeight != 0
			r.CpuShares, r.CpuQuota, r.CpuPeriod, r.CpuRtRuntime, r.CpuRtPeriod = 0, 0, 0, 0, 0
			r.CPUIdle, r.CpuBurst, r.CpuWeight = nil, nil, 0
		case "cpuset":
			set = r.CpusetCpus != "" || r.CpusetMems != ""
			r.CpusetCpus, r.CpusetMems = "", ""
		case "memory":
			set = r.Memory != 0 || r.MemoryReservation != 0 || r.MemorySwap != 0 ||
				r.MemorySwappiness != nil || r.OomKillDisable
			r.Memory, r.MemoryReservation, r.MemorySwap = 0, 0, 0
			r.MemorySwappiness, r.OomKillDisable, r.MemoryCheckBeforeUpdate = nil, false, false
		case "pids":
			set = r.PidsLimit != nil
			r.PidsLimit = nil
		case "blkio", "io":
			set = r.BlkioWeight != 0 || r.BlkioLeafWeight != 0 || r.BlkioWeightDevice != nil ||
				r.BlkioThrottleReadBpsDevice != nil || r.BlkioThrottleWriteBpsDevice != nil ||
				r.BlkioThrottleReadIOPSDevice != nil || r.BlkioThrottleWriteIOPSDevice != nil
			r.BlkioWeight, r.BlkioLeafWeight, r.BlkioWeightDevice = 0, 0, nil
			r.BlkioThrottleReadBpsDevice, r.BlkioThrottleWriteBpsDevice = nil, nil
			r.BlkioThrottleReadIOPSDevice, r.BlkioThrottleWriteIOPSDevice = nil, nil
		case "hugetlb":
			set = r.HugetlbLimit != nil
			r.HugetlbLimit = nil
		case "net_cls":
			set = r.NetClsClassid != 0
			r.NetClsClassid = 0
		case "net_prio":
			set = r.NetPrioIfpriomap != nil
			r.NetPrioIfpriomap = nil
		case "rdma":
			set = r.Rdma != nil
			r.Rdma = nil
		}
		// v2: unified keys of the controller ("memory.high").
		for k := range r.Unified {
			if strings.HasPrefix(k, c+".") {
				delete(r.Unified, k)
				set = true
			}
		}
		if set {
			had = append(had, c)
		}
	}
	return had
}
