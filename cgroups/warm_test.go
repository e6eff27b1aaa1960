package cgroups

import (
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestWarmTargetFrom(t *testing.T) {
	v1roots := map[string]string{
		"cpu": "/sys/fs/cgroup/cpu", "cpuacct": "/sys/fs/cgroup/cpuacct",
		"pids": "/sys/fs/cgroup/pids", "name=systemd": "/sys/fs/cgroup/systemd",
		"": "/sys/fs/cgroup/unified",
	}
	cases := []struct {
		name  string
		mode  Mode
		roots map[string]string
		self  string
		want  string
	}{
		{"v1 hybrid: the first controller hierarchy", ModeV1, v1roots,
			"12:name=systemd:/system.slice/peapod.service\n11:pids:/system.slice/peapod.service\n2:cpu,cpuacct:/\n0::/system.slice/peapod.service\n",
			"/sys/fs/cgroup/pids/system.slice/peapod.service/cgroup.procs"},
		{"v1 co-mounted controllers", ModeV1, v1roots,
			"1:name=systemd:/a\n4:cpu,cpuacct:/b\n",
			"/sys/fs/cgroup/cpu/b/cgroup.procs"},
		{"v1 with only named hierarchies", ModeV1, v1roots,
			"1:name=systemd:/a\n0::/a\n", ""},
		{"v2", ModeV2, map[string]string{"": "/sys/fs/cgroup"},
			"0::/user.slice/peapod\n", "/sys/fs/cgroup/user.slice/peapod/cgroup.procs"},
		{"v2 in a cgroup namespace's root", ModeV2, map[string]string{"": "/sys/fs/cgroup"},
			"0::/\n", "/sys/fs/cgroup/cgroup.procs"},
		{"unreadable lines", ModeV2, map[string]string{"": "/sys/fs/cgroup"},
			"garbage\n0::relative\n", ""},
	}
	for _, c := range cases {
		if got := warmTargetFrom(c.mode, c.roots, c.self); got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

// The warming write is a real move of this process into the cgroup it is
// already in: it succeeds, this process is listed there, and none of its
// cgroups changes.
func TestWarmAttachMovesNothing(t *testing.T) {
	requireRoot(t)
	target := warmTarget()
	if target == "" {
		t.Fatal("no cgroup.procs of our own cgroup found")
	}
	before, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	if err := warmOnce(target); err != nil {
		t.Fatalf("write our pid to %s: %v", target, err)
	}
	after, _ := os.ReadFile("/proc/self/cgroup")
	if string(before) != string(after) {
		t.Fatalf("our cgroups changed:\n%s\nbecame\n%s", before, after)
	}
	procs, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(procs)), strconv.Itoa(os.Getpid())) {
		t.Fatalf("%s does not list this process (%d)", target, os.Getpid())
	}

	// The background form: one write at a time, and it finishes.
	WarmAttachLock()
	WarmAttachLock()
	deadline := time.Now().Add(5 * time.Second)
	for warmBusy.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the warming write did not finish in 5s")
		}
		time.Sleep(time.Millisecond)
	}
	if warmOff.Load() {
		t.Fatal("warming gave up as root")
	}
	after, _ = os.ReadFile("/proc/self/cgroup")
	if string(before) != string(after) {
		t.Fatalf("our cgroups changed:\n%s\nbecame\n%s", before, after)
	}
}
