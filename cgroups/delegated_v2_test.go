package cgroups

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPrepareDelegatedV2At readies a cgroup that holds processes (what a
// systemd scope with Delegate=yes is once it was given the rootless
// holder) on a real cgroup2 file system: /sys/fs/cgroup on a v2 host,
// the controller-less /sys/fs/cgroup/unified of this v1-hybrid one (there
// the moves are real, the controllers are checked in the VM).
func TestPrepareDelegatedV2At(t *testing.T) {
	requireRoot(t)
	mnt := "/sys/fs/cgroup"
	if DetectMode() != ModeV2 {
		mnt = "/sys/fs/cgroup/unified"
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			t.Skip("no cgroup2 mount")
		}
		fakeUnifiedRoot(t, mnt)
	}
	scope := "/peapod-cgtest-at-" + randHex(4)
	dir := filepath.Join(mnt, scope)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAllCgroups(t, []string{mnt}, scope) })
	enableControllers(mnt) // a scope has what its slice passes down
	var pids []int
	for range 3 {
		s := startSleeper(t, nil)
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(s.cmd.Process.Pid)), 0); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, s.cmd.Process.Pid)
	}
	if err := PrepareDelegatedV2At(scope, "supervisor"); err != nil {
		t.Fatalf("PrepareDelegatedV2At: %v", err)
	}
	for _, pid := range pids {
		if lines := procCgroups(t, pid); !slices.Contains(lines, "0::"+scope+"/supervisor") {
			t.Errorf("pid %d in %v, want %s/supervisor", pid, lines, scope)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs")); len(strings.TrimSpace(string(b))) != 0 {
		t.Errorf("processes left in %s: %s", dir, b)
	}
	avail, _ := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	on, _ := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	for _, c := range strings.Fields(string(avail)) {
		if c == "cpu" || c == "memory" || c == "pids" {
			if !slices.Contains(strings.Fields(string(on)), c) {
				t.Errorf("%s not enabled for children: subtree_control %q, controllers %q", c, on, avail)
			}
		}
	}
	// Again (a restarted parent): nothing to move, no error.
	if err := PrepareDelegatedV2At(scope, "supervisor"); err != nil {
		t.Errorf("PrepareDelegatedV2At again: %v", err)
	}
	// A pod cgroup beneath can hold a process now.
	pod := filepath.Join(dir, "pods", "p1")
	if err := os.MkdirAll(pod, 0o755); err != nil {
		t.Fatal(err)
	}
	s := startSleeper(t, nil)
	if err := os.WriteFile(filepath.Join(pod, "cgroup.procs"), []byte(strconv.Itoa(s.cmd.Process.Pid)), 0); err != nil {
		t.Errorf("a process into %s: %v", pod, err)
	}

	for _, c := range []struct{ path, leaf string }{
		{scope, ""}, {scope, "a/b"}, {scope, ".."}, {"/", "supervisor"}, {"relative", "supervisor"},
		{scope + "-missing", "supervisor"},
	} {
		if err := PrepareDelegatedV2At(c.path, c.leaf); err == nil {
			t.Errorf("PrepareDelegatedV2At(%q, %q): no error", c.path, c.leaf)
		}
	}
	if exists(filepath.Join(mnt, scope+"-missing")) {
		t.Error("a missing cgroup was created")
	}
}
