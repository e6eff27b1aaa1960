package cgroups

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
	libcgroups "github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Tests of the driver interface (everywhere) and of the systemd driver.
// The systemd ones need systemd as PID 1 and run for real in the cgroup v2
// VM (make vm-test), which sets PEAPOD_REQUIRE_SYSTEMD=1 so that they fail
// there rather than skip; on a host without systemd (the development
// machine) they skip, and TestSystemdDriverRefusedWithoutSystemd checks the
// refusal instead.

func requireSystemd(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if err := SystemdAvailable(); err != nil {
		if os.Getenv("PEAPOD_REQUIRE_SYSTEMD") == "1" {
			t.Fatalf("PEAPOD_REQUIRE_SYSTEMD=1 but: %v", err)
		}
		t.Skipf("no systemd here: %v", err)
	}
}

func TestDriverNames(t *testing.T) {
	d, err := NewDriver("", "/peapod-x")
	if err != nil || d.Name() != DriverCgroupfs {
		t.Fatalf("default driver: %v, %v", d, err)
	}
	if d, err := NewDriver(DriverCgroupfs, "/peapod-x"); err != nil || d.Name() != DriverCgroupfs {
		t.Fatalf("cgroupfs driver: %v, %v", d, err)
	}
	if _, err := NewDriver("cgroupsfs", "/peapod-x"); err == nil || !strings.Contains(err.Error(), "cgroupfs or systemd") {
		t.Errorf("unknown driver: %v", err)
	}
	if lines := CheckDriver("bogus"); !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "unknown cgroup driver") }) {
		t.Errorf("CheckDriver(bogus) = %v", lines)
	}
}

// On a host without systemd the driver is refused at once, saying why and
// what to do; `peapod check` gets the same line.
func TestSystemdDriverRefusedWithoutSystemd(t *testing.T) {
	if SystemdAvailable() == nil {
		t.Skip("systemd runs here: TestSystemdPodLifecycle covers the driver")
	}
	_, err := NewDriver(DriverSystemd, "/peapod")
	if err == nil || !strings.Contains(err.Error(), "cgroup driver systemd") || !strings.Contains(err.Error(), "--cgroup-driver cgroupfs") {
		t.Fatalf("NewDriver(systemd) without systemd: %v", err)
	}
	if lines := CheckDriver(DriverSystemd); !slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "cgroup driver systemd") }) {
		t.Errorf("CheckDriver(systemd) does not say it: %v", lines)
	}
	if lines := CheckDriver(DriverCgroupfs); slices.ContainsFunc(lines, func(l string) bool { return strings.Contains(l, "systemd") }) {
		t.Errorf("CheckDriver(cgroupfs) mentions systemd: %v", lines)
	}
}

// The cgroupfs driver is CreatePodCgroup with the default parent; container
// paths are <pod>/<id> in both forms.
func TestCgroupfsDriverCreatesUnderItsDefaultParent(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	d, err := NewDriver(DriverCgroupfs, parent)
	if err != nil {
		t.Fatal(err)
	}
	id := newSandboxID()
	p, err := d.CreatePodCgroup("", id)
	if err != nil {
		t.Fatal(err)
	}
	if p.Driver != "" || p.PodPath != parent+"/"+id || !p.CreatedPod {
		t.Errorf("record %+v", p)
	}
	if got := p.ContainerPath("c1"); got != p.PodPath+"/c1" {
		t.Errorf("ContainerPath = %s", got)
	}
	if got := p.ContainerCgroupsPath("c1"); got != p.PodPath+"/c1" || IsSystemdCgroupsPath(got) {
		t.Errorf("ContainerCgroupsPath = %s", got)
	}
	assertDirs(t, mnts, p.PausePath, true)
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	assertDirs(t, mnts, p.PodPath, false)
	if err := d.RemoveParentIfEmpty(); err != nil {
		t.Fatal(err)
	}
	assertDirs(t, mnts, parent, false)
}

func TestSlicesAndScopeNames(t *testing.T) {
	for path, want := range map[string]string{"/peapod": "peapod.slice", "/peapod-1a2b": "peapod-1a2b.slice", "/a/b": "a-b.slice"} {
		if got, err := sliceOfPath(path); err != nil || got != want {
			t.Errorf("sliceOfPath(%s) = %q, %v; want %q", path, got, err, want)
		}
	}
	for _, bad := range []string{"", "/", "peapod", "/a b"} {
		if got, err := sliceOfPath(bad); err == nil {
			t.Errorf("sliceOfPath(%q) = %q, want an error", bad, got)
		}
	}
	for slice, want := range map[string]string{"kubepods-besteffort-pod1.slice": "kubepods-besteffort.slice", "kubepods.slice": "-.slice"} {
		if got := parentSlice(slice); got != want {
			t.Errorf("parentSlice(%s) = %s, want %s", slice, got, want)
		}
	}
	if err := checkSlice("kubepods-besteffort-pod1.slice"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"/kubepods/besteffort/pod1", "kubepods--x.slice", "a/b.slice", "pod1", "-x.slice"} {
		err := checkSlice(bad)
		if err == nil || !strings.Contains(err.Error(), ErrInvalidParent.Error()) {
			t.Errorf("checkSlice(%q) = %v, want ErrInvalidParent", bad, err)
		}
	}
	if err := checkSlice("/kubepods/burstable/pod1"); err == nil || !strings.Contains(err.Error(), "set the kubelet's cgroupDriver to systemd") {
		t.Errorf("a cgroupfs path under systemd: %v", err)
	}
	// A systemd record: container cgroups are scopes in the pod's slice.
	id := newSandboxID()
	p := PodCgroup{Mode: ModeV2, Driver: DriverSystemd, Slice: "kubepods-besteffort-pod1.slice",
		PodPath: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice"}
	p.PausePath = p.PodPath + "/peapod-" + id + ".scope"
	if err := p.check(); err != nil {
		t.Errorf("valid systemd record refused: %v", err)
	}
	if p.pauseID() != id {
		t.Errorf("pauseID = %s", p.pauseID())
	}
	if got := p.ContainerPath("c1"); got != p.PodPath+"/peapod-c1.scope" {
		t.Errorf("ContainerPath = %s", got)
	}
	if got := p.ContainerCgroupsPath("c1"); got != "kubepods-besteffort-pod1.slice:peapod:c1" || !IsSystemdCgroupsPath(got) {
		t.Errorf("ContainerCgroupsPath = %s", got)
	}
	if fd, err := p.PauseCgroupFD(); fd != -1 || err != nil {
		t.Errorf("PauseCgroupFD = %d, %v; want -1 (the scope is started by AddPause)", fd, err)
	}
	for _, damaged := range []PodCgroup{
		{Mode: ModeV2, Driver: "upstart", PodPath: p.PodPath, PausePath: p.PausePath},
		{Mode: ModeV2, Driver: DriverSystemd, Slice: "../x", PodPath: p.PodPath, PausePath: p.PausePath},
	} {
		if err := damaged.Remove(); err == nil {
			t.Errorf("damaged record %+v accepted", damaged)
		}
	}
}

// unitProps reads properties of a unit through systemctl show.
func unitProps(t *testing.T, unit string, props ...string) map[string]string {
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

func unitActive(t *testing.T, unit string) bool {
	return unitProps(t, unit, "ActiveState")["ActiveState"] == "active"
}

func waitUnitGone(t *testing.T, unit string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for unitActive(t, unit) {
		if time.Now().After(deadline) {
			t.Errorf("unit %s still active", unit)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A default pod under the systemd driver: its own slice, the pause in a
// scope, limits as unit properties and files, stats from the scope's
// path, and Remove kills, stops the scope and the slice.
func TestSystemdPodLifecycle(t *testing.T) {
	requireSystemd(t)
	parent := "/peapod-sdtest" + randHex(3)
	d, err := NewDriver(DriverSystemd, parent)
	if err != nil {
		t.Fatal(err)
	}
	slice := strings.TrimPrefix(parent, "/") + ".slice"
	t.Cleanup(func() { _ = exec.Command("systemctl", "stop", slice).Run() })
	id := newSandboxID()
	p, err := d.CreatePodCgroup("", id)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(p)
	t.Logf("record: %s", b)
	wantSlice := strings.TrimSuffix(slice, ".slice") + "-" + id + ".slice"
	if p.Driver != DriverSystemd || p.Slice != wantSlice || !p.CreatedPod ||
		p.PodPath != "/peapod.slice/"+slice+"/"+wantSlice || p.PausePath != p.PodPath+"/peapod-"+id+".scope" {
		t.Fatalf("record %+v", p)
	}
	if !unitActive(t, wantSlice) {
		t.Errorf("pod slice %s is not active", wantSlice)
	}
	root := "/sys/fs/cgroup"
	if DetectMode() == ModeV1 {
		root = "/sys/fs/cgroup/systemd"
	}
	if !exists(filepath.Join(root, p.PodPath)) {
		t.Fatalf("pod slice has no cgroup %s", p.PodPath)
	}

	s := startSleeper(t, nil)
	if err := p.AddPause(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	scope := "peapod-" + id + ".scope"
	props := unitProps(t, scope, "ActiveState", "Slice", "ControlGroup", "Delegate")
	if props["ActiveState"] != "active" || props["Slice"] != wantSlice || props["ControlGroup"] != p.PausePath {
		t.Errorf("pause scope: %v", props)
	}
	if cg := procCgroups(t, s.cmd.Process.Pid); !slices.ContainsFunc(cg, func(l string) bool { return strings.HasSuffix(l, ":"+p.PausePath) }) {
		t.Errorf("pause is in %v, want %s", cg, p.PausePath)
	}

	// Stats read the scope's and the slice's paths.
	for _, cg := range []string{p.PausePath, p.PodPath} {
		st, err := ReadStats(cg)
		if err != nil {
			t.Fatalf("ReadStats(%s): %v", cg, err)
		}
		if st.Pids == nil || st.Pids.Current < 1 || st.Memory == nil {
			t.Errorf("stats of %s: pids %+v memory %+v", cg, st.Pids, st.Memory)
		}
	}

	// Pod limits: files and the slice's properties.
	shares, quota, period, mem := uint64(512), int64(50000), uint64(100000), int64(200<<20)
	pids := int64(64)
	if err := p.SetResources(&specs.LinuxResources{
		CPU:    &specs.LinuxCPU{Shares: &shares, Quota: &quota, Period: &period},
		Memory: &specs.LinuxMemory{Limit: &mem},
		Pids:   &specs.LinuxPids{Limit: &pids},
	}); err != nil {
		t.Fatal(err)
	}
	weight := strconv.FormatUint(libcgroups.ConvertCPUSharesToCgroupV2Value(shares), 10)
	sp := unitProps(t, wantSlice, "CPUQuotaPerSecUSec", "MemoryMax", "TasksMax", "CPUWeight")
	if sp["MemoryMax"] != strconv.Itoa(200<<20) || sp["TasksMax"] != "64" || sp["CPUQuotaPerSecUSec"] != "500ms" ||
		DetectMode() == ModeV2 && sp["CPUWeight"] != weight {
		t.Errorf("slice properties after SetResources: %v", sp)
	}
	if DetectMode() == ModeV2 {
		for file, want := range map[string]string{"memory.max": strconv.Itoa(200 << 20), "pids.max": "64", "cpu.max": "50000 100000", "cpu.weight": weight} {
			b, err := os.ReadFile(filepath.Join(root, p.PodPath, file))
			if err != nil || strings.TrimSpace(string(b)) != want {
				t.Errorf("%s = %q (%v), want %q", file, b, err, want)
			}
		}
	}
	bad := int64(10)
	if err := p.SetResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: &bad}}); err == nil {
		t.Error("a 10 µs quota was accepted")
	}

	// A container scope in the same slice keeps the slice until it is gone.
	c := startSleeper(t, nil)
	cm, err := systemdScopeManager(p.Mode, p.Slice, "ctr"+randHex(4))
	if err != nil {
		t.Fatal(err)
	}
	if err := cm.Apply(c.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	s.assertKilled(t)
	waitUnitGone(t, scope)
	if exists(filepath.Join(root, p.PausePath)) {
		t.Errorf("pause scope cgroup %s left", p.PausePath)
	}
	if !unitActive(t, wantSlice) {
		t.Errorf("pod slice stopped while a container scope is in it")
	}
	_ = c.cmd.Process.Kill()
	<-c.done
	if err := cm.Destroy(); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(); err != nil { // again, now that it is empty
		t.Fatal(err)
	}
	waitUnitGone(t, wantSlice)
	if exists(filepath.Join(root, p.PodPath)) {
		t.Errorf("pod slice cgroup %s left", p.PodPath)
	}
	if err := d.RemoveParentIfEmpty(); err != nil {
		t.Fatal(err)
	}
	waitUnitGone(t, slice)
}

// A kubelet's slice (made by the kubelet before RunPodSandbox) is used and
// kept; a parent that is no slice is refused.
func TestSystemdKubeletSliceIsKept(t *testing.T) {
	requireSystemd(t)
	d, err := NewDriver(DriverSystemd, "/peapod-sdtest"+randHex(3))
	if err != nil {
		t.Fatal(err)
	}
	kslice := "kubepods-besteffort-pod" + randHex(4) + ".slice"
	startSlice(t, kslice)
	t.Cleanup(func() { _ = exec.Command("systemctl", "stop", kslice).Run() })

	id := newSandboxID()
	p, err := d.CreatePodCgroup(kslice, id)
	if err != nil {
		t.Fatal(err)
	}
	if p.CreatedPod || p.PodPath != "/kubepods.slice/kubepods-besteffort.slice/"+kslice {
		t.Errorf("record %+v", p)
	}
	s := startSleeper(t, nil)
	if err := p.AddPause(s.cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	s.assertKilled(t)
	if !unitActive(t, kslice) {
		t.Error("the kubelet's slice was stopped")
	}
	for _, bad := range []string{"/kubepods/besteffort/pod1", "not-a-slice"} {
		if _, err := d.CreatePodCgroup(bad, newSandboxID()); err == nil || !strings.Contains(err.Error(), ErrInvalidParent.Error()) {
			t.Errorf("parent %q: %v, want ErrInvalidParent", bad, err)
		}
	}
}

// Pod slices of sandboxes the store does not know are removed at start,
// with what runs in them.
func TestSystemdSweepOrphans(t *testing.T) {
	requireSystemd(t)
	parent := "/peapod-sdtest" + randHex(3)
	d, err := NewDriver(DriverSystemd, parent)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = exec.Command("systemctl", "stop", strings.TrimPrefix(parent, "/")+".slice").Run() })
	keep, lose := newSandboxID(), newSandboxID()
	var pods []PodCgroup
	for _, id := range []string{keep, lose} {
		p, err := d.CreatePodCgroup("", id)
		if err != nil {
			t.Fatal(err)
		}
		s := startSleeper(t, nil)
		if err := p.AddPause(s.cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	removed, err := d.SweepOrphans(func(id string) bool { return id == keep })
	if err != nil || len(removed) != 1 || removed[0] != pods[1].PodPath {
		t.Fatalf("SweepOrphans = %v, %v; want [%s]", removed, err, pods[1].PodPath)
	}
	waitUnitGone(t, pods[1].Slice)
	if !unitActive(t, pods[0].Slice) {
		t.Error("the kept pod's slice was stopped")
	}
	if err := pods[0].Remove(); err != nil {
		t.Fatal(err)
	}
	waitUnitGone(t, pods[0].Slice)
}

// startSlice makes a slice the way a kubelet does: a transient slice unit.
func startSlice(t *testing.T, slice string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := sddbus.NewWithContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch := make(chan string, 1)
	props := []sddbus.Property{sddbus.PropDescription("test pod slice"), sddbus.PropWants(parentSlice(slice)),
		{Name: "DefaultDependencies", Value: dbus.MakeVariant(false)}}
	if _, err := conn.StartTransientUnitContext(ctx, slice, "replace", props, ch); err != nil {
		t.Fatal(err)
	}
	if r := <-ch; r != "done" {
		t.Fatalf("start %s: %s", slice, r)
	}
}
