package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Stats tests: each runs containers doing one measurable thing and checks
// the CRI stats (and cAdvisor-style metrics) against what was done and
// against the kernel's own files for the same cgroup.

// cgroupFile is file of the cgroup cgPath in the hierarchy of controller.
func cgroupFile(controller, cgPath, file string) string {
	if cgroupV2Host() {
		return filepath.Join("/sys/fs/cgroup", cgPath, file)
	}
	return filepath.Join("/sys/fs/cgroup", controller, cgPath, file)
}

// kernelCPUNanos is the cgroup's CPU time as the kernel reports it:
// cpuacct.usage on v1, usage_usec of cpu.stat on v2.
func kernelCPUNanos(t testing.TB, cg string) uint64 {
	t.Helper()
	if !cgroupV2Host() {
		return readUintFile(t, cgroupFile("cpuacct", cg, "cpuacct.usage"))
	}
	return keyedUint(t, cgroupFile("cpu", cg, "cpu.stat"), "usage_usec") * 1000
}

// kernelOOMKills is the count of OOM kills in the cgroup as the kernel
// keeps it: oom_kill of memory.oom_control on v1, of memory.events on v2.
func kernelOOMKills(t testing.TB, cg string) uint64 {
	t.Helper()
	file := "memory.oom_control"
	if cgroupV2Host() {
		file = "memory.events"
	}
	return keyedUint(t, cgroupFile("memory", cg, file), "oom_kill")
}

// keyedUint is the value of the "key value" line of a cgroup file such as
// cpu.stat or memory.events.
func keyedUint(t testing.TB, path, key string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+" "); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				t.Fatalf("%s: %s: %v", path, key, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in %s", key, path)
	return 0
}

func readUintFile(t testing.TB, path string) uint64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return v
}

// containerCgroup is where the container's cgroup is: <pod cgroup>/<id>.
func (d *daemon) containerCgroup(t testing.TB, pod, id string) string {
	_, v := d.status(t, pod)
	if v.Cgroup == nil || v.Cgroup.PodPath == "" {
		t.Fatalf("verbose status of %s has no cgroup", pod)
	}
	return v.Cgroup.PodPath + "/" + id
}

func (d *daemon) containerStats(t testing.TB, id string) *runtime.ContainerStats {
	t.Helper()
	resp, err := d.RT.ContainerStats(ctxT(t), &runtime.ContainerStatsRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStats %s: %v", id, err)
	}
	return resp.Stats
}

func (d *daemon) podStats(t testing.TB, id string) *runtime.PodSandboxStats {
	t.Helper()
	resp, err := d.RT.PodSandboxStats(ctxT(t), &runtime.PodSandboxStatsRequest{PodSandboxId: id})
	if err != nil {
		t.Fatalf("PodSandboxStats %s: %v", id, err)
	}
	return resp.Stats
}

// metric finds a metric of the pod by name, for the container named ctr
// ("" for the pod cgroup's series), and the interface when given.
func (d *daemon) metric(t testing.TB, pod, ctr, name string, iface ...string) (*runtime.Metric, bool) {
	t.Helper()
	resp, err := d.RT.ListPodSandboxMetrics(ctxT(t), &runtime.ListPodSandboxMetricsRequest{})
	if err != nil {
		t.Fatalf("ListPodSandboxMetrics: %v", err)
	}
	match := func(ms []*runtime.Metric) (*runtime.Metric, bool) {
		for _, m := range ms {
			// Labels: container id image name namespace pod [interface]
			if m.Name == name && m.LabelValues[0] == ctr && (len(iface) == 0 || m.LabelValues[6] == iface[0]) {
				return m, true
			}
		}
		return nil, false
	}
	for _, pm := range resp.PodMetrics {
		if pm.PodSandboxId != pod {
			continue
		}
		if ctr == "" {
			return match(pm.Metrics)
		}
		for _, cm := range pm.ContainerMetrics {
			if m, ok := match(cm.Metrics); ok {
				return m, true
			}
		}
	}
	return nil, false
}

func within(got, want, tolerance float64) bool {
	return got >= want*(1-tolerance) && got <= want*(1+tolerance)
}

func TestStatsCPUOneCoreForFiveSeconds(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("cpu")
	pod := d.runPod(t, cfg)
	// Burn one core for 5 s in a child, then idle.
	id := d.createContainer(t, pod, cfg, busyboxContainer("burn", "sh", "-c",
		"(while :; do :; done) & p=$!; sleep 5; kill $p; exec sleep 3600"))
	d.startContainer(t, id)
	started := time.Now()
	cg := d.containerCgroup(t, pod, id)

	// The rate, read in the middle of the burn, on the first stats call
	// ever made for this container.
	time.Sleep(2500 * time.Millisecond)
	st := d.containerStats(t, id)
	if st.Cpu == nil || st.Cpu.UsageNanoCores == nil {
		t.Fatalf("first ContainerStats has no usage_nano_cores: %v", st.Cpu)
	}
	rate := float64(st.Cpu.UsageNanoCores.Value)
	t.Logf("usage_nano_cores during the burn: %.3g", rate)
	if !within(rate, 1e9, 0.15) {
		t.Errorf("usage_nano_cores = %.3g, want 1e9 ±15%%", rate)
	}
	ps := d.podStats(t, pod)
	if ps.Linux.Cpu == nil || !within(float64(ps.Linux.Cpu.UsageNanoCores.GetValue()), 1e9, 0.15) {
		t.Errorf("pod usage_nano_cores = %v, want 1e9 ±15%%", ps.Linux.Cpu)
	}

	// The total, after the burn.
	time.Sleep(time.Until(started.Add(7 * time.Second)))
	st = d.containerStats(t, id)
	kernel := kernelCPUNanos(t, cg)
	total := float64(st.Cpu.UsageCoreNanoSeconds.Value)
	t.Logf("cumulative CPU after the burn: %.3f s (kernel %.3f s)", total/1e9, float64(kernel)/1e9)
	if !within(total, 5e9, 0.15) {
		t.Errorf("usage_core_nano_seconds = %.3g, want 5e9 ±15%%", total)
	}
	if diff := float64(kernel) - total; diff < 0 || diff > 0.05e9 {
		t.Errorf("stats say %.0f ns, the kernel %d ns a moment later", total, kernel)
	}
	if r := st.Cpu.UsageNanoCores.GetValue(); r > 0.1e9 {
		t.Errorf("usage_nano_cores after the burn = %.3g, want about 0", float64(r))
	}
	if m, ok := d.metric(t, pod, "burn", "container_cpu_usage_seconds_total"); !ok || m.Value.Value < 4 || m.Value.Value > 6 {
		t.Errorf("container_cpu_usage_seconds_total = %v", m)
	} else if m.LabelValues[1] != cg || m.LabelValues[3] != id || m.LabelValues[4] != "it" || m.LabelValues[5] != "cpu" || m.LabelValues[2] != "example.test/busybox:1" {
		t.Errorf("labels %v", m.LabelValues)
	}

	// Every metric is described, with as many labels as values.
	desc, err := d.RT.ListMetricDescriptors(ctxT(t), &runtime.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]int{}
	for _, dsc := range desc.Descriptors {
		keys[dsc.Name] = len(dsc.LabelKeys)
	}
	for _, want := range []string{"container_cpu_usage_seconds_total", "container_memory_working_set_bytes", "container_memory_rss",
		"container_memory_usage_bytes", "container_network_receive_bytes_total", "container_network_transmit_bytes_total",
		"container_oom_events_total", "container_processes", "container_spec_memory_limit_bytes"} {
		if _, ok := keys[want]; !ok {
			t.Errorf("no descriptor for %s", want)
		}
	}
	all, err := d.RT.ListPodSandboxMetrics(ctxT(t), &runtime.ListPodSandboxMetricsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(ms []*runtime.Metric) {
		for _, m := range ms {
			if n, ok := keys[m.Name]; !ok || n != len(m.LabelValues) {
				t.Errorf("metric %s: %d label values, descriptor has %d (%v)", m.Name, len(m.LabelValues), n, ok)
			}
		}
	}
	for _, pm := range all.PodMetrics {
		check(pm.Metrics)
		for _, cm := range pm.ContainerMetrics {
			check(cm.Metrics)
		}
	}
	d.stopRemove(t, pod)
}

func TestStatsMemoryWorkingSetGrowsBy64MiB(t *testing.T) {
	d, _, _ := containerDaemon(t)
	// A tmpfs of our own, so the 64 MiB fit whatever /dev/shm's size; its
	// pages are charged to the memory cgroup of the container writing them.
	fill := t.TempDir()
	if err := unix.Mount("tmpfs", fill, "tmpfs", 0, "size=128m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(fill, unix.MNT_DETACH) })
	cfg := podConfig("mem")
	pod := d.runPod(t, cfg)
	c := busyboxContainer("alloc", "sh", "-c",
		"while [ ! -e /fill/go ]; do sleep 0.1; done; dd if=/dev/zero of=/fill/data bs=1M count=64 2>/dev/null; touch /fill/done; exec sleep 3600")
	c.Mounts = []*runtime.Mount{{HostPath: fill, ContainerPath: "/fill"}}
	id := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, id)
	cg := d.containerCgroup(t, pod, id)
	time.Sleep(time.Second)

	before := d.containerStats(t, id).Memory
	podBefore := d.podStats(t, pod).Linux.Memory
	if before == nil || podBefore == nil {
		t.Fatal("no memory stats")
	}
	if err := os.WriteFile(filepath.Join(fill, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(fill, "done")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the container did not write 64 MiB within 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	after := d.containerStats(t, id).Memory
	podAfter := d.podStats(t, pod).Linux.Memory
	usageFile := cgroupFile("memory", cg, "memory.usage_in_bytes")
	if _, err := os.Stat(usageFile); err != nil {
		usageFile = cgroupFile("memory", cg, "memory.current")
	}
	kernel := readUintFile(t, usageFile)

	const mib = 1 << 20
	grew := float64(after.WorkingSetBytes.Value) - float64(before.WorkingSetBytes.Value)
	podGrew := float64(podAfter.WorkingSetBytes.Value) - float64(podBefore.WorkingSetBytes.Value)
	t.Logf("working set %.1f MiB -> %.1f MiB (+%.1f MiB); pod +%.1f MiB; usage %.1f MiB (kernel %.1f MiB); rss %.1f MiB",
		float64(before.WorkingSetBytes.Value)/mib, float64(after.WorkingSetBytes.Value)/mib, grew/mib, podGrew/mib,
		float64(after.UsageBytes.Value)/mib, float64(kernel)/mib, float64(after.RssBytes.Value)/mib)
	if !within(grew, 64*mib, 0.10) {
		t.Errorf("container working set grew by %.1f MiB, want 64 MiB ±10%%", grew/mib)
	}
	if !within(podGrew, 64*mib, 0.10) {
		t.Errorf("pod working set grew by %.1f MiB, want 64 MiB ±10%%", podGrew/mib)
	}
	if diff := float64(kernel) - float64(after.UsageBytes.Value); diff < -2*mib || diff > 2*mib {
		t.Errorf("usage %d, kernel %d", after.UsageBytes.Value, kernel)
	}
	if after.AvailableBytes != nil {
		t.Errorf("available_bytes %d reported without a memory limit", after.AvailableBytes.Value)
	}
	if m, ok := d.metric(t, pod, "alloc", "container_memory_working_set_bytes"); !ok || !within(float64(m.Value.Value), float64(after.WorkingSetBytes.Value), 0.05) {
		t.Errorf("container_memory_working_set_bytes = %v, stats %d", m, after.WorkingSetBytes.Value)
	}
	if m, ok := d.metric(t, pod, "alloc", "container_spec_memory_limit_bytes"); !ok || m.Value.Value != 0 {
		t.Errorf("container_spec_memory_limit_bytes without a limit = %v, want 0", m)
	}
	d.stopRemove(t, pod)
}

// TestStatsForkBombHeldAtPidsLimit: the CRI has no pids limit for a
// container (the kubelet limits pids per pod, writing the pod cgroup's
// pids.max itself), so, like the kubelet, the test writes pids.max = 20
// into the container's cgroup between CreateContainer and StartContainer.
func TestStatsForkBombHeldAtPidsLimit(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("forkbomb")
	pod := d.runPod(t, cfg)
	// The inner shell forks sleeps until the kernel refuses and dies of
	// it; the outer one starts another at once: the cgroup stays full.
	id := d.createContainer(t, pod, cfg, busyboxContainer("bomb", "sh", "-c",
		"while :; do (while :; do sleep 1000 & done) 2>/dev/null; done"))
	cg := d.containerCgroup(t, pod, id)
	if err := os.WriteFile(cgroupFile("pids", cg, "pids.max"), []byte("20"), 0o644); err != nil {
		t.Fatalf("set pids.max of the container cgroup: %v", err)
	}
	d.startContainer(t, id)

	var counts []uint64
	var maxCount uint64
	for end := time.Now().Add(4 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		st := d.podStats(t, pod)
		if len(st.Linux.Containers) != 1 || st.Linux.Process == nil {
			t.Fatalf("pod stats: %v", st)
		}
		// Container processes are in the pod cgroup too (with the pause).
		n := st.Linux.Process.ProcessCount.Value
		counts = append(counts, n)
		maxCount = max(maxCount, n)
	}
	// pids counts tasks: the pause's threads count too.
	_, v := d.status(t, pod)
	pause := readUintFile(t, cgroupFile("pids", v.Cgroup.PausePath, "pids.current"))
	t.Logf("pod process counts (pause: %d tasks): %v", pause, counts)
	if maxCount != 20+pause {
		t.Errorf("pod process count peaked at %d, want %d (20 for the bomb + %d of the pause)", maxCount, 20+pause, pause)
	}
	kernel := readUintFile(t, cgroupFile("pids", cg, "pids.current"))
	m, ok := d.metric(t, pod, "bomb", "container_processes")
	if !ok || m.Value.Value > 20 || m.Value.Value < 19 || kernel > 20 {
		t.Errorf("container_processes = %v, kernel pids.current = %d; want 20 (19 while a fork is refused)", m, kernel)
	}
	if m, ok := d.metric(t, pod, "bomb", "container_threads_max"); !ok || m.Value.Value != 20 {
		t.Errorf("container_threads_max = %v, want 20", m)
	}
	events, _ := os.ReadFile(cgroupFile("pids", cg, "pids.events"))
	if !strings.Contains(string(events), "max ") || strings.Contains(string(events), "max 0") {
		t.Errorf("pids.events %q: the kernel never refused a fork", events)
	}
	d.stopRemove(t, pod)
}

func TestStatsOOMKillsAreCounted(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("oomstats")
	pod := d.runPod(t, cfg)
	hog := "x=$(head -c 100000000 /dev/zero | tr '\\0' a)"
	// A child hits the limit and is killed; the container lives on.
	c := busyboxContainer("survivor", "sh", "-c", "("+hog+"); echo survived; exec sleep 3600")
	c.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}
	survivor := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, survivor)
	// The init itself is killed: the container exits OOMKilled.
	c = busyboxContainer("victim", "sh", "-c", hog+"; sleep 5")
	c.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}
	victim := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, victim)

	var oom *runtime.Metric
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m, ok := d.metric(t, pod, "survivor", "container_oom_events_total"); ok && m.Value.Value > 0 {
			oom = m
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("container_oom_events_total of the survivor stayed 0 for 30 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Usually one kill: the subshell that holds the string. The kernel
	// may kill twice (a second allocation can fail before the first
	// victim's memory is back), so the count must be the kernel's own
	// for the survivor's cgroup, read after the metric (it only grows).
	survivorCg := d.containerCgroup(t, pod, survivor)
	kernel := kernelOOMKills(t, survivorCg)
	if oom.Value.Value < 1 || oom.Value.Value > kernel {
		t.Errorf("survivor: container_oom_events_total %d; the kernel counted %d OOM kills in its cgroup", oom.Value.Value, kernel)
	}
	if m, _ := d.metric(t, pod, "survivor", "container_oom_events_total"); m == nil || m.Value.Value != kernelOOMKills(t, survivorCg) {
		t.Errorf("survivor: container_oom_events_total %v differs from the kernel's count %d", m, kernelOOMKills(t, survivorCg))
	}
	if st := d.containerStatus(t, survivor); st.State != runtime.ContainerState_CONTAINER_RUNNING {
		t.Errorf("survivor is %v", st.State)
	}
	if st := d.waitExited(t, victim, 30*time.Second); st.Reason != "OOMKilled" {
		t.Errorf("victim: %s", st.Reason)
	}
	// The exited container's cgroup lives until RemoveContainer: its
	// stats and its OOM kill stay readable.
	if m, ok := d.metric(t, pod, "victim", "container_oom_events_total"); !ok || m.Value.Value < 1 {
		t.Errorf("victim container_oom_events_total = %v", m)
	}
	st := d.containerStats(t, survivor)
	limit := uint64(32 << 20)
	if st.Memory == nil || st.Memory.AvailableBytes == nil || st.Memory.AvailableBytes.Value != limit-st.Memory.WorkingSetBytes.Value {
		t.Errorf("memory with a limit: %v", st.Memory)
	}
	if m, ok := d.metric(t, pod, "survivor", "container_spec_memory_limit_bytes"); !ok || m.Value.Value != limit {
		t.Errorf("container_spec_memory_limit_bytes = %v", m)
	}
	d.stopRemove(t, pod)
}

func TestStatsNetwork10MBSent(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("net")
	pod := d.runPod(t, cfg)
	// The pod's gateway is the bridge's address; a server there counts
	// what arrives.
	br, err := net.InterfaceByName(d.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	addrs, _ := br.Addrs()
	var gw net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			gw = n.IP
		}
	}
	if gw == nil {
		t.Fatalf("bridge %s has no IPv4 address: %v", d.Bridge, addrs)
	}
	l, err := net.Listen("tcp4", net.JoinHostPort(gw.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		received <- n
	}()
	before := d.podStats(t, pod).Linux.Network
	if before == nil || before.DefaultInterface == nil || before.DefaultInterface.Name != "eth0" {
		t.Fatalf("network stats of a fresh pod: %v", before)
	}
	for _, i := range before.Interfaces {
		if i.Name == "lo" {
			t.Errorf("loopback reported")
		}
	}
	const size = 10 << 20
	port := l.Addr().(*net.TCPAddr).Port
	id := d.createContainer(t, pod, cfg, busyboxContainer("sender", "sh", "-c",
		fmt.Sprintf("dd if=/dev/zero bs=1M count=10 2>/dev/null | nc %s %d; exec sleep 3600", gw, port)))
	d.startContainer(t, id)
	select {
	case n := <-received:
		if n != size {
			t.Fatalf("server received %d bytes, want %d", n, size)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing received within 30 s")
	}
	time.Sleep(200 * time.Millisecond) // the last ACKs
	after := d.podStats(t, pod).Linux.Network
	tx := after.DefaultInterface.TxBytes.Value - before.DefaultInterface.TxBytes.Value
	rx := after.DefaultInterface.RxBytes.Value - before.DefaultInterface.RxBytes.Value
	t.Logf("eth0: tx +%d bytes, rx +%d bytes for %d bytes of payload sent", tx, rx, size)
	// TCP/IP/Ethernet headers add a few percent.
	if tx < size || tx > size*11/10 {
		t.Errorf("eth0 transmitted %d bytes, want about %d", tx, size)
	}
	if after.DefaultInterface.TxErrors.GetValue() != 0 || after.DefaultInterface.RxErrors.GetValue() != 0 {
		t.Errorf("errors on eth0: %v", after.DefaultInterface)
	}
	m, ok := d.metric(t, pod, "", "container_network_transmit_bytes_total", "eth0")
	if !ok || m.Value.Value < after.DefaultInterface.TxBytes.Value || m.Value.Value > after.DefaultInterface.TxBytes.Value+64<<10 {
		t.Errorf("container_network_transmit_bytes_total{interface=eth0} = %v, stats %d", m, after.DefaultInterface.TxBytes.Value)
	}
	d.stopRemove(t, pod)
}

func TestStatsOfAPodWhoseCgroupIsGoneIsNotFound(t *testing.T) {
	d, _, _ := containerDaemon(t)
	// Stopped: peapod removed the cgroup.
	cfg := podConfig("stopped")
	pod := d.runPod(t, cfg)
	id := d.createContainer(t, pod, cfg, busyboxContainer("s", "sleep", "3600"))
	d.startContainer(t, id)
	if st := d.podStats(t, pod); len(st.Linux.Containers) != 1 || st.Linux.Memory == nil || st.Linux.Cpu == nil || st.Linux.Process == nil {
		t.Fatalf("pod stats: %v", st)
	}
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtime.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.PodSandboxStats(ctxT(t), &runtime.PodSandboxStatsRequest{PodSandboxId: pod}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of a stopped pod: %v, want NotFound", err)
	}
	list, err := d.RT.ListPodSandboxStats(ctxT(t), &runtime.ListPodSandboxStatsRequest{})
	if err != nil || len(list.Stats) != 0 {
		t.Errorf("ListPodSandboxStats lists a stopped pod: %v %v", list, err)
	}

	// Removed behind peapod's back, as a kubelet or an administrator may:
	// the pause is moved out first, so the pod itself stays ready.
	cfg = podConfig("vanished")
	pod = d.runPod(t, cfg)
	_, v := d.status(t, pod)
	if v.Cgroup == nil || v.PID == 0 {
		t.Fatal("no cgroup or pause pid in verbose status")
	}
	for _, mnt := range cgroupMounts(t) {
		_ = os.WriteFile(filepath.Join(mnt, "cgroup.procs"), []byte(strconv.Itoa(v.PID)), 0o644)
		for _, dir := range []string{v.Cgroup.PausePath, v.Cgroup.PodPath} {
			if err := unix.Rmdir(filepath.Join(mnt, dir)); err != nil && err != unix.ENOENT {
				t.Fatalf("rmdir %s: %v", filepath.Join(mnt, dir), err)
			}
		}
	}
	if st, _ := d.status(t, pod); st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod is %v after its cgroup was removed; want still ready", st.State)
	}
	if _, err := d.RT.PodSandboxStats(ctxT(t), &runtime.PodSandboxStatsRequest{PodSandboxId: pod}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of a pod whose cgroup was removed: %v, want NotFound", err)
	} else {
		t.Logf("pod without cgroup: %v", err)
	}
	if list, err := d.RT.ListPodSandboxStats(ctxT(t), &runtime.ListPodSandboxStatsRequest{}); err != nil || len(list.Stats) != 0 {
		t.Errorf("ListPodSandboxStats lists a pod without cgroup: %v %v", list, err)
	}
	if _, err := d.RT.ContainerStats(ctxT(t), &runtime.ContainerStatsRequest{ContainerId: "nosuchcontainer"}); status.Code(err) != codes.NotFound {
		t.Errorf("stats of an unknown container: %v, want NotFound", err)
	}
}

func cgroupMounts(t testing.TB) []string {
	var out []string
	for _, l := range readLines("/proc/self/mountinfo") {
		pre, post, ok := strings.Cut(l, " - ")
		if ok && (strings.HasPrefix(post, "cgroup ") || strings.HasPrefix(post, "cgroup2 ")) {
			out = append(out, strings.Fields(pre)[4])
		}
	}
	return out
}

// TestStatsListPodSandboxStats100Pods measures ListPodSandboxStats,
// ListContainerStats and ListPodSandboxMetrics with 100 pods of one
// container each, and the daemon's CPU use while idle (mostly the
// sampler). The budget is ≤ 50 ms p50 for ListPodSandboxStats.
func TestStatsListPodSandboxStats100Pods(t *testing.T) {
	if testing.Short() {
		t.Skip("100 pods")
	}
	const pods = 100
	d, _, _ := containerDaemon(t)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 6)
	ids := make([]string, pods)
	for i := 0; i < pods; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cfg := podConfig(fmt.Sprintf("many-%d", i))
			ids[i] = d.runPod(t, cfg)
			c := d.createContainer(t, ids[i], cfg, busyboxContainer("sleep", "sleep", "3600"))
			d.startContainer(t, c)
		}(i)
	}
	wg.Wait()
	t.Logf("%d pods with one container each started in %v", pods, time.Since(start).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // let the sampler see them all

	resp, err := d.RT.ListPodSandboxStats(ctxT(t), &runtime.ListPodSandboxStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Stats) != pods {
		t.Fatalf("ListPodSandboxStats returned %d pods, want %d", len(resp.Stats), pods)
	}
	for _, s := range resp.Stats {
		if len(s.Linux.Containers) != 1 || s.Linux.Cpu.GetUsageNanoCores() == nil || s.Linux.Network == nil || s.Linux.Containers[0].WritableLayer == nil {
			t.Fatalf("incomplete pod stats: %v", s)
		}
	}
	measure := func(name string, n int, call func() error) (p50, p95 time.Duration) {
		var ds []time.Duration
		for i := 0; i < n; i++ {
			s := time.Now()
			if err := call(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			ds = append(ds, time.Since(s))
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		p50, p95 = ds[n/2], ds[n*95/100]
		t.Logf("%s with %d pods: p50 %v, p95 %v (n=%d)", name, pods, p50.Round(10*time.Microsecond), p95.Round(10*time.Microsecond), n)
		return p50, p95
	}
	p50, _ := measure("ListPodSandboxStats", 40, func() error {
		_, err := d.RT.ListPodSandboxStats(ctxT(t), &runtime.ListPodSandboxStatsRequest{})
		return err
	})
	measure("ListContainerStats", 40, func() error {
		_, err := d.RT.ListContainerStats(ctxT(t), &runtime.ListContainerStatsRequest{})
		return err
	})
	measure("ListPodSandboxMetrics", 20, func() error {
		_, err := d.RT.ListPodSandboxMetrics(ctxT(t), &runtime.ListPodSandboxMetricsRequest{})
		return err
	})
	if p50 > 50*time.Millisecond {
		t.Errorf("ListPodSandboxStats p50 %v with %d pods, budget 50 ms", p50, pods)
	}

	// Daemon CPU while nobody calls: the background sampler.
	cpu := func() time.Duration {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", d.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		return time.Duration(ut+st) * time.Second / 100 // USER_HZ
	}
	c0, t0 := cpu(), time.Now()
	time.Sleep(10 * time.Second)
	used, elapsed := cpu()-c0, time.Since(t0)
	t.Logf("daemon CPU while idle with %d pods (sampler): %.2f%% of a core", pods, 100*used.Seconds()/elapsed.Seconds())

	// Filters.
	f, err := d.RT.ListPodSandboxStats(ctxT(t), &runtime.ListPodSandboxStatsRequest{Filter: &runtime.PodSandboxStatsFilter{LabelSelector: map[string]string{"app": "many-7"}}})
	if err != nil || len(f.Stats) != 1 || f.Stats[0].Attributes.Id != ids[7] {
		t.Errorf("label filter: %v %v", f, err)
	}
	f, err = d.RT.ListPodSandboxStats(ctxT(t), &runtime.ListPodSandboxStatsRequest{Filter: &runtime.PodSandboxStatsFilter{Id: ids[3]}})
	if err != nil || len(f.Stats) != 1 || f.Stats[0].Attributes.Id != ids[3] {
		t.Errorf("id filter: %v %v", f, err)
	}
	cs, err := d.RT.ListContainerStats(ctxT(t), &runtime.ListContainerStatsRequest{Filter: &runtime.ContainerStatsFilter{PodSandboxId: ids[5]}})
	if err != nil || len(cs.Stats) != 1 || !slices.Contains([]string{"sleep"}, cs.Stats[0].Attributes.Metadata.Name) {
		t.Errorf("container stats of pod 5: %v %v", cs, err)
	}
	for _, id := range ids {
		d.stopRemove(t, id)
	}
}
