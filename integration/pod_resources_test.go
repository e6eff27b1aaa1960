package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"

	libcg "github.com/opencontainers/cgroups"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdatePodSandboxResources against the real daemon: the pod cgroup's
// files change live, the limits survive a kill -9 restart of the daemon
// (cgroup files and the recorded request), and bad requests are refused
// with InvalidArgument / NotFound / FailedPrecondition and change nothing.

func cgroupV2Host() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// podLimitFiles are the files of the pod cgroup the test sets, per layout.
func podLimitFiles() map[string][2]string { // name -> {controller, file}
	if cgroupV2Host() {
		return map[string][2]string{
			"cpu": {"cpu", "cpu.weight"}, "cpumax": {"cpu", "cpu.max"}, "cpuset": {"cpuset", "cpuset.cpus"},
			"mem": {"memory", "memory.max"}, "swap": {"memory", "memory.swap.max"}, "pids": {"pids", "pids.max"},
		}
	}
	return map[string][2]string{
		"cpu": {"cpu", "cpu.shares"}, "quota": {"cpu", "cpu.cfs_quota_us"}, "period": {"cpu", "cpu.cfs_period_us"},
		"cpuset": {"cpuset", "cpuset.cpus"}, "mem": {"memory", "memory.limit_in_bytes"},
		"swap": {"memory", "memory.memsw.limit_in_bytes"}, "pids": {"pids", "pids.max"},
	}
}

// readPodLimits reads those files; a file the host lacks (memsw without
// swap accounting) reads as "absent".
func readPodLimits(t *testing.T, podPath string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for name, cf := range podLimitFiles() {
		b, err := os.ReadFile(cgroupFile(cf[0], podPath, cf[1]))
		switch {
		case os.IsNotExist(err):
			out[name] = "absent"
		case err != nil:
			t.Fatalf("read %s: %v", cf[1], err)
		default:
			out[name] = strings.TrimSpace(string(b))
		}
	}
	return out
}

type podResourcesInfo struct {
	Cgroup *struct {
		PodPath   string `json:"podPath"`
		PausePath string `json:"pausePath"`
	} `json:"cgroup"`
	Resources *struct {
		Overhead  json.RawMessage `json:"overhead"`
		Resources json.RawMessage `json:"resources"`
		Applied   *struct {
			CPU *struct {
				Shares *uint64 `json:"shares"`
				Quota  *int64  `json:"quota"`
				Period *uint64 `json:"period"`
				Cpus   string  `json:"cpus"`
			} `json:"cpu"`
			Memory *struct {
				Limit *int64 `json:"limit"`
			} `json:"memory"`
			Unified map[string]string `json:"unified"`
		} `json:"applied"`
	} `json:"resources"`
}

func podResources(t *testing.T, d *daemon, id string) podResourcesInfo {
	t.Helper()
	resp, err := d.RT.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	var info podResourcesInfo
	if err := json.Unmarshal([]byte(resp.Info["info"]), &info); err != nil {
		t.Fatalf("verbose info: %v", err)
	}
	if info.Cgroup == nil || info.Cgroup.PodPath == "" {
		t.Fatalf("no pod cgroup in verbose info: %s", resp.Info["info"])
	}
	return info
}

func TestUpdatePodSandboxResources(t *testing.T) {
	d := startDaemon(t)
	id := d.runPod(t, podConfig("podres"))
	info := podResources(t, d, id)
	pod := info.Cgroup.PodPath
	if info.Resources != nil {
		t.Fatalf("a new pod reports resources: %+v", info.Resources)
	}
	before := readPodLimits(t, pod)
	t.Logf("pod cgroup %s before: %v", pod, before)

	const mi = 1 << 20
	req := &runtime.UpdatePodSandboxResourcesRequest{
		PodSandboxId: id,
		Overhead:     &runtime.LinuxContainerResources{CpuShares: 100, MemoryLimitInBytes: 64 * mi},
		Resources: &runtime.LinuxContainerResources{
			CpuShares: 512, CpuQuota: 50000, CpuPeriod: 100000, CpusetCpus: "0",
			MemoryLimitInBytes: 256 * mi,
			// The kubelet sends hugepage limits even without hugetlb.
			HugepageLimits: []*runtime.HugepageLimit{{PageSize: "2MB", Limit: 0}},
			Unified:        map[string]string{"pids.max": "100"},
		},
	}
	if _, err := d.RT.UpdatePodSandboxResources(ctxT(t), req); err != nil {
		t.Fatalf("UpdatePodSandboxResources: %v", err)
	}
	// Pod limits = containers' sum + overhead.
	want := map[string]string{"cpu": "612", "cpuset": "0", "mem": fmt.Sprint(320 * mi), "pids": "100"}
	if cgroupV2Host() {
		want["cpu"] = fmt.Sprint(libcg.ConvertCPUSharesToCgroupV2Value(612))
		want["cpumax"] = "50000 100000"
		want["swap"] = "0" // no swap beyond the memory limit
	} else {
		want["quota"], want["period"] = "50000", "100000"
		want["swap"] = fmt.Sprint(320 * mi)
	}
	after := readPodLimits(t, pod)
	checkLimits := func(when string, got map[string]string) {
		t.Helper()
		for k, v := range want {
			if k == "swap" && got[k] == "absent" {
				continue // no swap accounting on this kernel
			}
			if got[k] != v {
				t.Errorf("%s: pod cgroup %s: %s = %q, want %q", when, pod, podLimitFiles()[k][1], got[k], v)
			}
		}
	}
	checkLimits("after update", after)
	pauseCpuset := func() string {
		b, err := os.ReadFile(cgroupFile("cpuset", info.Cgroup.PausePath, "cpuset.cpus"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	pauseBefore := pauseCpuset()
	if !cgroupV2Host() && pauseBefore != "0" {
		t.Errorf("v1: the pause cgroup's cpuset is %q, want it narrowed to the pod's 0", pauseBefore)
	}

	info = podResources(t, d, id)
	if info.Resources == nil || info.Resources.Applied == nil || info.Resources.Applied.CPU == nil ||
		info.Resources.Applied.CPU.Shares == nil || *info.Resources.Applied.CPU.Shares != 612 ||
		info.Resources.Applied.Memory == nil || *info.Resources.Applied.Memory.Limit != 320*mi ||
		info.Resources.Applied.Unified["pids.max"] != "100" || len(info.Resources.Overhead) == 0 {
		t.Fatalf("verbose status does not show the applied resources: %+v", info.Resources)
	}

	// Bad requests: refused, nothing changed, the record unchanged.
	bad := map[string]*runtime.UpdatePodSandboxResourcesRequest{
		"negative shares":   {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuShares: -5}},
		"shares too large":  {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuShares: 1 << 20}},
		"quota below 1ms":   {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuShares: 300, CpuQuota: 10}},
		"period too long":   {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuPeriod: 5000000}},
		"cpuset garbage":    {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuShares: 300, CpusetCpus: "zero"}},
		"cpuset not here":   {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuShares: 300, CpusetCpus: "0-4095"}},
		"negative memory":   {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{MemoryLimitInBytes: -7}},
		"swap below memory": {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{MemoryLimitInBytes: 128 * mi, MemorySwapLimitInBytes: 64 * mi}},
		"bad unified key":   {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuShares: 300, Unified: map[string]string{"../escape": "1"}}},
		"bad pids.max":      {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{CpuShares: 300, Unified: map[string]string{"pids.max": "-3"}}},
		"bad hugepage size": {PodSandboxId: id, Resources: &runtime.LinuxContainerResources{HugepageLimits: []*runtime.HugepageLimit{{Limit: 1}}}},
		"bad overhead":      {PodSandboxId: id, Overhead: &runtime.LinuxContainerResources{CpuShares: -1}, Resources: &runtime.LinuxContainerResources{CpuShares: 300}},
	}
	if !cgroupV2Host() {
		// The kernel's own refusal (v1: a memory limit below what the pause
		// uses cannot be reclaimed to, EBUSY) after the cpuset was already
		// moved (pod and pause cgroup, cpu 0 to cpu 1; cpuset goes first):
		// both are put back. (On v2 this would OOM-kill the pause.)
		bad["memory below usage (kernel)"] = &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: id,
			Resources: &runtime.LinuxContainerResources{CpuShares: 300, CpusetCpus: "1", MemoryLimitInBytes: 4096}}
	}
	for name, r := range bad {
		_, err := d.RT.UpdatePodSandboxResources(ctxT(t), r)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		} else {
			t.Logf("%s: %v", name, status.Convert(err).Message())
		}
		if got := readPodLimits(t, pod); fmt.Sprint(got) != fmt.Sprint(after) {
			t.Errorf("%s: pod cgroup changed by a refused request:\n got %v\nwant %v", name, got, after)
		}
		if got := pauseCpuset(); got != pauseBefore {
			t.Errorf("%s: pause cgroup cpuset changed by a refused request: %q, was %q", name, got, pauseBefore)
		}
	}
	if got := podResources(t, d, id); got.Resources == nil || got.Resources.Applied == nil || *got.Resources.Applied.CPU.Shares != 612 {
		t.Errorf("a refused request changed the recorded resources: %+v", got.Resources)
	}
	for _, unknown := range []string{strings.Repeat("0", 64), "nosuchpod"} {
		_, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: unknown,
			Resources: &runtime.LinuxContainerResources{CpuShares: 300}})
		if status.Code(err) != codes.NotFound {
			t.Errorf("unknown sandbox %s: got %v, want NotFound", unknown, err)
		}
	}
	if _, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no sandbox id: got %v, want InvalidArgument", err)
	}

	// kill -9 and start again: the kernel keeps the limits, the record the
	// request.
	d.restart()
	checkLimits("after restart", readPodLimits(t, pod))
	info = podResources(t, d, id)
	if info.Resources == nil || info.Resources.Applied == nil || *info.Resources.Applied.CPU.Shares != 612 ||
		*info.Resources.Applied.Memory.Limit != 320*mi {
		t.Errorf("after restart the recorded resources are %+v", info.Resources)
	}
	// And they can still be changed: memory up, shares down, cpuset wider.
	if _, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: id,
		Resources: &runtime.LinuxContainerResources{CpuShares: 256, MemoryLimitInBytes: 512 * mi, CpusetCpus: onlineCPUs(t)}}); err != nil {
		t.Fatalf("update after restart: %v", err)
	}
	got := readPodLimits(t, pod)
	wantShares := "256"
	if cgroupV2Host() {
		wantShares = fmt.Sprint(libcg.ConvertCPUSharesToCgroupV2Value(256))
	}
	if got["cpu"] != wantShares || got["mem"] != fmt.Sprint(512*mi) || got["cpuset"] != onlineCPUs(t) {
		t.Errorf("second update: %v", got)
	}

	d.stopRemove(t, id)
	_, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: id,
		Resources: &runtime.LinuxContainerResources{CpuShares: 300}})
	if status.Code(err) != codes.NotFound {
		t.Errorf("removed sandbox: got %v, want NotFound", err)
	}
	if _, err := os.Stat(cgroupFile("cpu", pod, "")); err == nil {
		t.Errorf("pod cgroup %s left after removal", pod)
	}
}

// A stopped sandbox's pod cgroup is gone: FailedPrecondition.
func TestUpdatePodSandboxResourcesStoppedPod(t *testing.T) {
	d := startDaemon(t)
	id := d.runPod(t, podConfig("podres-stopped"))
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatal(err)
	}
	_, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: id,
		Resources: &runtime.LinuxContainerResources{CpuShares: 300}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("stopped sandbox: got %v, want FailedPrecondition", err)
	}
	d.stopRemove(t, id)
}

// Rootless (v1 here, a delegated subtree): the limits land in the
// hierarchies delegated to the pod; a non-delegated controller's limit is
// left out, as that controller is.
func TestUpdatePodSandboxResourcesRootless(t *testing.T) {
	if cgroupV2Host() {
		t.Skip("the rootless delegated subtree of this test is a cgroup v1 one")
	}
	d := startDaemon(t, withRootless())
	id := d.runPod(t, podConfig("podres-rl"))
	info := podResources(t, d, id)
	pod := info.Cgroup.PodPath
	if _, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: id,
		Resources: &runtime.LinuxContainerResources{CpuShares: 700, MemoryLimitInBytes: 200 << 20, Unified: map[string]string{"pids.max": "77"}}}); err != nil {
		t.Fatalf("UpdatePodSandboxResources rootless: %v", err)
	}
	checked := 0
	for _, c := range [][3]string{{"memory", "memory.limit_in_bytes", fmt.Sprint(200 << 20)}, {"cpu", "cpu.shares", "700"}, {"pids", "pids.max", "77"}} {
		b, err := os.ReadFile(cgroupFile(c[0], pod, c[1]))
		if os.IsNotExist(err) {
			t.Logf("%s: not delegated to the pod, left out", c[0])
			continue
		}
		checked++
		if got := strings.TrimSpace(string(b)); err != nil || got != c[2] {
			t.Errorf("rootless pod %s = %q (%v), want %s", c[1], got, err, c[2])
		}
	}
	if checked == 0 {
		t.Errorf("no delegated hierarchy holds the pod cgroup %s", pod)
	}
	if _, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: id,
		Resources: &runtime.LinuxContainerResources{CpuShares: 1}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("rootless, cpu shares 1: %v, want InvalidArgument", err)
	}
	d.stopRemove(t, id)
}

func onlineCPUs(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
