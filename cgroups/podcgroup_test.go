package cgroups

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"peapod/internal/procfs"
)

// These tests run on the host's real cgroup layout: v1 hybrid on the
// development machine (every v1 controller, name=systemd and the cgroup2
// mount at /sys/fs/cgroup/unified), v2 in the test VM.

func TestCreateAddPauseRemoveInEveryHierarchy(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	id := newSandboxID()

	p, err := CreatePodCgroup("", parent, id)
	if err != nil {
		t.Fatal(err)
	}
	want := PodCgroup{Mode: DetectMode(), PodPath: parent + "/" + id, CreatedPod: true, PausePath: parent + "/" + id + "/" + id}
	if p != want {
		t.Fatalf("CreatePodCgroup = %+v, want %+v", p, want)
	}
	assertDirs(t, mnts, p.PodPath, true)
	assertDirs(t, mnts, p.PausePath, true)
	if !p.Exists() {
		t.Error("Exists() = false after create")
	}

	// The record goes through the sandbox store as JSON.
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var loaded PodCgroup
	if err := json.Unmarshal(b, &loaded); err != nil || loaded != p {
		t.Fatalf("JSON round trip: %s -> %+v (%v)", b, loaded, err)
	}

	s := startSleeper(t, nil)
	if err := loaded.AddPause(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	for _, line := range procCgroups(t, s.cmd.Process.Pid) {
		if !strings.HasSuffix(line, ":"+p.PausePath) {
			t.Errorf("pause not in its cgroup in every hierarchy: /proc/pid/cgroup has %q", line)
		}
	}

	start := time.Now()
	if err := loaded.Remove(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Remove with one live process took %v", time.Since(start))
	s.assertKilled(t)
	assertDirs(t, mnts, p.PausePath, false)
	assertDirs(t, mnts, p.PodPath, false)
	assertDirs(t, mnts, parent, true) // shared by all default pods: kept
	if p.Exists() {
		t.Error("Exists() = true after Remove")
	}
}

// TestPlanMakesNothingAndRemoveTakesAPlanNeverMade: RunPodSandbox records
// the plan before it makes the cgroup; a daemon that dies in between
// removes what the record names at start.
func TestPlanMakesNothingAndRemoveTakesAPlanNeverMade(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	id := newSandboxID()
	p, err := PlanPodCgroup("", parent, id)
	if err != nil {
		t.Fatal(err)
	}
	want := PodCgroup{Mode: DetectMode(), PodPath: parent + "/" + id, CreatedPod: true, PausePath: parent + "/" + id + "/" + id}
	if p != want {
		t.Fatalf("PlanPodCgroup = %+v, want %+v", p, want)
	}
	assertDirs(t, mnts, p.PodPath, false)
	if err := p.Remove(); err != nil {
		t.Fatalf("Remove of a plan never made: %v", err)
	}
	if err := MakePodCgroup(p, parent); err != nil {
		t.Fatal(err)
	}
	assertDirs(t, mnts, p.PausePath, true)
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	assertDirs(t, mnts, p.PodPath, false)
	assertDirs(t, mnts, parent, true)

	// A kubelet's pod cgroup that exists is not peapod's to remove.
	podPath := parent + "/burstable/pod" + randHex(8)
	mkdirEverywhere(t, mnts, podPath)
	kp, err := PlanPodCgroup(podPath, parent, id)
	if err != nil || kp.CreatedPod {
		t.Fatalf("plan under an existing kubelet pod cgroup: %+v, %v", kp, err)
	}
	if _, err := PlanPodCgroup("relative/path", parent, id); !errors.Is(err, ErrInvalidParent) {
		t.Errorf("plan with a relative parent: %v, want ErrInvalidParent", err)
	}
}

func TestRemoveTwiceIsNoop(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	p := newTestPodCgroup(t, mnts)
	for i := range 3 {
		if err := p.Remove(); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	assertDirs(t, mnts, p.PodPath, false)
	if err := (PodCgroup{}).Remove(); err != nil {
		t.Errorf("Remove of the zero PodCgroup: %v", err)
	}
}

func TestKubeletPodCgroupIsKeptOnRemove(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	root := testDefaultParent(t, mnts) // stands in for the kubelet's /kubepods
	podPath := root + "/burstable/pod" + randHex(8)
	mkdirEverywhere(t, mnts, podPath)
	id := newSandboxID()

	p, err := CreatePodCgroup(podPath, "/peapod-unused-"+randHex(4), id)
	if err != nil {
		t.Fatal(err)
	}
	if p.PodPath != podPath || p.PausePath != podPath+"/"+id || p.CreatedPod {
		t.Fatalf("CreatePodCgroup = %+v, want the kubelet's pod cgroup, not created by peapod", p)
	}
	s := startSleeper(t, nil)
	if err := p.AddPause(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	s.assertKilled(t)
	assertDirs(t, mnts, p.PausePath, false)
	assertDirs(t, mnts, podPath, true)
	if !p.Exists() {
		t.Error("Exists() = false while the kubelet's pod cgroup is there")
	}

	// The kubelet removes its pod cgroup: stats must see NotFound.
	removeAllCgroups(t, mnts, podPath)
	if p.Exists() {
		t.Error("Exists() = true after the kubelet removed the pod cgroup")
	}
}

func TestMissingParentIsCreatedAndRemovedButNotItsAncestors(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	root := testDefaultParent(t, mnts)
	podPath := root + "/made/up/pod"
	p, err := CreatePodCgroup(podPath, "/peapod-unused-"+randHex(4), newSandboxID())
	if err != nil {
		t.Fatal(err)
	}
	if !p.CreatedPod {
		t.Fatal("CreatedPod = false for a cgroup_parent that did not exist")
	}
	assertDirs(t, mnts, p.PausePath, true)
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	assertDirs(t, mnts, podPath, false)
	assertDirs(t, mnts, root+"/made/up", true)
}

func TestPodCgroupWithContainerChildrenIsLeftUntilEmpty(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	p := newTestPodCgroup(t, mnts)
	ctr := p.PodPath + "/" + newSandboxID() // a container's cgroup, owned elsewhere
	mkdirEverywhere(t, mnts, ctr)
	if err := p.Remove(); err != nil {
		t.Fatalf("Remove with a container cgroup still present: %v", err)
	}
	assertDirs(t, mnts, p.PausePath, false)
	assertDirs(t, mnts, ctr, true)
	removeAllCgroups(t, mnts, ctr)
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	assertDirs(t, mnts, p.PodPath, false)
}

func TestInvalidParentIsRejectedAndNothingCreated(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	for _, bad := range []string{
		"../x", "relative", "/a/../../b", "/a/..", "/a/", "/a//b", "/a/./b", "/a\x00b",
		"kubepods-besteffort-pod1234.slice",
	} {
		p, err := CreatePodCgroup(bad, parent, newSandboxID())
		if !errors.Is(err, ErrInvalidParent) {
			t.Errorf("CreatePodCgroup(%q) = %+v, %v; want ErrInvalidParent", bad, p, err)
			continue
		}
		t.Logf("%q: %v", bad, err)
	}
	assertDirs(t, mnts, parent, false)
	for _, mnt := range mnts {
		for _, top := range []string{"a", "b", "x", "relative"} {
			if exists(filepath.Join(mnt, top)) {
				t.Errorf("%s appeared", filepath.Join(mnt, top))
			}
		}
	}
}

func TestBadSandboxIDOrDefaultParentIsAnError(t *testing.T) {
	for _, c := range []struct{ parent, def, id string }{
		{"", "/peapod", ""},
		{"", "/peapod", "a/b"},
		{"", "/peapod", ".."},
		{"", "relative", newSandboxID()},
		{"", "/", newSandboxID()},
	} {
		if _, err := CreatePodCgroup(c.parent, c.def, c.id); err == nil || errors.Is(err, ErrInvalidParent) {
			t.Errorf("CreatePodCgroup(%q, %q, %q) = %v; want a plain error", c.parent, c.def, c.id, err)
		}
	}
}

func TestRootParentMeansDefaultParent(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	id := newSandboxID()
	p, err := CreatePodCgroup("/", parent, id)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Remove()
	if p.PodPath != parent+"/"+id || !p.CreatedPod {
		t.Fatalf("CreatePodCgroup(\"/\") = %+v, want the default parent", p)
	}
}

func TestDamagedRecordNeverTouchesOtherCgroups(t *testing.T) {
	// Point the v2 code at an empty directory: should a guard ever regress,
	// this test must not SIGKILL the host's root cgroup.
	fakeUnifiedRoot(t, t.TempDir())
	for _, p := range []PodCgroup{
		{Mode: ModeV2, PodPath: "/", PausePath: "/"},
		{Mode: ModeV2, PodPath: "/", PausePath: "/x"},
		{Mode: ModeV2, PodPath: "/x", PausePath: "/y/z"},
		{Mode: ModeV2, PodPath: "/x/../..", PausePath: "/x/../../z"},
		{Mode: ModeV2, PodPath: "x", PausePath: "x/y"},
		{Mode: "v3", PodPath: "/x", PausePath: "/x/y"},
	} {
		if err := p.Remove(); err == nil {
			t.Errorf("Remove(%+v) succeeded", p)
		}
		if err := p.AddPause(os.Getpid()); err == nil {
			t.Errorf("AddPause(%+v) succeeded", p)
		}
		if p.Exists() {
			t.Errorf("Exists(%+v) = true", p)
		}
	}
	if err := killCgroup(ModeV2, map[string]string{"": unifiedMountpoint}, "/", time.Second); err == nil {
		t.Error("killCgroup accepted the root cgroup")
	}
}

func TestSweepOrphansRemovesOnlyUnknownSandboxes(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	ids := []string{newSandboxID(), newSandboxID(), newSandboxID()}
	slices.Sort(ids)
	known, orphanA, orphanB := ids[1], ids[0], ids[2]
	pods := map[string]PodCgroup{}
	for _, id := range ids {
		p, err := CreatePodCgroup("", parent, id)
		if err != nil {
			t.Fatal(err)
		}
		pods[id] = p
	}
	s := startSleeper(t, nil)
	if err := pods[orphanB].AddPause(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	ctr := pods[orphanA].PodPath + "/" + newSandboxID() // a container left behind
	mkdirEverywhere(t, mnts, ctr)
	mkdirEverywhere(t, mnts, parent+"/not-a-sandbox")

	start := time.Now()
	removed, err := SweepOrphans(parent, func(id string) bool { return id == known })
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("SweepOrphans took %v", time.Since(start))
	want := []string{parent + "/" + orphanA, parent + "/" + orphanB}
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	s.assertKilled(t)
	assertDirs(t, mnts, pods[orphanA].PodPath, false)
	assertDirs(t, mnts, pods[orphanB].PodPath, false)
	assertDirs(t, mnts, pods[known].PausePath, true)
	assertDirs(t, mnts, parent+"/not-a-sandbox", true)

	removed, err = SweepOrphans(parent, func(string) bool { return true })
	if err != nil || len(removed) != 0 {
		t.Errorf("second sweep: %v, %v; want nothing", removed, err)
	}
	if removed, err := SweepOrphans("/peapod-cgtest-absent-"+randHex(4), func(string) bool { return false }); err != nil || len(removed) != 0 {
		t.Errorf("sweep of a missing parent: %v, %v", removed, err)
	}
}

func TestCheckFindsNothingWrongOnThisHost(t *testing.T) {
	requireRoot(t)
	if lines := Check(); len(lines) != 0 {
		t.Errorf("Check() = %q", lines)
	}
}

// A container whose shim is gone is killed and its cgroup removed by
// KillContainer; the pause and the pod's other containers are untouched.
func TestKillContainerTakesOnlyThatContainer(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	p := newTestPodCgroup(t, mnts)
	pause := startSleeper(t, nil)
	if err := p.AddPause(pause.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	victimID, otherID := newSandboxID(), newSandboxID()
	victim, other := p.ContainerPath(victimID), p.ContainerPath(otherID)
	mkdirEverywhere(t, mnts, victim)
	mkdirEverywhere(t, mnts, other)
	s := startSleeper(t, nil)
	for _, mnt := range mnts {
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} { // v1 cpuset: empty until set
			if b, err := os.ReadFile(filepath.Join(mnt, p.PodPath, f)); err == nil {
				if err := os.WriteFile(filepath.Join(mnt, victim, f), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(mnt, victim, "cgroup.procs"), []byte(strconv.Itoa(s.cmd.Process.Pid)), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if err := p.KillContainer(victimID); err != nil {
		t.Fatal(err)
	}
	s.assertKilled(t)
	assertDirs(t, mnts, victim, false)
	assertDirs(t, mnts, other, true)
	if !procfs.Running(pause.cmd.Process.Pid) {
		t.Error("the pause died with the container")
	}
	if err := p.KillContainer(victimID); err != nil {
		t.Errorf("KillContainer of a gone cgroup: %v", err)
	}
	for _, bad := range []string{"", "..", "a/b"} {
		if err := p.KillContainer(bad); err == nil {
			t.Errorf("KillContainer(%q) succeeded", bad)
		}
	}
	assertDirs(t, mnts, p.PodPath, true)
	removeAllCgroups(t, mnts, other)
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
}
