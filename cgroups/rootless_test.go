package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"peapod/internal/usernstest"
)

// The rootless tests run the real code as root in a user namespace
// (usernstest), over a v1 subtree delegated to the namespace's root in
// every hierarchy but memory and pids: what a rootless peapod meets when
// the host delegated only part of the controllers.

const rootlessParentEnv = "PEAPOD_CGTEST_ROOTLESS_PARENT"

var notDelegatedHere = []string{"memory", "pids"}

func TestRootlessPartialDelegation(t *testing.T) {
	usernstest.RequireRoot(t)
	if DetectMode() != ModeV1 {
		t.Skip("the delegated subtree is a cgroup v1 one")
	}
	parent := "/peapod-cgtest-rl-" + randHex(4)
	usernstest.Delegate(t, parent, notDelegatedHere...)
	// The hybrid cgroup2 mount delegated too, but the child is not born
	// in it: v2 wants the common ancestor (the root) writable to move a
	// process in, so that hierarchy is not usable and must not fail the
	// pod.
	const hybrid = "/sys/fs/cgroup/unified"
	var st unix.Statfs_t
	if unix.Statfs(hybrid, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		usernstest.DelegateV2(t, hybrid, parent)
	}
	out := usernstest.Run(t, "^TestRootlessChild", usernstest.Options{
		Env:  []string{rootlessParentEnv + "=" + parent},
		Args: []string{"-test.v"},
	})
	t.Log(out)
	// The parent's view: the pod cgroups the child made (and removed)
	// are gone; the delegated subtree holds nothing (Delegate's cleanup
	// reports leftovers).
}

func rootlessParent(t *testing.T) string {
	t.Helper()
	usernstest.RequireChild(t)
	p := os.Getenv(rootlessParentEnv)
	if p == "" {
		t.Skip("started by TestRootlessPartialDelegation")
	}
	if !inUserNS() {
		t.Fatal("the child does not see itself in a user namespace")
	}
	return p
}

func TestRootlessChildPodCgroupInDelegatedHierarchiesOnly(t *testing.T) {
	parent := rootlessParent(t)
	def := parent + "/pods"
	id := newSandboxID()
	p, err := CreatePodCgroup("", def, id)
	if err != nil {
		t.Fatalf("create in a partly delegated subtree: %v", err)
	}
	roots, err := hierarchyRoots(ModeV1)
	if err != nil {
		t.Fatal(err)
	}
	for key, root := range roots {
		dir := filepath.Join(root, p.PausePath)
		want := key != "" && !slices.Contains(notDelegatedHere, key)
		if got := exists(dir); got != want {
			t.Errorf("%s exists=%v, want %v", dir, got, want)
		}
	}
	if !p.Exists() {
		t.Error("Exists: false for a pod cgroup present in every delegated hierarchy")
	}

	s := startSleeper(t, nil)
	pid := s.cmd.Process.Pid
	if err := p.AddPause(pid); err != nil {
		t.Fatalf("AddPause: %v", err)
	}
	for _, line := range procCgroups(t, pid) {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || f[1] == "" || strings.HasPrefix(f[1], "name=") {
			continue
		}
		in := f[2] == p.PausePath
		want := !slices.Contains(notDelegatedHere, f[1])
		if in != want {
			t.Errorf("pause in %s: %q (in pause cgroup %v, want %v)", f[1], f[2], in, want)
		}
	}

	// Pod-level limits: the delegated controllers take them, the others'
	// are dropped.
	limit, shares := int64(256<<20), uint64(512)
	if err := p.SetResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, CPU: &specs.LinuxCPU{Shares: &shares}}); err != nil {
		t.Errorf("SetResources with memory not delegated: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(roots["cpu"], p.PodPath, "cpu.shares")); err != nil || strings.TrimSpace(string(b)) != "512" {
		t.Errorf("pod cpu.shares = %q, %v", b, err)
	}

	st, err := ReadStats(p.PodPath)
	if err != nil {
		t.Fatalf("ReadStats: %v", err)
	}
	if st.CPU == nil {
		t.Error("CPU stats absent although cpuacct is delegated")
	}
	if st.Memory != nil || st.Pids != nil {
		t.Errorf("memory %+v, pids %+v: want absent (not delegated), not zero", st.Memory, st.Pids)
	}
	dst, err := ReadDetailedStats(p.PodPath)
	if err != nil || dst.CPUControl == nil || dst.Memory != nil {
		t.Errorf("ReadDetailedStats: %+v, %v", dst, err)
	}
	if _, ok, err := ReadCPUUsage(p.PodPath); !ok || err != nil {
		t.Errorf("ReadCPUUsage: ok=%v err=%v", ok, err)
	}
	ps, err := ReadProcessStats(p.PausePath, pid, true)
	if err != nil || ps.Processes != 1 {
		t.Errorf("ReadProcessStats: %+v, %v", ps, err)
	}
	// A cgroup that is gone from the delegated hierarchies is gone.
	if _, err := ReadStats(def + "/" + newSandboxID()); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadStats of a missing cgroup: %v, want ErrNotFound", err)
	}

	un := Unavailability(def)
	for _, c := range notDelegatedHere {
		if !strings.Contains(un[c], "not delegated to this user") {
			t.Errorf("Unavailability[%s] = %q, want not delegated", c, un[c])
		}
	}
	for _, c := range []string{"cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio"} {
		if r, ok := un[c]; ok {
			t.Errorf("Unavailability[%s] = %q for a delegated controller", c, r)
		}
	}
	for _, line := range Check() {
		if strings.Contains(line, "not writable") {
			t.Errorf("Check in a user namespace: %s", line)
		}
	}
	if got := Undelegated(filepath.Join(p.PodPath, "ctr")); !slices.Equal(got, notDelegatedHere) {
		t.Errorf("Undelegated = %v, want %v", got, notDelegatedHere)
	}

	if err := p.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	s.assertKilled(t)
	for _, root := range roots {
		if dir := filepath.Join(root, p.PodPath); exists(dir) {
			t.Errorf("%s left after Remove", dir)
		}
	}
	if err := RemoveParentIfEmpty(def); err != nil {
		t.Errorf("RemoveParentIfEmpty: %v", err)
	}
}

func TestRootlessChildUndelegatedParentRunsWithoutCgroup(t *testing.T) {
	parent := rootlessParent(t)
	_ = parent
	// A default parent outside the delegated subtree: nothing is
	// writable, the pod gets no cgroup and that is not an error.
	def := "/peapod-cgtest-nowhere-" + randHex(4)
	id := newSandboxID()
	p, err := CreatePodCgroup("", def, id)
	if err != nil {
		t.Fatalf("create without delegation: %v", err)
	}
	roots, _ := hierarchyRoots(ModeV1)
	for _, root := range roots {
		if exists(filepath.Join(root, def)) {
			t.Errorf("%s created without delegation", filepath.Join(root, def))
		}
	}
	s := startSleeper(t, nil)
	if err := p.AddPause(s.cmd.Process.Pid); err != nil {
		t.Errorf("AddPause: %v", err)
	}
	st, err := ReadStats(p.PodPath)
	if err != nil || st.CPU != nil || st.Memory != nil || st.Pids != nil {
		t.Errorf("ReadStats without delegation: %+v, %v: want nothing accounted, no error", st, err)
	}
	if len(Unavailability(def)) < 7 {
		t.Errorf("Unavailability: %v", Unavailability(def))
	}
	if err := p.Remove(); err != nil {
		t.Errorf("Remove: %v", err)
	}
	if removed, err := SweepOrphans(def, func(string) bool { return false }); err != nil || len(removed) != 0 {
		t.Errorf("SweepOrphans: %v, %v", removed, err)
	}
}

func TestRootlessChildSweepOrphans(t *testing.T) {
	parent := rootlessParent(t)
	def := parent + "/sweep"
	keep, drop := newSandboxID(), newSandboxID()
	pk, err := CreatePodCgroup("", def, keep)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreatePodCgroup("", def, drop); err != nil {
		t.Fatal(err)
	}
	removed, err := SweepOrphans(def, func(id string) bool { return id == keep })
	if err != nil || len(removed) != 1 || removed[0] != filepath.Join(def, drop) {
		t.Errorf("SweepOrphans = %v, %v", removed, err)
	}
	if !pk.Exists() {
		t.Error("kept pod cgroup removed")
	}
	if err := pk.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := RemoveParentIfEmpty(def); err != nil {
		t.Fatal(err)
	}
}

const (
	rlV2MountEnv = "PEAPOD_CGTEST_V2_MOUNT"
	rlV2SvcEnv   = "PEAPOD_CGTEST_V2_SERVICE"
	rlV2OtherEnv = "PEAPOD_CGTEST_V2_OTHER"
)

// TestRootlessV2DelegatedSubtree runs the v2 path as root of a user
// namespace born in a delegated cgroup2 directory, the way systemd starts
// a user's service with Delegate=yes. On this v1-hybrid host the cgroup2
// mount is the controller-less /sys/fs/cgroup/unified (a real cgroup2
// filesystem: moves, clone-into-cgroup, kill and removal are the
// kernel's); on a v2 host it is /sys/fs/cgroup.
func TestRootlessV2DelegatedSubtree(t *testing.T) {
	usernstest.RequireRoot(t)
	mnt := unifiedMountpoint
	if DetectMode() != ModeV2 {
		mnt = "/sys/fs/cgroup/unified"
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			t.Skip("no cgroup2 mount")
		}
	}
	svc := "/peapod-cgtest-v2-" + randHex(4)
	dir := usernstest.DelegateV2(t, mnt, svc)
	// Writable, but the child is not in it: processes cannot be moved
	// there (the common ancestor is the root).
	other := svc + "-other"
	usernstest.DelegateV2(t, mnt, other)
	out := usernstest.Run(t, "^TestRootlessV2Child", usernstest.Options{
		Cgroup2Dir: dir,
		Env:        []string{rlV2MountEnv + "=" + mnt, rlV2SvcEnv + "=" + svc, rlV2OtherEnv + "=" + other},
		Args:       []string{"-test.v"},
	})
	if !strings.Contains(out, "--- PASS: TestRootlessV2ChildPrepareCreateRemove ") {
		t.Errorf("child did not pass:\n%s", out)
	}
	// Only the daemon leaf the child moved itself into is left (empty
	// now; DelegateV2's cleanup removes it).
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() && e.Name() != "daemon" {
			t.Errorf("cgroup %s left in the delegated subtree", e.Name())
		}
	}
}

func TestRootlessV2ChildPrepareCreateRemove(t *testing.T) {
	usernstest.RequireChild(t)
	mnt, svc := os.Getenv(rlV2MountEnv), os.Getenv(rlV2SvcEnv)
	if mnt == "" {
		t.Skip("started by TestRootlessV2DelegatedSubtree")
	}
	if DetectMode() != ModeV2 {
		fakeUnifiedRoot(t, mnt)
	}
	parent, err := PrepareDelegatedV2("daemon")
	if err != nil || parent != svc {
		t.Fatalf("PrepareDelegatedV2 = %q, %v; want %q", parent, err, svc)
	}
	if own, _ := ownCgroup(mnt); own != svc+"/daemon" {
		t.Fatalf("own cgroup %q, want the leaf %s/daemon", own, svc)
	}
	// A restarted daemon finds its leaf.
	if again, err := PrepareDelegatedV2("daemon"); err != nil || again != svc {
		t.Fatalf("PrepareDelegatedV2 again = %q, %v", again, err)
	}

	def := parent + "/peapod"
	p, err := CreatePodCgroup("", def, newSandboxID())
	if err != nil {
		t.Fatalf("CreatePodCgroup in the delegated subtree: %v", err)
	}
	if !exists(filepath.Join(mnt, p.PausePath)) {
		t.Fatalf("pause cgroup %s not created", p.PausePath)
	}
	fd, err := p.PauseCgroupFD()
	if err != nil || fd < 0 {
		t.Fatalf("PauseCgroupFD: %d, %v", fd, err)
	}
	s := startSleeper(t, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd})
	unix.Close(fd)
	if lines := procCgroups(t, s.cmd.Process.Pid); !slices.Contains(lines, "0::"+p.PausePath) {
		t.Errorf("pause born in %v, want 0::%s", lines, p.PausePath)
	}
	st, err := ReadStats(p.PodPath)
	if err != nil || st.CPU == nil {
		t.Errorf("ReadStats: %+v, %v", st, err)
	}
	for c, why := range Unavailability(def) {
		if strings.Contains(why, "not writable") {
			t.Errorf("%s: %s, in a delegated subtree", c, why)
		}
	}
	if err := p.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	s.assertKilled(t)
	if exists(filepath.Join(mnt, p.PodPath)) {
		t.Errorf("pod cgroup left")
	}
	if err := RemoveParentIfEmpty(def); err != nil || exists(filepath.Join(mnt, def)) {
		t.Errorf("RemoveParentIfEmpty: %v", err)
	}

	// A writable subtree the daemon is not in cannot take its processes:
	// not usable, and Unavailability says why.
	other := os.Getenv(rlV2OtherEnv) + "/peapod"
	o, err := CreatePodCgroup("", other, newSandboxID())
	if err != nil || exists(filepath.Join(mnt, o.PodPath)) {
		t.Errorf("CreatePodCgroup where processes cannot be moved: made=%v, %v", exists(filepath.Join(mnt, o.PodPath)), err)
	}
	if why := Unavailability(other)["cpu"]; DetectMode() == ModeV2 && !strings.Contains(why, "cgroup.procs") {
		t.Errorf("Unavailability of a subtree the daemon is not in: %q", why)
	}
	if err := delegated(mnt, other); err == nil || !strings.Contains(err.Error(), "cgroup.procs") {
		t.Errorf("delegated(%s) = %v, want the common ancestor's cgroup.procs not writable", other, err)
	}

	// Outside the delegated subtree nothing is writable: no cgroup, no
	// error, nothing accounted, and Unavailability says why.
	q, err := CreatePodCgroup("", "/peapod-cgtest-nowhere-"+randHex(4), newSandboxID())
	if err != nil || exists(filepath.Join(mnt, q.PodPath)) {
		t.Fatalf("CreatePodCgroup outside the delegation: %v", err)
	}
	if st, err := ReadStats(q.PodPath); err != nil || st.CPU != nil {
		t.Errorf("ReadStats outside the delegation: %+v, %v", st, err)
	}
	if err := q.Remove(); err != nil {
		t.Errorf("Remove outside the delegation: %v", err)
	}
}

func TestCommonAncestor(t *testing.T) {
	for _, c := range [][3]string{
		{"/a/b/c", "/a/b/d", "/a/b"},
		{"/a/b", "/a/b/c", "/a/b"},
		{"/a/b/c", "/a/b", "/a/b"},
		{"/a", "/b", "/"},
		{"/", "/x", "/"},
		{"/ab", "/a/b", "/"},
		{"/a/b", "/a/b", "/a/b"},
	} {
		if got := commonAncestor(c[0], c[1]); got != c[2] {
			t.Errorf("commonAncestor(%s, %s) = %s, want %s", c[0], c[1], got, c[2])
		}
	}
}
