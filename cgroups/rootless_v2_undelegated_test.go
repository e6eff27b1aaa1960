package cgroups

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRootlessV2ChildUndelegatedPodRuns runs in the child of
// TestRootlessV2DelegatedSubtree (root of a user namespace on a real
// cgroup2 file system): a pod whose cgroup parent lies outside the
// delegated subtree gets no cgroup, and its pause still starts. On cgroup
// v2 the pause is born in its cgroup (clone3 with CLONE_INTO_CGROUP), so
// the daemon asks PauseCgroupFD first: without a pause cgroup it must say
// "none" (-1), not fail the pod, and AddPause must then do nothing.
func TestRootlessV2ChildUndelegatedPodRuns(t *testing.T) {
	rootlessV2Child(t)
	q, err := CreatePodCgroup("", "/peapod-cgtest-nowhere-"+randHex(4), newSandboxID())
	if err != nil {
		t.Fatalf("CreatePodCgroup outside the delegation: %v", err)
	}
	if exists(filepath.Join(unifiedMountpoint, q.PodPath)) {
		t.Fatalf("pod cgroup %s made outside the delegation", q.PodPath)
	}
	fd, err := q.PauseCgroupFD()
	if err != nil || fd != -1 {
		t.Fatalf("PauseCgroupFD without a pause cgroup = %d, %v; want -1, nil (the pod runs without a cgroup)", fd, err)
	}
	s := startSleeper(t, nil)
	if err := q.AddPause(s.cmd.Process.Pid); err != nil {
		t.Errorf("AddPause without a pause cgroup: %v", err)
	}
	un := Unavailability(filepath.Dir(q.PodPath))
	for _, c := range []string{"cpu", "memory", "pids"} {
		if un[c] == "" {
			t.Errorf("Unavailability gives no reason for %s outside the delegation: %v", c, un)
		}
	}
	if err := q.Remove(); err != nil {
		t.Errorf("Remove: %v", err)
	}
	// In the delegated subtree a missing pause cgroup is an error, not
	// a pod without a cgroup.
	q.PausePath = filepath.Join(os.Getenv(rlV2SvcEnv), "missing-"+randHex(4))
	q.PodPath = filepath.Dir(q.PausePath)
	if fd, err := q.PauseCgroupFD(); err == nil || fd != -1 {
		t.Errorf("PauseCgroupFD of a missing cgroup in the delegated subtree = %d, %v; want an error", fd, err)
	}
}

// rootlessV2Child skips unless started by TestRootlessV2DelegatedSubtree
// and points the v2 code at its cgroup2 mount.
func rootlessV2Child(t *testing.T) {
	t.Helper()
	mnt := os.Getenv(rlV2MountEnv)
	if mnt == "" || !inUserNS() {
		t.Skip("started by TestRootlessV2DelegatedSubtree")
	}
	if DetectMode() != ModeV2 {
		fakeUnifiedRoot(t, mnt)
	}
}
