package cgroups

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestStartPauseIsBornInEveryHierarchy: the process StartPause's callback
// starts is in the pause cgroup of every hierarchy from its first
// instruction, without AddPause, and the calling process stays where it
// was.
func TestStartPauseIsBornInEveryHierarchy(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	p, err := CreatePodCgroup("", parent, newSandboxID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Remove() })
	self, _ := os.ReadFile("/proc/self/cgroup")

	var s *sleeper
	bornIn, err := p.StartPause(func(cgfd int) error {
		var attr *syscall.SysProcAttr
		if cgfd >= 0 {
			attr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
		}
		s = startSleeper(t, attr)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bornIn {
		t.Fatalf("StartPause as root with cgroupfs on %s: not born in its cgroup", p.Mode)
	}
	lines := procCgroups(t, s.cmd.Process.Pid)
	for _, line := range lines {
		if !strings.HasSuffix(line, ":"+p.PausePath) {
			t.Errorf("pause not born in its cgroup in every hierarchy: /proc/pid/cgroup has %q", line)
		}
	}
	if after, _ := os.ReadFile("/proc/self/cgroup"); string(after) != string(self) {
		t.Errorf("the caller moved:\nbefore %s\nafter %s", self, after)
	}
	// No thread of this process stays in the pause cgroup.
	for _, root := range mnts {
		b, err := os.ReadFile(root + p.PausePath + "/tasks")
		if os.IsNotExist(err) {
			continue // cgroup2 has no tasks file
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, tid := range strings.Fields(string(b)) {
			if _, err := os.Stat("/proc/self/task/" + tid); err == nil {
				t.Errorf("thread %s of this process is still in %s", tid, root+p.PausePath)
			}
		}
	}
	// No thread of ours is left in the pod's cgroups: they can go.
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	s.assertKilled(t)

	// A callback error is passed on.
	p2, err := CreatePodCgroup("", parent, newSandboxID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p2.Remove() })
	if _, err := p2.StartPause(func(int) error { return exec.ErrNotFound }); err != exec.ErrNotFound {
		t.Errorf("StartPause = %v, want the callback's error", err)
	}
}
