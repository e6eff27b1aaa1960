package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The systemd cgroup driver with the real binary. It needs systemd as
// PID 1: the cgroup v2 VM (make vm-test) runs these tests with
// PEAPOD_REQUIRE_SYSTEMD=1, where a missing systemd is a failure; on a host
// without systemd they skip and TestSystemdDriverRefusedWithoutSystemd
// checks that the daemon refuses the driver at start.

func systemdHost() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

func requireSystemdHost(t *testing.T) {
	t.Helper()
	if !systemdHost() {
		if os.Getenv("PEAPOD_REQUIRE_SYSTEMD") == "1" {
			t.Fatal("PEAPOD_REQUIRE_SYSTEMD=1 but systemd is not PID 1 here")
		}
		t.Skip("systemd is not the init system here (the cgroup v2 VM runs this test)")
	}
}

func TestSystemdDriverRefusedWithoutSystemd(t *testing.T) {
	if systemdHost() {
		t.Skip("systemd runs here: TestSystemdDriverPodsAndContainers covers the driver")
	}
	base := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sock := filepath.Join(base, "peapod.sock")
	out, err := exec.CommandContext(ctx, peapodBin, "serve", "--cgroup-driver", "systemd",
		"--socket", sock, "--root", filepath.Join(base, "root"), "--state", filepath.Join(base, "state"),
		"--cni-conf-dir", filepath.Join(base, "net.d"), "--cni-bin-dir", cniBinDir,
		"--network-name", "pprefused", "--bridge", "pprefused0", "--pod-subnet", "10.96.202.0/24").CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("peapod serve --cgroup-driver systemd without systemd: err %v, output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "cgroup driver systemd: systemd is not the init system") ||
		!strings.Contains(string(out), "--cgroup-driver cgroupfs") {
		t.Errorf("unclear refusal:\n%s", out)
	}
	if nat, err := exec.Command("iptables-save", "-t", "nat").Output(); err == nil && strings.Contains(string(nat), `"peapod network pprefused"`) {
		t.Errorf("a refused daemon left its network's masquerade rule")
	}
	if _, err := os.Stat(sock); err == nil {
		t.Errorf("a refused daemon left its socket %s", sock)
	}
	out, err = exec.CommandContext(ctx, peapodBin, "check", "--cgroup-driver", "systemd",
		"--root", filepath.Join(base, "root"), "--state", filepath.Join(base, "state"),
		"--cni-conf-dir", filepath.Join(base, "net.d"), "--cni-bin-dir", cniBinDir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "problem: cgroup driver systemd: systemd is not the init system") {
		t.Errorf("peapod check --cgroup-driver systemd: %v\n%s", err, out)
	}
	if out, err := exec.CommandContext(ctx, peapodBin, "serve", "--cgroup-driver", "systemdd").CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "use cgroupfs or systemd") {
		t.Errorf("unknown driver: %v\n%s", err, out)
	}
}

type sdVerbose struct {
	PID        int    `json:"pid"`
	RuntimeDir string `json:"runtimeDir"`
	Cgroup     *struct {
		PodPath    string `json:"podPath"`
		PausePath  string `json:"pausePath"`
		Driver     string `json:"driver"`
		Slice      string `json:"slice"`
		CreatedPod bool   `json:"createdPod"`
	} `json:"cgroup"`
}

func sdStatus(t *testing.T, d *daemon, pod string) sdVerbose {
	t.Helper()
	resp, err := d.RT.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: pod, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var v sdVerbose
	if err := json.Unmarshal([]byte(resp.Info["info"]), &v); err != nil || v.Cgroup == nil {
		t.Fatalf("verbose info %q: %v", resp.Info["info"], err)
	}
	return v
}

func containerPid(t *testing.T, d *daemon, id string) int {
	t.Helper()
	resp, err := d.RT.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(resp.Info["info"]), &v); err != nil || v.PID <= 0 {
		t.Fatalf("container %s verbose info %q: %v", id, resp.Info["info"], err)
	}
	return v.PID
}

// systemctlShow reads unit properties.
func systemctlShow(t *testing.T, unit string, props ...string) map[string]string {
	t.Helper()
	out, err := exec.Command("systemctl", "show", "-p", strings.Join(props, ","), unit).CombinedOutput()
	if err != nil {
		t.Fatalf("systemctl show %s: %v: %s", unit, err, out)
	}
	m := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		k, v, _ := strings.Cut(l, "=")
		m[k] = v
	}
	return m
}

func waitInactive(t *testing.T, unit string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for systemctlShow(t, unit, "ActiveState")["ActiveState"] == "active" {
		if time.Now().After(deadline) {
			t.Errorf("unit %s still active", unit)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// inCgroup checks /proc/<pid>/cgroup places pid exactly in cg.
func inCgroup(t *testing.T, pid int, cg string) {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasSuffix(l, ":"+cg) {
			return
		}
	}
	t.Errorf("pid %d is in %q, want %s", pid, b, cg)
}

// kubeletSlice makes a pod slice the way a kubelet with cgroupDriver
// systemd does before RunPodSandbox: a transient slice unit.
func kubeletSlice(t *testing.T, slice string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := sddbus.NewWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	name := strings.TrimSuffix(slice, ".slice")
	parent := name[:strings.LastIndexByte(name, '-')] + ".slice"
	ch := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, slice, "replace", []sddbus.Property{
		sddbus.PropDescription("kubelet-style pod slice"), sddbus.PropWants(parent),
		{Name: "DefaultDependencies", Value: dbus.MakeVariant(false)},
		{Name: "MemoryAccounting", Value: dbus.MakeVariant(true)},
		{Name: "CPUAccounting", Value: dbus.MakeVariant(true)},
		{Name: "TasksAccounting", Value: dbus.MakeVariant(true)},
	}, ch); err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r != "done" {
		t.Fatalf("start %s: %s", slice, r)
	}
	t.Cleanup(func() { _ = exec.Command("systemctl", "stop", slice).Run() })
}

func readCg(t *testing.T, cg, file string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup", cg, file))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestSystemdDriverPodsAndContainers(t *testing.T) {
	requireSystemdHost(t)
	if !cgroupV2Host() {
		t.Skip("the systemd driver is tested on cgroup v2 (the VM)")
	}
	reg := startRegistry(t)
	reg.push(t, "busybox:1", busyboxImage(t, nil))
	d := startDaemon(t, withArgs("--registry-config-dir", reg.HostsDir, "--cgroup-driver", "systemd"))
	img := runtime.NewImageServiceClient(d.conn)
	if _, err := img.PullImage(ctxT(t), &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "example.test/busybox:1"}}); err != nil {
		t.Fatal(err)
	}
	rc, err := d.RT.RuntimeConfig(ctxT(t), &runtime.RuntimeConfigRequest{})
	if err != nil || rc.GetLinux().GetCgroupDriver() != runtime.CgroupDriver_SYSTEMD {
		t.Fatalf("RuntimeConfig = %v, %v; want SYSTEMD", rc, err)
	}
	// A cgroupfs parent is refused with what to do.
	bad := podConfig("sd-bad")
	bad.Linux.CgroupParent = "/kubepods/besteffort/pod1"
	if _, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: bad}); err == nil || !strings.Contains(err.Error(), "systemd") {
		t.Errorf("cgroupfs parent under the systemd driver: %v", err)
	}

	// A kubelet's pod slice.
	kslice := "kubepods-besteffort-pod" + randHex(4) + ".slice"
	kubeletSlice(t, kslice)
	cfg := podConfig("sd")
	cfg.Linux.CgroupParent = kslice
	pod := d.runPod(t, cfg)
	v := sdStatus(t, d, pod)
	pauseScope := "peapod-" + pod + ".scope"
	if v.Cgroup.Driver != "systemd" || v.Cgroup.Slice != kslice || v.Cgroup.CreatedPod ||
		v.Cgroup.PodPath != "/kubepods.slice/kubepods-besteffort.slice/"+kslice || v.Cgroup.PausePath != v.Cgroup.PodPath+"/"+pauseScope {
		t.Fatalf("pod cgroup record %+v", *v.Cgroup)
	}
	inCgroup(t, v.PID, v.Cgroup.PausePath)
	if p := systemctlShow(t, pauseScope, "ActiveState", "Slice"); p["ActiveState"] != "active" || p["Slice"] != kslice {
		t.Errorf("pause scope %s: %v", pauseScope, p)
	}

	// A container: its own scope in the pod's slice.
	id := d.createContainer(t, pod, cfg, busyboxContainer("work", "sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; exec sleep 3600"))
	d.startContainer(t, id)
	cscope := "peapod-" + id + ".scope"
	ccg := v.Cgroup.PodPath + "/" + cscope
	inCgroup(t, containerPid(t, d, id), ccg)
	if p := systemctlShow(t, cscope, "ActiveState", "Slice", "Delegate"); p["ActiveState"] != "active" || p["Slice"] != kslice {
		t.Errorf("container scope %s: %v", cscope, p)
	}
	time.Sleep(time.Second)
	cs, err := d.RT.ContainerStats(ctxT(t), &runtime.ContainerStatsRequest{ContainerId: id})
	if err != nil || cs.Stats.Cpu == nil || cs.Stats.Cpu.UsageCoreNanoSeconds.GetValue() == 0 || cs.Stats.Memory == nil || cs.Stats.Memory.WorkingSetBytes.GetValue() == 0 {
		t.Errorf("ContainerStats of a systemd scope: %v, %v", cs, err)
	}
	ps, err := d.RT.PodSandboxStats(ctxT(t), &runtime.PodSandboxStatsRequest{PodSandboxId: pod})
	if err != nil || ps.Stats.Linux.Cpu.UsageCoreNanoSeconds.GetValue() < cs.Stats.Cpu.UsageCoreNanoSeconds.GetValue() {
		t.Errorf("PodSandboxStats of a systemd slice: %v, %v", ps, err)
	}

	// Limits: unit properties and files.
	if _, err := d.RT.UpdateContainerResources(ctxT(t), &runtime.UpdateContainerResourcesRequest{ContainerId: id,
		Linux: &runtime.LinuxContainerResources{MemoryLimitInBytes: 100 << 20, CpuQuota: 20000, CpuPeriod: 100000}}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	if p := systemctlShow(t, cscope, "MemoryMax", "CPUQuotaPerSecUSec"); p["MemoryMax"] != strconv.Itoa(100<<20) || p["CPUQuotaPerSecUSec"] != "200ms" {
		t.Errorf("container scope properties after UpdateContainerResources: %v", p)
	}
	if got := readCg(t, ccg, "memory.max"); got != strconv.Itoa(100<<20) {
		t.Errorf("container memory.max = %s", got)
	}
	if _, err := d.RT.UpdatePodSandboxResources(ctxT(t), &runtime.UpdatePodSandboxResourcesRequest{PodSandboxId: pod,
		Resources: &runtime.LinuxContainerResources{MemoryLimitInBytes: 300 << 20, CpuQuota: 150000, CpuPeriod: 100000}}); err != nil {
		t.Fatalf("UpdatePodSandboxResources: %v", err)
	}
	if p := systemctlShow(t, kslice, "MemoryMax", "CPUQuotaPerSecUSec"); p["MemoryMax"] != strconv.Itoa(300<<20) || p["CPUQuotaPerSecUSec"] != "1.500000s" && p["CPUQuotaPerSecUSec"] != "1.5s" {
		t.Errorf("pod slice properties after UpdatePodSandboxResources: %v", p)
	}
	if got := readCg(t, v.Cgroup.PodPath, "memory.max"); got != strconv.Itoa(300<<20) {
		t.Errorf("pod memory.max = %s", got)
	}

	// kill -9 and restart: the records (driver, slice) carry on.
	d.restart()
	if v2 := sdStatus(t, d, pod); v2.Cgroup.Slice != kslice || v2.PID != v.PID {
		t.Errorf("after restart: %+v", v2)
	}
	if _, err := d.RT.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: id, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.RemoveContainer(ctxT(t), &runtime.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	waitInactive(t, cscope)
	d.stopRemove(t, pod)
	waitInactive(t, pauseScope)
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", v.Cgroup.PausePath)); err == nil {
		t.Errorf("pause scope cgroup left")
	}
	if p := systemctlShow(t, kslice, "ActiveState"); p["ActiveState"] != "active" {
		t.Errorf("the kubelet's slice was stopped: %v", p)
	}

	// A pod that names no parent (crictl): a slice of peapod's own.
	cfg2 := podConfig("sd-default")
	pod2 := d.runPod(t, cfg2)
	v = sdStatus(t, d, pod2)
	if !v.Cgroup.CreatedPod || !strings.HasSuffix(v.Cgroup.Slice, "-"+pod2+".slice") || !strings.HasPrefix(v.Cgroup.PodPath, "/peapod.slice/") {
		t.Errorf("default pod record %+v", *v.Cgroup)
	}
	inCgroup(t, v.PID, v.Cgroup.PausePath)
	if p := systemctlShow(t, v.Cgroup.Slice, "ActiveState"); p["ActiveState"] != "active" {
		t.Errorf("default pod slice: %v", p)
	}

	// Its shim killed: the container is reported killed and its scope,
	// which the shim would have stopped, is stopped.
	orphan := d.createContainer(t, pod2, cfg2, busyboxContainer("orphan", "sleep", "3600"))
	d.startContainer(t, orphan)
	killShim(t, v.RuntimeDir)
	if st := d.waitExited(t, orphan, 10*time.Second); st.ExitCode != 137 {
		t.Errorf("container of a killed shim: exit %d, want 137", st.ExitCode)
	}
	waitInactive(t, "peapod-"+orphan+".scope")

	d.stopRemove(t, pod2)
	waitInactive(t, v.Cgroup.Slice)
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", v.Cgroup.PodPath)); err == nil {
		t.Errorf("default pod slice cgroup %s left", v.Cgroup.PodPath)
	}
}
