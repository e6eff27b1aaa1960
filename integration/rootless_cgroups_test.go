package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The rootless instances of these tests differ in what the host delegated
// to the user: the default parent lies in the subtree that
// integration/rootless-delegate.sh delegated (every v1 hierarchy), or
// outside of it (nothing delegated).

// unavailableCgroups reads verbose Status: the unavailable controllers and
// why.
func (d *daemon) unavailableCgroups(t testing.TB) map[string]string {
	t.Helper()
	resp, err := d.RT.Status(ctxT(t), &runtime.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var cfg struct {
		List    []string          `json:"cgroupControllersUnavailable"`
		Reasons map[string]string `json:"cgroupControllersUnavailableReasons"`
	}
	if err := json.Unmarshal([]byte(resp.Info["config"]), &cfg); err != nil {
		t.Fatalf("Status verbose info: %v: %v", err, resp.Info)
	}
	if len(cfg.List) != len(cfg.Reasons) {
		t.Errorf("unavailable controllers %v and reasons %v disagree", cfg.List, cfg.Reasons)
	}
	return cfg.Reasons
}

// cgroupV1 skips on a cgroup v2 host: these instances use a v1 subtree.
func cgroupV1(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		t.Skip("cgroup v2 host: the delegated subtree here is a v1 one")
	}
}

// TestRootlessDelegatedCgroupsAreAvailable: with the v1 subtree delegated
// in every hierarchy, Status reports no accounting controller as
// unavailable.
func TestRootlessDelegatedCgroupsAreAvailable(t *testing.T) {
	cgroupV1(t)
	d := startDaemon(t, withRootless())
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids", "cpuset", "freezer", "devices"} {
		if why, ok := d.unavailableCgroups(t)[c]; ok {
			t.Errorf("%s unavailable in a delegated subtree: %s", c, why)
		}
	}
}

// TestRootlessWithoutCgroupDelegation runs a rootless instance whose
// default cgroup parent is outside anything delegated: Status says each
// controller is not delegated and why, pods and containers (even with a
// memory limit) run without cgroups, stats leave CPU and memory out
// rather than report zeros, and nothing is left behind.
func TestRootlessWithoutCgroupDelegation(t *testing.T) {
	cgroupV1(t)
	reg := startRegistry(t)
	reg.push(t, "busybox:1", busyboxImage(t, nil))
	parent := "/peapod-nodeleg-" + randHex(4)
	d := startDaemon(t, withRootlessRegistry(reg), withRootless(), withArgs("--cgroup-parent", parent))
	img := runtime.NewImageServiceClient(d.conn)
	if _, err := img.PullImage(ctxT(t), &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "example.test/busybox:1"}}); err != nil {
		t.Fatalf("pull: %v", err)
	}
	reasons := d.unavailableCgroups(t)
	for _, c := range []string{"cpu", "cpuacct", "memory", "pids"} {
		if !strings.Contains(reasons[c], "not delegated to this user") || !strings.Contains(reasons[c], "not writable") {
			t.Errorf("Status for %s: %q, want not delegated and why", c, reasons[c])
		}
	}

	before := d.snapshot(t)
	cfg := podConfig("nodeleg")
	pod := d.runPod(t, cfg)
	c := busyboxContainer("limited", "sh", "-c", "echo up; sleep 3600")
	c.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: 64 << 20, CpuShares: 512}
	id := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, id)
	resp, err := d.RT.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", "echo in"}, Timeout: 10})
	if err != nil || strings.TrimSpace(string(resp.Stdout)) != "in" {
		t.Fatalf("ExecSync: %v %v", resp, err)
	}

	cs, err := d.RT.ContainerStats(ctxT(t), &runtime.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStats without cgroups: %v", err)
	}
	if cs.Stats.GetCpu() != nil || cs.Stats.GetMemory() != nil {
		t.Errorf("container stats without cgroups report cpu %v, memory %v: want them absent", cs.Stats.GetCpu(), cs.Stats.GetMemory())
	}
	ps, err := d.RT.PodSandboxStats(ctxT(t), &runtime.PodSandboxStatsRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatalf("PodSandboxStats without cgroups: %v", err)
	}
	if l := ps.GetStats().GetLinux(); l.GetCpu() != nil || l.GetMemory() != nil || l.GetNetwork() == nil {
		t.Errorf("pod stats without cgroups: cpu %v, memory %v, network %v: want cpu and memory absent, network there", l.GetCpu(), l.GetMemory(), l.GetNetwork())
	}
	// No cgroup was made for it anywhere.
	mnts, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, m := range mnts {
		if _, err := os.Stat(filepath.Join(m, parent)); err == nil {
			t.Errorf("%s created without delegation", filepath.Join(m, parent))
		}
	}

	if _, err := d.RT.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: id, Timeout: 2}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	st := d.waitExited(t, id, 10*time.Second)
	if st.ExitCode != 143 && st.ExitCode != 137 {
		t.Errorf("stopped container exit %d", st.ExitCode)
	}

	// Its shim killed: with no cgroup to kill it through, the container's
	// init is found by the pid and start time libcontainer recorded.
	orphan := d.createContainer(t, pod, cfg, busyboxContainer("orphan", "sleep", "3601"))
	d.startContainer(t, orphan)
	_, v := d.status(t, pod)
	killShim(t, v.RuntimeDir)
	if st := d.waitExited(t, orphan, 10*time.Second); st.ExitCode != 137 {
		t.Errorf("container of a killed shim: exit %d, want 137", st.ExitCode)
	}
	if pids := processesWithArgs("sleep", "3601"); len(pids) > 0 {
		t.Errorf("the init of a killed shim's container still runs: %v", pids)
	}

	assertNothingRunsAsRoot(t, d)
	d.stopRemove(t, pod)
	assertNoLeaks(t, before, d.snapshot(t))
}

// TestRootlessOOMKillIsReported: with the memory hierarchy delegated, a
// rootless container's memory limit holds and its OOM kill is reported
// as such.
func TestRootlessOOMKillIsReported(t *testing.T) {
	cgroupV1(t)
	d, _ := rootlessContainerDaemon(t)
	cfg := podConfig("rloom")
	pod := d.runPod(t, cfg)
	c := busyboxContainer("hog", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
	c.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}
	id := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, id)
	st := d.waitExited(t, id, 20*time.Second)
	if st.ExitCode != 137 || st.Reason != "OOMKilled" {
		t.Errorf("exit %d reason %q, want 137 OOMKilled", st.ExitCode, st.Reason)
	}
	d.stopRemove(t, pod)
}
