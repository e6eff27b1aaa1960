package cgroups

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The development host is v1 hybrid and cannot boot a v2 layout; the full
// v2 suite runs in the test VM (there the tests in podcgroup_test.go take
// the v2 path by themselves). Here the v2 code runs in two ways:
//
//   - against the hybrid layout's own cgroup2 mount, /sys/fs/cgroup/unified:
//     a real cgroup2 filesystem, only without controllers (they are bound to
//     the v1 hierarchies). mkdir, cgroup.procs, CLONE_INTO_CGROUP,
//     cgroup.kill, cgroup.max.depth and rmdir are the real kernel's.
//   - against a fake tree of plain files, for the one thing the controller-
//     less mount cannot show: delegating controllers through
//     cgroup.subtree_control.

// fakeUnifiedRoot makes this package treat root as the cgroup2 root of a
// v2 host for the rest of the test.
func fakeUnifiedRoot(t *testing.T, root string) {
	oldRoot, oldMode := unifiedMountpoint, hostMode
	unifiedMountpoint, hostMode = root, func() Mode { return ModeV2 }
	t.Cleanup(func() { unifiedMountpoint, hostMode = oldRoot, oldMode })
}

// useHybridCgroup2AsV2 points the v2 code at /sys/fs/cgroup/unified.
func useHybridCgroup2AsV2(t *testing.T) []string {
	t.Helper()
	requireRoot(t)
	if DetectMode() == ModeV2 {
		t.Skip("real v2 host: podcgroup_test.go covers v2")
	}
	const hybrid = "/sys/fs/cgroup/unified"
	var st unix.Statfs_t
	if err := unix.Statfs(hybrid, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Skip("no hybrid cgroup2 mount at " + hybrid)
	}
	fakeUnifiedRoot(t, hybrid)
	return []string{hybrid}
}

func TestV2CreateCloneIntoCgroupRemove(t *testing.T) {
	mnts := useHybridCgroup2AsV2(t)
	parent := testDefaultParent(t, mnts)
	id := newSandboxID()
	p, err := CreatePodCgroup("", parent, id)
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeV2 || p.PausePath != parent+"/"+id+"/"+id || !p.CreatedPod {
		t.Fatalf("CreatePodCgroup = %+v", p)
	}
	assertDirs(t, mnts, p.PausePath, true)

	fd, err := p.PauseCgroupFD()
	if err != nil || fd < 0 {
		t.Fatalf("PauseCgroupFD = %d, %v", fd, err)
	}
	s := startSleeper(t, &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd})
	unix.Close(fd)
	if lines := procCgroups(t, s.cmd.Process.Pid); !containsLine(lines, "0::"+p.PausePath) {
		t.Fatalf("process started with the pause cgroup fd is in %q, want 0::%s", lines, p.PausePath)
	}

	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	s.assertKilled(t)
	assertDirs(t, mnts, p.PodPath, false)
	if err := p.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func TestV2AddPauseMovesProcess(t *testing.T) {
	mnts := useHybridCgroup2AsV2(t)
	p := newTestPodCgroup(t, mnts)
	s := startSleeper(t, nil)
	if err := p.AddPause(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if lines := procCgroups(t, s.cmd.Process.Pid); !containsLine(lines, "0::"+p.PausePath) {
		t.Fatalf("after AddPause the process is in %q", lines)
	}
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	s.assertKilled(t)
}

func TestV2CreateRollsBackWhenKernelRefuses(t *testing.T) {
	mnts := useHybridCgroup2AsV2(t)
	top := testDefaultParent(t, mnts)
	mkdirEverywhere(t, mnts, top)
	// Two levels below top are allowed: the kubelet-style parent
	// top/a/b fits, the pause cgroup beneath it does not (EAGAIN).
	if err := os.WriteFile(filepath.Join(mnts[0], top, "cgroup.max.depth"), []byte("2"), 0); err != nil {
		t.Fatal(err)
	}
	p, err := CreatePodCgroup(top+"/a/b", "/peapod-unused", newSandboxID())
	if err == nil {
		t.Fatalf("CreatePodCgroup = %+v beyond cgroup.max.depth", p)
	}
	t.Logf("refused as expected: %v", err)
	assertDirs(t, mnts, top+"/a", false)
	assertDirs(t, mnts, top, true)

	// Under the default parent, the parent itself is shared and stays.
	p, err = CreatePodCgroup("", top+"/a", newSandboxID())
	if err == nil {
		t.Fatalf("CreatePodCgroup = %+v beyond cgroup.max.depth", p)
	}
	assertDirs(t, mnts, top+"/a", true)
	entries, _ := os.ReadDir(filepath.Join(mnts[0], top, "a"))
	for _, e := range entries {
		if e.IsDir() {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func TestV2SweepOrphans(t *testing.T) {
	mnts := useHybridCgroup2AsV2(t)
	parent := testDefaultParent(t, mnts)
	orphan, err := CreatePodCgroup("", parent, newSandboxID())
	if err != nil {
		t.Fatal(err)
	}
	s := startSleeper(t, nil)
	if err := orphan.AddPause(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	removed, err := SweepOrphans(parent, func(string) bool { return false })
	if err != nil || len(removed) != 1 || removed[0] != orphan.PodPath {
		t.Fatalf("SweepOrphans = %v, %v", removed, err)
	}
	s.assertKilled(t)
	assertDirs(t, mnts, orphan.PodPath, false)
}

// fakeCgroup2 builds a plain-file imitation of a cgroup2 tree: directories
// with a cgroup.controllers file listing ctrls. The kernel fills that file
// from the parent's subtree_control; a plain file cannot, so the test lays
// out the whole path in advance. cgroups.TestMode lets the library write
// to files outside cgroupfs.
func fakeCgroup2(t *testing.T, ctrls string, cgPaths ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range append([]string{"/"}, cgPaths...) {
		dir := filepath.Join(root, p)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte(ctrls+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setLibraryTestMode(t)
	fakeUnifiedRoot(t, root)
	return root
}

func TestV2DelegatesControllersDownToThePod(t *testing.T) {
	id := newSandboxID()
	root := fakeCgroup2(t, "cpuset cpu io memory pids", "/peapod", "/peapod/"+id)
	// The root already passes cpu down (systemd does that): only the rest
	// is added.
	if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("cpu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := CreatePodCgroup("", "/peapod", id)
	if err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]string{
		"/":         "+cpuset +io +memory +pids",
		"/peapod":   "+cpuset +cpu +io +memory +pids",
		p.PodPath:   "+cpuset +cpu +io +memory +pids",
		p.PausePath: "", // a leaf: nothing to pass down
	} {
		b, _ := os.ReadFile(filepath.Join(root, dir, "cgroup.subtree_control"))
		if got := strings.TrimSpace(string(b)); got != want {
			t.Errorf("%s/cgroup.subtree_control = %q, want %q", dir, got, want)
		}
	}
	if err := p.AddPause(4242); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(root, p.PausePath, "cgroup.procs"))
	if string(b) != "4242" {
		t.Errorf("pause cgroup.procs = %q, want 4242", b)
	}
	fd, err := p.PauseCgroupFD()
	if err != nil || fd < 0 {
		t.Fatalf("PauseCgroupFD = %d, %v", fd, err)
	}
	unix.Close(fd)
	if !p.Exists() {
		t.Error("Exists() = false")
	}
}

func TestV2CheckReportsMissingControllers(t *testing.T) {
	root := fakeCgroup2(t, "cpu memory")
	lines := checkV2(root)
	var missing []string
	for _, l := range lines {
		for _, c := range []string{"cpuset", "pids"} {
			if strings.Contains(l, strconv.Quote(c)) {
				missing = append(missing, c)
			}
		}
	}
	if len(missing) != 2 || len(lines) != 2 {
		t.Errorf("checkV2 = %q, want cpuset and pids reported", lines)
	}
	if lines := checkV2(filepath.Join(root, "absent")); len(lines) != 1 {
		t.Errorf("checkV2 without cgroup2 = %q, want one line", lines)
	}
}

func TestPauseCgroupFDIsMinusOneOnV1(t *testing.T) {
	fd, err := PodCgroup{Mode: ModeV1, PodPath: "/x", PausePath: "/x/y"}.PauseCgroupFD()
	if fd != -1 || err != nil {
		t.Errorf("PauseCgroupFD on v1 = %d, %v; want -1, nil", fd, err)
	}
}

func containsLine(lines []string, want string) bool {
	for _, l := range lines {
		if l == want {
			return true
		}
	}
	return false
}
