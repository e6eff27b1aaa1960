package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

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
