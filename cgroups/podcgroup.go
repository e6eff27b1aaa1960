package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs"
	"golang.org/x/sys/unix"
)

// Mode is the cgroup layout of the host.
type Mode string

const (
	// ModeV1 is cgroup v1, legacy or hybrid (v1 controllers plus a cgroup2
	// hierarchy without controllers at /sys/fs/cgroup/unified).
	ModeV1 Mode = "v1"
	// ModeV2 is the unified cgroup v2 hierarchy at /sys/fs/cgroup.
	ModeV2 Mode = "v2"
)

// DetectMode reports the cgroup layout of this host.
func DetectMode() Mode {
	if cgroups.IsCgroup2UnifiedMode() {
		return ModeV2
	}
	return ModeV1
}

// ErrInvalidParent marks a cgroup_parent that peapod refuses to use; the CRI
// layer maps it to InvalidArgument.
var ErrInvalidParent = errors.New("invalid cgroup parent")

// PodCgroup is a pod's cgroup and the pause cgroup beneath it. The sandbox
// store persists it as JSON.
type PodCgroup struct {
	// Mode is the layout the cgroups were created in.
	Mode Mode `json:"mode"`
	// PodPath is the pod cgroup, e.g. /kubepods/burstable/pod<uid>.
	PodPath string `json:"podPath"`
	// CreatedPod is true when peapod created PodPath (or owns it because it
	// lies under the default parent) and must remove it.
	CreatedPod bool `json:"createdPod"`
	// PausePath is the pause's cgroup, <PodPath>/<sandboxID>.
	PausePath string `json:"pausePath"`
	// Driver is DriverSystemd for cgroups made through systemd (see
	// systemd.go: PausePath is then <PodPath>/peapod-<sandboxID>.scope);
	// empty means cgroupfs.
	Driver string `json:"driver,omitempty"`
	// Slice is the pod's slice unit (systemd driver only).
	Slice string `json:"slice,omitempty"`
}

// Where the hierarchies live. Tests repoint them to run the v2 code on this
// package's v1-hybrid development host (see podcgroup_v2_test.go).
var (
	unifiedMountpoint = "/sys/fs/cgroup"
	hostMode          = DetectMode
)

// CreatePodCgroup creates the pod cgroup (unless it exists) and the pause
// cgroup beneath it, in every hierarchy. An empty cgroupParent (or "/", what
// a kubelet with --cgroups-per-qos=false sends) selects
// <defaultParent>/<sandboxID>, which peapod owns. A cgroupParent that is not
// an absolute, clean cgroupfs path yields an error wrapping
// ErrInvalidParent. On error nothing that this call created is left behind.
func CreatePodCgroup(cgroupParent, defaultParent, sandboxID string) (PodCgroup, error) {
	p, err := PlanPodCgroup(cgroupParent, defaultParent, sandboxID)
	if err != nil {
		return PodCgroup{}, err
	}
	return p, MakePodCgroup(p, defaultParent)
}

// PlanPodCgroup is the pod cgroup CreatePodCgroup would make, checked but
// not made, so that a record can name it first: Remove does not mind
// directories that were never made.
func PlanPodCgroup(cgroupParent, defaultParent, sandboxID string) (PodCgroup, error) {
	if err := checkSandboxID(sandboxID); err != nil {
		return PodCgroup{}, err
	}
	var p PodCgroup
	if cgroupParent == "" || cgroupParent == "/" {
		if err := checkPath(defaultParent); err != nil || defaultParent == "/" {
			return PodCgroup{}, fmt.Errorf("default cgroup parent %q: must be an absolute, clean path below /", defaultParent)
		}
		p.PodPath = filepath.Join(defaultParent, sandboxID)
		p.CreatedPod = true
	} else {
		if err := checkParent(cgroupParent); err != nil {
			return PodCgroup{}, err
		}
		p.PodPath = cgroupParent
	}
	p.PausePath = filepath.Join(p.PodPath, sandboxID)
	p.Mode = hostMode()
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return PodCgroup{}, err
	}
	// Rootless: only where the host delegated a subtree (delegation.go).
	podExisted := false
	for _, root := range usableRoots(roots, p.PausePath) {
		if exists(filepath.Join(root, p.PodPath)) {
			podExisted = true
		}
	}
	if !podExisted {
		p.CreatedPod = true
	}
	return p, nil
}

// MakePodCgroup makes the directories of a planned pod cgroup. On error
// nothing that this call created is left behind.
func MakePodCgroup(p PodCgroup, defaultParent string) error {
	shared := "" // an ancestor that other pods share, never rolled back
	if p.PodPath == filepath.Join(defaultParent, filepath.Base(p.PausePath)) {
		shared = defaultParent
	}
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return err
	}
	roots = usableRoots(roots, p.PausePath)
	var created []string // deepest first, per hierarchy
	for _, root := range roots {
		created = append(created, missingDirs(root, p.PausePath, shared)...)
	}
	switch {
	case len(roots) == 0:
		// Nothing delegated: the pod runs without a cgroup.
	case p.Mode == ModeV2:
		err = createUnified(roots[""], p.PodPath, p.PausePath)
	default:
		err = createV1(roots, p.PodPath, p.PausePath)
	}
	if err != nil {
		for _, dir := range created {
			_ = unix.Rmdir(dir)
		}
		return fmt.Errorf("create pod cgroup %s: %w", p.PausePath, err)
	}
	return nil
}

// createV1 lets the library's v1 manager make the directories: some
// controllers must be prepared before a task can join (cpuset copies cpus
// and mems from the parent). Pid -1 creates without joining.
func createV1(roots map[string]string, podPath, pausePath string) error {
	for _, cgPath := range []string{podPath, pausePath} {
		cg := &cgroups.Cgroup{Path: cgPath, Resources: &cgroups.Resources{}}
		m, err := fs.NewManager(cg, joinAll(roots, cgPath))
		if err != nil {
			return err
		}
		if err := m.Apply(-1); err != nil {
			return err
		}
	}
	return nil
}

// AddPause moves pid into the pause cgroup in every hierarchy. On v2 a pause
// started with PauseCgroupFD is already there.
func (p PodCgroup) AddPause(pid int) error {
	if err := p.check(); err != nil {
		return err
	}
	if p.Driver == DriverSystemd {
		return p.addPauseSystemd(pid)
	}
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return err
	}
	for key, root := range roots {
		dir := filepath.Join(root, p.PausePath)
		if (optionalHierarchy(p.Mode, key) || inUserNS()) && !exists(dir) {
			continue // rootless: a hierarchy not delegated has none
		}
		if err := cgroups.WriteCgroupProc(dir, pid); err != nil {
			if optionalHierarchy(p.Mode, key) && inUserNS() && errors.Is(err, os.ErrPermission) {
				// Rootless on hybrid: the cgroup2 mount's rules want
				// the common ancestor writable, the root; best effort.
				continue
			}
			return fmt.Errorf("move pause %d into %s: %w", pid, dir, err)
		}
	}
	return nil
}

// PauseCgroupFD opens the pause cgroup for clone3's CLONE_INTO_CGROUP
// (syscall.SysProcAttr.UseCgroupFD), so the pause is born in its cgroup.
// That only covers the unified hierarchy of a v2 host: on v1 it returns
// -1, nil and the caller uses AddPause. The caller closes the fd.
func (p PodCgroup) PauseCgroupFD() (int, error) {
	if p.Mode != ModeV2 || p.Driver == DriverSystemd { // systemd: AddPause starts its scope
		return -1, nil
	}
	if err := p.check(); err != nil {
		return -1, err
	}
	dir := filepath.Join(unifiedMountpoint, p.PausePath)
	if inUserNS() && !exists(dir) && delegated(unifiedMountpoint, p.PausePath) != nil {
		return -1, nil // rootless, not delegated: no pause cgroup (AddPause skips it)
	}
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	return fd, nil
}

// StartPause calls start, which starts the pause process, so that the
// pause is born in its cgroups where it can be, and reports whether it was
// (otherwise the caller moves it there with AddPause):
//
//   - v2 with cgroupfs: start gets PauseCgroupFD for clone3's
//     CLONE_INTO_CGROUP.
//   - v1 (legacy or hybrid) with cgroupfs, as root: start runs on a new OS
//     thread that first moved itself into the pause cgroup of every v1
//     hierarchy (0 written to `tasks`), so the process it forks inherits
//     them; the hybrid cgroup2 mount, where only whole processes move, is
//     covered by CLONE_INTO_CGROUP. Moving a process (cgroup.procs, what
//     AddPause does) takes a global lock whose RCU grace period costs
//     several milliseconds; a thread moving only itself does not take it.
//     The thread ends with the call: it must never run anything else.
//   - Otherwise (systemd, rootless) start gets -1.
func (p PodCgroup) StartPause(start func(cgroupFD int) error) (bornIn bool, err error) {
	if p.Driver != DriverSystemd && p.Mode == ModeV2 {
		fd, err := p.PauseCgroupFD()
		if err != nil {
			return false, err
		}
		if fd >= 0 {
			defer unix.Close(fd)
		}
		return fd >= 0, start(fd)
	}
	if p.Driver == DriverSystemd || p.Mode != ModeV1 || inUserNS() {
		return false, start(-1)
	}
	if err := p.check(); err != nil {
		return false, err
	}
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return false, err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- p.startFromPauseCgroup(roots, start)
	}()
	return true, <-errc
}

// startFromPauseCgroup is StartPause's work on its locked thread: join the
// pause cgroups, start, go back home. It returns only once the thread is
// home again (and then unlocks it) or known to end with its goroutine.
func (p PodCgroup) startFromPauseCgroup(roots map[string]string, start func(cgroupFD int) error) error {
	home, err := threadCgroups(roots)
	if err != nil {
		runtime.UnlockOSThread() // still where it was: reusable
		return err
	}
	cgfd := -1
	var left []string // roots whose pause cgroup this thread joined
	// Back home before anyone learns of the pause: a thread of the daemon
	// in a pod's cgroup would count in its stats, and a teardown that
	// kills everything there would kill the daemon. A thread that cannot
	// go back stays locked, and so ends with its goroutine.
	defer func() {
		for _, root := range left {
			if os.WriteFile(filepath.Join(root, home[root], "tasks"), []byte("0"), 0) != nil {
				return
			}
		}
		runtime.UnlockOSThread()
	}()
	for key, root := range roots {
		dir := filepath.Join(root, p.PausePath)
		if optionalHierarchy(p.Mode, key) && !exists(dir) {
			continue
		}
		if key == "" { // the hybrid cgroup2 mount
			fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				return &os.PathError{Op: "open", Path: dir, Err: err}
			}
			defer unix.Close(fd)
			cgfd = fd
			continue
		}
		if _, ok := home[root]; !ok {
			return fmt.Errorf("join pause cgroup %s: this thread's own cgroup there is unknown", dir)
		}
		if err := os.WriteFile(filepath.Join(dir, "tasks"), []byte("0"), 0); err != nil {
			return fmt.Errorf("join pause cgroup %s: %w", dir, err)
		}
		left = append(left, root)
	}
	return start(cgfd)
}

// threadCgroups maps each of the v1 hierarchy roots (by controller, as
// hierarchyRoots gives them) to the calling thread's cgroup in it
// (/proc/thread-self/cgroup).
func threadCgroups(roots map[string]string) (map[string]string, error) {
	b, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || f[1] == "" {
			continue // the cgroup2 line: not a v1 hierarchy
		}
		for _, c := range strings.Split(f[1], ",") {
			if root, ok := roots[c]; ok {
				out[root] = f[2]
			}
		}
	}
	return out, nil
}

// Remove kills whatever still runs in the pause cgroup, waits (bounded)
// until it is empty and removes it, then removes the pod cgroup if peapod
// created it. A pod cgroup that still has children (containers' cgroups not
// yet removed) is left in place without error; calling Remove again once
// they are gone finishes the job. Missing directories are fine, so Remove
// can be repeated any number of times.
func (p PodCgroup) Remove() error {
	if p.PodPath == "" && p.PausePath == "" {
		return nil
	}
	if err := p.check(); err != nil {
		return err
	}
	if p.Driver == DriverSystemd {
		return p.removeSystemd()
	}
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return err
	}
	if err := killCgroup(p.Mode, roots, p.PausePath, killBound); err != nil {
		return err
	}
	var errs []error
	for _, root := range roots {
		if err := cgroups.RemovePath(filepath.Join(root, p.PausePath)); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 || !p.CreatedPod {
		return errors.Join(errs...)
	}
	for _, root := range roots {
		dir := filepath.Join(root, p.PodPath)
		switch err := unix.Rmdir(dir); err {
		case nil, unix.ENOENT:
		case unix.EBUSY, unix.ENOTEMPTY:
			// Still in use: containers' cgroups, removed by their owner.
		default:
			errs = append(errs, &os.PathError{Op: "rmdir", Path: dir, Err: err})
		}
	}
	return errors.Join(errs...)
}

// Exists reports whether the pod cgroup still exists in every hierarchy
// (rootless: in every delegated one). A pod cgroup removed behind peapod's
// back (by the kubelet, or an administrator) reports false.
func (p PodCgroup) Exists() bool {
	if p.check() != nil {
		return false
	}
	roots, err := hierarchyRoots(p.Mode)
	if err != nil || len(roots) == 0 {
		return false
	}
	roots = usableRoots(roots, p.PodPath)
	for _, root := range roots {
		if !exists(filepath.Join(root, p.PodPath)) {
			return false
		}
	}
	return true
}

// check guards methods against a damaged record: above all, never kill the
// processes of the root cgroup or of a cgroup outside the pod.
func (p PodCgroup) check() error {
	if p.Mode != ModeV1 && p.Mode != ModeV2 {
		return fmt.Errorf("pod cgroup %s: unknown cgroup mode %q", p.PodPath, p.Mode)
	}
	if p.Driver != "" && (p.Driver != DriverSystemd || checkSlice(p.Slice) != nil) {
		return fmt.Errorf("pod cgroup %s: unknown driver %q or bad slice %q", p.PodPath, p.Driver, p.Slice)
	}
	if checkPath(p.PodPath) != nil || checkPath(p.PausePath) != nil ||
		p.PodPath == "/" || filepath.Dir(p.PausePath) != p.PodPath {
		return fmt.Errorf("pod cgroup record damaged: pod %q, pause %q", p.PodPath, p.PausePath)
	}
	return nil
}
