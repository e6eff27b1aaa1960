package cgroups

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// fakeV1 makes this package read a v1 layout whose hierarchies are the
// given directories under a temp dir.
func fakeV1(t *testing.T, controllers ...string) string {
	t.Helper()
	base := t.TempDir()
	roots := map[string]string{}
	for _, c := range controllers {
		roots[c] = filepath.Join(base, c)
		if err := os.MkdirAll(roots[c], 0o755); err != nil {
			t.Fatal(err)
		}
	}
	oldRoots, oldMode := v1Roots, hostMode
	v1Roots = func() (map[string]string, error) { return roots, nil }
	hostMode = func() Mode { return ModeV1 }
	t.Cleanup(func() { v1Roots, hostMode = oldRoots, oldMode })
	return base
}

func fakeV2(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	fakeUnifiedRoot(t, root)
	return root
}

const v1MemoryStat = `cache 4096
rss 8192
total_cache 104857600
total_rss 73400320
total_shmem 0
total_mapped_file 1048576
total_pgfault 12345
total_pgmajfault 67
total_inactive_anon 0
total_active_anon 73400320
total_inactive_file 31457280
total_active_file 73400320
hierarchical_memory_limit 268435456
`

func TestReadStatsV1(t *testing.T) {
	base := fakeV1(t, "cpu", "cpuacct", "memory", "pids", "devices")
	const cg = "/kubepods/pod1/c1"
	writeTree(t, base, map[string]string{
		"cpuacct" + cg + "/cpuacct.usage":            "5000000123\n",
		"memory" + cg + "/memory.usage_in_bytes":     "178257920\n",
		"memory" + cg + "/memory.stat":               v1MemoryStat,
		"memory" + cg + "/memory.limit_in_bytes":     "268435456\n",
		"memory" + cg + "/memory.oom_control":        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		"pids" + cg + "/pids.current":                "7\n",
		"pids" + cg + "/pids.max":                    "20\n",
		"devices" + cg + "/devices.list":             "a *:* rwm\n",
		"cpu" + cg + "/cpu.shares":                   "1024\n",
		"memory/kubepods/pod1/memory.usage_in_bytes": "1\n",
	})
	st, err := ReadStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != ModeV1 || st.CPU == nil || st.CPU.UsageNanos != 5000000123 {
		t.Fatalf("cpu: %+v %+v", st, st.CPU)
	}
	m := st.Memory
	if m == nil {
		t.Fatal("memory absent")
	}
	if m.Usage != 178257920 || m.WorkingSet != 178257920-31457280 || m.RSS != 73400320 || m.Cache != 104857600 ||
		m.PageFaults != 12345 || m.MajorPageFaults != 67 {
		t.Errorf("memory: %+v", m)
	}
	if m.Limit == nil || *m.Limit != 268435456 || m.Available == nil || *m.Available != 268435456-m.WorkingSet {
		t.Errorf("limit/available: %v %v", m.Limit, m.Available)
	}
	if m.OOMKills == nil || *m.OOMKills != 2 {
		t.Errorf("oom kills: %v", m.OOMKills)
	}
	if st.Pids == nil || st.Pids.Current != 7 || st.Pids.Limit == nil || *st.Pids.Limit != 20 {
		t.Errorf("pids: %+v", st.Pids)
	}
	if n, ok, err := ReadCPUUsage(cg); err != nil || !ok || n != 5000000123 {
		t.Errorf("ReadCPUUsage = %d %v %v", n, ok, err)
	}
}

func TestReadStatsV1UnlimitedAndOldKernel(t *testing.T) {
	base := fakeV1(t, "cpuacct", "memory", "pids")
	const cg = "/p"
	writeTree(t, base, map[string]string{
		"cpuacct" + cg + "/cpuacct.usage":        "0\n",
		"memory" + cg + "/memory.usage_in_bytes": "4096\n",
		// Inactive file above usage (stats are per-cpu batched): clamp.
		"memory" + cg + "/memory.stat":           "total_inactive_file 8192\n",
		"memory" + cg + "/memory.limit_in_bytes": "9223372036854771712\n",
		// Kernels before 4.13 have no oom_kill line.
		"memory" + cg + "/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n",
		"pids" + cg + "/pids.current":         "1\n",
		"pids" + cg + "/pids.max":             "max\n",
	})
	st, err := ReadStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	m := st.Memory
	if m.WorkingSet != 0 || m.Limit != nil || m.Available != nil || m.OOMKills != nil {
		t.Errorf("memory: ws %d limit %v avail %v oom %v", m.WorkingSet, m.Limit, m.Available, m.OOMKills)
	}
	if st.Pids.Limit != nil {
		t.Errorf("pids.max=max reported as limit %d", *st.Pids.Limit)
	}
	if st.CPU == nil || st.CPU.UsageNanos != 0 {
		t.Errorf("zero CPU must be reported as zero, not absent: %+v", st.CPU)
	}
}

func TestReadStatsV1MissingControllerIsAbsentNotZero(t *testing.T) {
	// No pids hierarchy mounted, memory mounted but its files unreadable.
	base := fakeV1(t, "cpuacct", "memory")
	const cg = "/p"
	writeTree(t, base, map[string]string{
		"cpuacct" + cg + "/cpuacct.usage": "42\n",
	})
	if err := os.MkdirAll(filepath.Join(base, "memory", cg), 0o755); err != nil {
		t.Fatal(err)
	}
	st, err := ReadStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Pids != nil || st.Memory != nil {
		t.Errorf("unavailable controllers reported: pids %+v memory %+v", st.Pids, st.Memory)
	}
	if st.CPU == nil || st.CPU.UsageNanos != 42 {
		t.Errorf("cpu: %+v", st.CPU)
	}
	avail := Availability()
	if avail["pids"] || !avail["memory"] || !avail["cpuacct"] {
		t.Errorf("Availability = %v", avail)
	}
	if un := Unavailable(); !strings.Contains(strings.Join(un, ","), "pids") {
		t.Errorf("Unavailable = %v", un)
	}
}

func TestReadStatsV1GoneIsNotFound(t *testing.T) {
	base := fakeV1(t, "cpuacct", "memory", "pids")
	writeTree(t, base, map[string]string{"cpuacct/other/cpuacct.usage": "1\n"})
	_, err := ReadStats("/gone")
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("ReadStats of a missing cgroup = %v, want ErrNotFound", err)
	}
	if _, _, err := ReadCPUUsage("/gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("ReadCPUUsage of a missing cgroup = %v", err)
	}
	if _, err := ReadStats("relative"); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("relative path: %v", err)
	}
}

const v2MemoryStat = `anon 73400320
file 104857600
kernel 1048576
shmem 0
active_anon 73400320
inactive_anon 0
active_file 73400320
inactive_file 31457280
pgfault 12345
pgmajfault 67
`

func TestReadStatsV2(t *testing.T) {
	root := fakeV2(t)
	const cg = "/kubepods/pod1/c1"
	writeTree(t, root, map[string]string{
		cg + "/cpu.stat":       "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\n",
		cg + "/memory.current": "178257920\n",
		cg + "/memory.stat":    v2MemoryStat,
		cg + "/memory.max":     "268435456\n",
		cg + "/memory.events":  "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
		cg + "/pids.current":   "20\n",
		cg + "/pids.max":       "20\n",
	})
	st, err := ReadStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != ModeV2 || st.CPU == nil || st.CPU.UsageNanos != 5e9 {
		t.Fatalf("cpu: %+v", st.CPU)
	}
	m := st.Memory
	if m == nil || m.Usage != 178257920 || m.WorkingSet != 178257920-31457280 || m.RSS != 73400320 ||
		m.Cache != 104857600 || m.PageFaults != 12345 || m.MajorPageFaults != 67 {
		t.Fatalf("memory: %+v", m)
	}
	if m.Limit == nil || *m.Limit != 268435456 || *m.Available != 268435456-m.WorkingSet || m.OOMKills == nil || *m.OOMKills != 1 {
		t.Errorf("limit %v available %v oom %v", m.Limit, m.Available, m.OOMKills)
	}
	if st.Pids == nil || st.Pids.Current != 20 || *st.Pids.Limit != 20 {
		t.Errorf("pids: %+v", st.Pids)
	}
	if n, ok, err := ReadCPUUsage(cg); err != nil || !ok || n != 5e9 {
		t.Errorf("ReadCPUUsage = %d %v %v", n, ok, err)
	}
}

func TestReadStatsV2UndelegatedControllersAreAbsent(t *testing.T) {
	root := fakeV2(t)
	const cg = "/p"
	// memory and pids not enabled in the parent's subtree_control: the
	// cgroup has only the core files.
	writeTree(t, root, map[string]string{
		"cgroup.controllers": "cpuset cpu io\n",
		cg + "/cpu.stat":     "usage_usec 0\n",
		cg + "/memory.max":   "max\n", // stray file: memory.current decides
	})
	st, err := ReadStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Memory != nil || st.Pids != nil {
		t.Errorf("undelegated controllers reported: memory %+v pids %+v", st.Memory, st.Pids)
	}
	if st.CPU == nil || st.CPU.UsageNanos != 0 {
		t.Errorf("cpu: %+v", st.CPU)
	}
	a := Availability()
	if a["memory"] || a["pids"] || !a["cpu"] {
		t.Errorf("Availability = %v", a)
	}
	// Unlimited memory.max with memory delegated.
	writeTree(t, root, map[string]string{
		cg + "/memory.current": "100\n",
		cg + "/memory.stat":    "inactive_file 10\n",
	})
	st, err = ReadStats(cg)
	if err != nil || st.Memory == nil || st.Memory.Limit != nil || st.Memory.Available != nil || st.Memory.WorkingSet != 90 || st.Memory.OOMKills != nil {
		t.Errorf("unlimited: %+v %v", st, err)
	}
	if _, err := ReadStats("/gone"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing v2 cgroup: %v", err)
	}
}

// TestReadStatsRealV1 checks the values against the kernel's files for a
// real cgroup with a busy process, on this v1 host.
func TestReadStatsRealV1(t *testing.T) {
	requireRoot(t)
	if DetectMode() != ModeV1 {
		t.Skip("v1 host only")
	}
	mnts := mountedHierarchies(t)
	parent := testDefaultParent(t, mnts)
	id := newSandboxID()
	p, err := CreatePodCgroup("", parent, id)
	if err != nil {
		t.Fatal(err)
	}
	s := startBusy(t)
	if err := p.AddPause(s.Process.Pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	st, err := ReadStats(p.PodPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPU == nil || st.CPU.UsageNanos < uint64(200*time.Millisecond) {
		t.Errorf("busy loop for 0.5 s accounted %+v", st.CPU)
	}
	if st.Memory == nil || st.Memory.Usage == 0 || st.Memory.WorkingSet > st.Memory.Usage {
		t.Errorf("memory: %+v", st.Memory)
	}
	if st.Pids == nil || st.Pids.Current != 1 || st.Pids.Limit != nil {
		t.Errorf("pids: %+v", st.Pids)
	}
	kernel, _ := os.ReadFile(filepath.Join("/sys/fs/cgroup/pids", p.PodPath, "pids.current"))
	if strings.TrimSpace(string(kernel)) != strconv.FormatUint(st.Pids.Current, 10) {
		t.Errorf("pids.current %q, stats %d", kernel, st.Pids.Current)
	}
	_ = s.Process.Kill()
	_, _ = s.Process.Wait()
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStats(p.PodPath); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed pod cgroup: %v, want ErrNotFound", err)
	}
}

func startBusy(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sh", "-c", "while :; do :; done")
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	return cmd
}

func BenchmarkReadStatsV1(b *testing.B) {
	if os.Geteuid() != 0 || DetectMode() != ModeV1 {
		b.Skip("root on a v1 host")
	}
	cg := os.Getenv("PEAPOD_STATS_BENCH_CGROUP") // default: the root
	if cg == "" {
		cg = "/"
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ReadStats(cg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestReadStatsRealCgroup2WithoutControllers runs the v2 code on the
// hybrid layout's cgroup2 mount: a real kernel cgroup2 where the memory
// and pids controllers are bound to v1. CPU time (a core file) is read;
// memory and pids are reported absent, not zero.
func TestReadStatsRealCgroup2WithoutControllers(t *testing.T) {
	mnts := useHybridCgroup2AsV2(t)
	p := newTestPodCgroup(t, mnts)
	fd, err := p.PauseCgroupFD()
	if err != nil {
		t.Fatal(err)
	}
	busy := exec.Command("sh", "-c", "while :; do :; done")
	busy.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	syscall.Close(fd)
	t.Cleanup(func() { _ = busy.Process.Kill(); _, _ = busy.Process.Wait() })
	time.Sleep(300 * time.Millisecond)
	st, err := ReadStats(p.PodPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode != ModeV2 || st.CPU == nil || st.CPU.UsageNanos < uint64(100*time.Millisecond) {
		t.Errorf("cpu on cgroup2: %+v", st.CPU)
	}
	if st.Memory != nil || st.Pids != nil {
		t.Errorf("controllers this cgroup2 does not have are reported: memory %+v pids %+v", st.Memory, st.Pids)
	}
	// The detail: cpu.stat's split is a core file; cpu.max and io.stat
	// need controllers; PSI files exist when the kernel has PSI.
	st, err = ReadDetailedStats(p.PodPath)
	if err != nil {
		t.Fatal(err)
	}
	if c := st.CPU; c == nil || c.UserNanos == nil || c.SystemNanos == nil || *c.UserNanos+*c.SystemNanos > c.UsageNanos+uint64(10*time.Millisecond) {
		t.Errorf("cpu split on cgroup2: %+v", c)
	}
	if st.CPUControl != nil || st.IO != nil || st.Memory != nil {
		t.Errorf("controllers this cgroup2 does not have are reported: %+v", st)
	}
	// hugetlb is there when v1 does not bind it (as on this host).
	ctrls, _ := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	if hasHugetlb := slices.Contains(strings.Fields(string(ctrls)), "hugetlb") && len(hugePageSizes()) > 0; hasHugetlb != (len(st.Hugetlb) > 0) {
		t.Errorf("hugetlb controller %v, stats %+v", hasHugetlb, st.Hugetlb)
	}
	if exists(filepath.Join("/sys/fs/cgroup/unified", p.PodPath, "cpu.pressure")) {
		if st.Pressure == nil || st.Pressure.CPU == nil {
			t.Errorf("cpu.pressure not read: %+v", st.Pressure)
		}
	}
	ps, err := ReadProcessStats(p.PausePath, busy.Process.Pid, true)
	if err != nil || ps.Processes != 1 || ps.Threads == nil || *ps.Threads != 1 || ps.MaxOpenFiles == nil {
		t.Errorf("processes on cgroup2: %+v %v", ps, err)
	}
	_ = busy.Process.Kill()
	_, _ = busy.Process.Wait()
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStats(p.PodPath); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed: %v", err)
	}
}

// fakeHugePages makes the hugetlb readers see these page sizes.
func fakeHugePages(t *testing.T, sizes ...string) {
	old := hugePageSizes
	hugePageSizes = func() []string { return sizes }
	t.Cleanup(func() { hugePageSizes = old })
}

// fakeSysDevBlock names block devices "major:minor" -> DEVNAME.
func fakeSysDevBlock(t *testing.T, names map[string]string) {
	dir := t.TempDir()
	for num, name := range names {
		writeTree(t, dir, map[string]string{num + "/uevent": "MAJOR=x\nMINOR=y\nDEVNAME=" + name + "\nDEVTYPE=disk\n"})
	}
	old := sysDevBlock
	sysDevBlock = dir
	devNames.Clear()
	t.Cleanup(func() { sysDevBlock = old; devNames.Clear() })
}

const v1MemoryStatDetail = v1MemoryStat + `pgfault 100
pgmajfault 3
mapped_file 4096
total_swap 8192
`

func TestReadDetailedStatsV1(t *testing.T) {
	base := fakeV1(t, "cpu", "cpuacct", "memory", "pids", "blkio", "hugetlb")
	fakeHugePages(t, "2MB", "1GB")
	fakeSysDevBlock(t, map[string]string{"254:0": "vda"})
	const cg = "/kubepods/pod1/c1"
	writeTree(t, base, map[string]string{
		"cpuacct" + cg + "/cpuacct.usage":                 "5000000123\n",
		"cpuacct" + cg + "/cpuacct.stat":                  "user 300\nsystem 150\n",
		"cpu" + cg + "/cpu.shares":                        "512\n",
		"cpu" + cg + "/cpu.cfs_period_us":                 "100000\n",
		"cpu" + cg + "/cpu.cfs_quota_us":                  "20000\n",
		"cpu" + cg + "/cpu.stat":                          "nr_periods 40\nnr_throttled 7\nthrottled_time 1500000000\nnr_bursts 0\nburst_time 0\n",
		"memory" + cg + "/memory.usage_in_bytes":          "178257920\n",
		"memory" + cg + "/memory.stat":                    v1MemoryStatDetail,
		"memory" + cg + "/memory.limit_in_bytes":          "268435456\n",
		"memory" + cg + "/memory.oom_control":             "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
		"memory" + cg + "/memory.failcnt":                 "9\n",
		"memory" + cg + "/memory.max_usage_in_bytes":      "200000000\n",
		"memory" + cg + "/memory.kmem.usage_in_bytes":     "1234567\n",
		"memory" + cg + "/memory.memsw.usage_in_bytes":    "999999999\n", // total_swap wins
		"memory" + cg + "/memory.memsw.limit_in_bytes":    "536870912\n",
		"memory" + cg + "/memory.soft_limit_in_bytes":     "9223372036854771712\n",
		"pids" + cg + "/pids.current":                     "7\n",
		"pids" + cg + "/pids.max":                         "max\n",
		"blkio" + cg + "/blkio.throttle.io_service_bytes": "wrong: the recursive file is read\n",
		"blkio" + cg + "/blkio.throttle.io_service_bytes_recursive": "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 8192\n254:0 Async 4096\n254:0 Discard 0\n254:0 Total 12288\n" +
			"7:3 Read 512\n7:3 Write 0\n7:3 Sync 0\n7:3 Async 512\n7:3 Discard 0\n7:3 Total 512\nTotal 12800\n",
		"blkio" + cg + "/blkio.throttle.io_serviced_recursive": "254:0 Read 1\n254:0 Write 2\n254:0 Sync 2\n254:0 Async 1\n254:0 Discard 0\n254:0 Total 3\nTotal 3\n",
		"hugetlb" + cg + "/hugetlb.2MB.usage_in_bytes":         "4194304\n",
		"hugetlb" + cg + "/hugetlb.2MB.max_usage_in_bytes":     "8388608\n",
		// 1GB: no files (an older kernel's page size list)
	})

	plain, err := ReadStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if plain.CPUControl != nil || plain.IO != nil || plain.Hugetlb != nil || plain.Pressure != nil || plain.CPU.UserNanos != nil ||
		plain.Memory.Failcnt != nil || plain.Memory.SwapLimit != nil || plain.Memory.LocalPageFaults != nil {
		t.Errorf("ReadStats reads detail: %+v %+v %+v", plain, plain.CPU, plain.Memory)
	}

	st, err := ReadDetailedStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if c := st.CPU; c == nil || c.UsageNanos != 5000000123 || c.UserNanos == nil || *c.UserNanos != 3e9 || *c.SystemNanos != 1.5e9 {
		t.Errorf("cpu: %+v", c)
	}
	cc := st.CPUControl
	if cc == nil || cc.Shares != 512 || cc.Period != 100000 || cc.Quota == nil || *cc.Quota != 20000 ||
		cc.Throttling == nil || *cc.Throttling != (CPUThrottling{Periods: 40, ThrottledPeriods: 7, ThrottledNanos: 1.5e9}) {
		t.Errorf("cpu control: %+v %+v", cc, cc.Throttling)
	}
	m := st.Memory
	// The base fields are what ReadStats gives.
	if m.Usage != plain.Memory.Usage || m.WorkingSet != plain.Memory.WorkingSet || m.PageFaults != 12345 || *m.OOMKills != 2 {
		t.Errorf("memory base: %+v", m)
	}
	for name, c := range map[string]struct {
		got  *uint64
		want uint64
	}{
		"local pgfault": {m.LocalPageFaults, 100}, "local pgmajfault": {m.LocalMajorPageFaults, 3},
		"failcnt": {m.Failcnt, 9}, "max usage": {m.MaxUsage, 200000000}, "kernel": {m.KernelUsage, 1234567},
		"mapped file": {m.MappedFile, 1048576}, "swap": {m.Swap, 8192},
		"swap limit": {m.SwapLimit, 536870912}, "reservation (unlimited)": {m.Reservation, 0},
	} {
		if c.got == nil || *c.got != c.want {
			t.Errorf("memory %s = %v, want %d", name, c.got, c.want)
		}
	}
	if st.Pids == nil || st.Pids.Current != 7 {
		t.Errorf("pids: %+v", st.Pids)
	}
	wantIO := []IODevice{
		{Major: 254, Minor: 0, Name: "/dev/vda", Ops: []IOOp{{"Read", 4096, 1}, {"Write", 8192, 2}, {"Sync", 8192, 2}, {"Async", 4096, 1}, {"Discard", 0, 0}, {"Total", 12288, 3}}},
		{Major: 7, Minor: 3, Name: "7:3", Ops: []IOOp{{"Read", 512, 0}, {"Write", 0, 0}, {"Sync", 0, 0}, {"Async", 512, 0}, {"Discard", 0, 0}, {"Total", 512, 0}}},
	}
	if st.IO == nil || !reflect.DeepEqual(st.IO.Devices, wantIO) {
		t.Errorf("io:\n got %+v\nwant %+v", st.IO, wantIO)
	}
	if len(st.Hugetlb) != 1 || st.Hugetlb[0].PageSize != "2MB" || st.Hugetlb[0].Usage != 4194304 || *st.Hugetlb[0].MaxUsage != 8388608 {
		t.Errorf("hugetlb: %+v", st.Hugetlb)
	}
	if st.Pressure != nil {
		t.Errorf("pressure on v1: %+v", st.Pressure)
	}
}

func TestReadDetailedStatsV1Defaults(t *testing.T) {
	// No quota, no swap accounting, no I/O, no blkio and hugetlb mounted.
	base := fakeV1(t, "cpu", "cpuacct", "memory", "blkio")
	const cg = "/p"
	writeTree(t, base, map[string]string{
		"cpuacct" + cg + "/cpuacct.usage":                           "1\n",
		"cpu" + cg + "/cpu.shares":                                  "2\n",
		"cpu" + cg + "/cpu.cfs_period_us":                           "100000\n",
		"cpu" + cg + "/cpu.cfs_quota_us":                            "-1\n",
		"cpu" + cg + "/cpu.stat":                                    "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
		"memory" + cg + "/memory.usage_in_bytes":                    "4096\n",
		"memory" + cg + "/memory.stat":                              "total_rss 4096\n",
		"memory" + cg + "/memory.limit_in_bytes":                    "9223372036854771712\n",
		"memory" + cg + "/memory.soft_limit_in_bytes":               "9223372036854771712\n",
		"blkio" + cg + "/blkio.throttle.io_service_bytes_recursive": "Total 0\n",
		"blkio" + cg + "/blkio.throttle.io_serviced_recursive":      "Total 0\n",
	})
	st, err := ReadDetailedStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPU.UserNanos != nil {
		t.Errorf("cpuacct.stat missing, split reported: %+v", st.CPU)
	}
	if cc := st.CPUControl; cc == nil || cc.Shares != 2 || cc.Period != 100000 || cc.Quota != nil || cc.Throttling != nil {
		t.Errorf("cpu control without quota: %+v", cc)
	}
	m := st.Memory
	if m.Swap != nil || m.Failcnt != nil || m.MaxUsage != nil || m.KernelUsage != nil || m.MappedFile != nil || m.LocalPageFaults != nil {
		t.Errorf("unreported memory detail reported: %+v", m)
	}
	// Limits as cAdvisor's spec has them: 0 when unlimited or not limitable.
	if m.SwapLimit == nil || *m.SwapLimit != 0 || m.Reservation == nil || *m.Reservation != 0 {
		t.Errorf("limits: swap %v reservation %v", m.SwapLimit, m.Reservation)
	}
	if st.IO == nil || len(st.IO.Devices) != 0 {
		t.Errorf("no I/O accounted: %+v", st.IO)
	}
	if st.Hugetlb != nil {
		t.Errorf("hugetlb not mounted: %+v", st.Hugetlb)
	}
	if _, err := ReadDetailedStats("/gone"); !errors.Is(err, ErrNotFound) {
		t.Errorf("gone: %v", err)
	}
}

func TestReadDetailedStatsV2(t *testing.T) {
	root := fakeV2(t)
	fakeHugePages(t, "2MB")
	fakeSysDevBlock(t, map[string]string{"8:0": "sda"})
	const cg = "/kubepods/pod1/c1"
	writeTree(t, root, map[string]string{
		cg + "/cpu.stat": "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\n" +
			"nr_periods 40\nnr_throttled 7\nthrottled_usec 1500000\nnr_bursts 0\nburst_usec 0\n",
		cg + "/cpu.max":             "20000 100000\n",
		cg + "/cpu.weight":          "100\n",
		cg + "/memory.current":      "178257920\n",
		cg + "/memory.stat":         v2MemoryStat + "file_mapped 1048576\n",
		cg + "/memory.max":          "268435456\n",
		cg + "/memory.events":       "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
		cg + "/memory.peak":         "200000000\n",
		cg + "/memory.swap.current": "8192\n",
		cg + "/memory.swap.max":     "max\n",
		cg + "/memory.min":          "33554432\n",
		cg + "/pids.current":        "20\n",
		cg + "/pids.max":            "20\n",
		cg + "/io.stat":             "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
		cg + "/hugetlb.2MB.current": "2097152\n",
		cg + "/hugetlb.2MB.max":     "max\n",
		cg + "/cpu.pressure":        "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1200000\n",
		cg + "/memory.pressure":     "some avg10=0.00 avg60=0.00 avg300=0.00 total=10\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=5\n",
		// Kernels before 5.13 have no full line for cpu; io: none at all.
	})
	st, err := ReadDetailedStats(cg)
	if err != nil {
		t.Fatal(err)
	}
	if c := st.CPU; c.UsageNanos != 5e9 || c.UserNanos == nil || *c.UserNanos != 4e9 || *c.SystemNanos != 1e9 {
		t.Errorf("cpu: %+v", c)
	}
	cc := st.CPUControl
	// cpu.weight 100 is cpu.shares 1024 in the kubelet's conversion;
	// cAdvisor's inverse gives 2597.
	if cc == nil || cc.Period != 100000 || cc.Quota == nil || *cc.Quota != 20000 || cc.Shares != 2597 ||
		cc.Throttling == nil || *cc.Throttling != (CPUThrottling{Periods: 40, ThrottledPeriods: 7, ThrottledNanos: 1.5e9}) {
		t.Errorf("cpu control: %+v", cc)
	}
	m := st.Memory
	for name, c := range map[string]struct {
		got  *uint64
		want uint64
	}{
		"local pgfault (hierarchical on v2)": {m.LocalPageFaults, 12345}, "local pgmajfault": {m.LocalMajorPageFaults, 67},
		"failcnt (events max)": {m.Failcnt, 5}, "max usage (peak)": {m.MaxUsage, 200000000}, "kernel": {m.KernelUsage, 1048576},
		"mapped file": {m.MappedFile, 1048576}, "swap": {m.Swap, 8192},
		"swap limit (max)": {m.SwapLimit, 0}, "reservation (min)": {m.Reservation, 33554432},
	} {
		if c.got == nil || *c.got != c.want {
			t.Errorf("memory %s = %v, want %d", name, c.got, c.want)
		}
	}
	wantIO := []IODevice{{Major: 8, Minor: 0, Name: "/dev/sda", Ops: []IOOp{{"Read", 4096, 1}, {"Write", 8192, 2}, {"Discard", 0, 0}}}}
	if st.IO == nil || !reflect.DeepEqual(st.IO.Devices, wantIO) {
		t.Errorf("io: %+v", st.IO)
	}
	if len(st.Hugetlb) != 1 || st.Hugetlb[0].Usage != 2097152 || st.Hugetlb[0].MaxUsage != nil {
		t.Errorf("hugetlb (v2 keeps no peak): %+v", st.Hugetlb)
	}
	p := st.Pressure
	if p == nil || p.CPU == nil || p.CPU.SomeMicros != 2500000 || p.CPU.FullMicros == nil || *p.CPU.FullMicros != 1200000 ||
		p.Memory == nil || p.Memory.SomeMicros != 10 || *p.Memory.FullMicros != 5 || p.IO != nil {
		t.Errorf("pressure: %+v", p)
	}

	// A cgroup without the cpu, io and memory.peak/swap files (controllers
	// not delegated, an older kernel): absent, not zero.
	const bare = "/bare"
	writeTree(t, root, map[string]string{
		bare + "/cpu.stat":       "usage_usec 1\nuser_usec 1\nsystem_usec 0\n",
		bare + "/memory.current": "100\n",
		bare + "/memory.stat":    "inactive_file 10\nslab 7\nkernel_stack 3\npagetables 1\n",
		bare + "/memory.max":     "max\n",
	})
	st, err = ReadDetailedStats(bare)
	if err != nil {
		t.Fatal(err)
	}
	if st.CPUControl != nil || st.IO != nil || st.Pressure != nil || st.Hugetlb != nil {
		t.Errorf("absent sections reported: %+v", st)
	}
	m = st.Memory
	if m.KernelUsage == nil || *m.KernelUsage != 11 || m.MaxUsage != nil || m.Swap != nil || m.Failcnt != nil || m.MappedFile != nil {
		t.Errorf("bare memory detail: %+v", m)
	}
	if *m.SwapLimit != 0 || *m.Reservation != 0 {
		t.Errorf("bare limits: %d %d", *m.SwapLimit, *m.Reservation)
	}
}

func TestParsePSI(t *testing.T) {
	for in, want := range map[string]*PSIStats{
		"some avg10=1.00 avg60=0.50 avg300=0.10 total=42\n":                            {SomeMicros: 42},
		"some avg10=0 avg60=0 avg300=0 total=1\nfull avg10=0 avg60=0 avg300=0 total=2": {SomeMicros: 1, FullMicros: ptr(2)},
		"full avg10=0 avg60=0 avg300=0 total=2\n":                                      nil,
		"":                       nil,
		"some avg10=0 total=x\n": nil,
	} {
		if got := parsePSI([]byte(in)); !reflect.DeepEqual(got, want) {
			t.Errorf("parsePSI(%q) = %+v, want %+v", in, got, want)
		}
	}
}

func TestSoftLimitAndThreads(t *testing.T) {
	limits := "Limit                     Soft Limit           Hard Limit           Units     \n" +
		"Max cpu time              unlimited            unlimited            seconds   \n" +
		"Max open files            1024                 524288               files     \n" +
		"Max locked memory         unlimited            unlimited            bytes     \n"
	if v := softLimit([]byte(limits), "Max open files"); v == nil || *v != 1024 {
		t.Errorf("max open files = %v", v)
	}
	if v := softLimit([]byte(limits), "Max locked memory"); v != nil {
		t.Errorf("unlimited = %d", *v)
	}
	if v := softLimit([]byte(limits), "Max processes"); v != nil {
		t.Errorf("missing row = %d", *v)
	}
	if n := statusThreads([]byte("Name:\tsh\nState:\tS (sleeping)\nThreads:\t12\nSigQ:\t0/1\n")); n != 12 {
		t.Errorf("threads = %d", n)
	}
}

// TestReadProcessStats counts this test process's descriptors and sockets
// through a fake cgroup listing it.
func TestReadProcessStats(t *testing.T) {
	base := fakeV1(t, "cpuacct", "pids", "name=systemd")
	const cg = "/p"
	self := os.Getpid()
	child := exec.Command("sleep", "60")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _, _ = child.Process.Wait() })
	writeTree(t, base, map[string]string{
		"pids" + cg + "/cgroup.procs":    strconv.Itoa(self) + "\n" + strconv.Itoa(child.Process.Pid) + "\n999999999\n",
		"cpuacct" + cg + "/cgroup.procs": "wrong hierarchy\n",
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	countFDs := func(pid int) (fds, sockets uint64) {
		ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			fds++
			if l, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/fd/" + e.Name()); strings.HasPrefix(l, "socket:") {
				sockets++
			}
		}
		return fds, sockets
	}
	ps, err := ReadProcessStats(cg, self, true)
	if err != nil {
		t.Fatal(err)
	}
	selfFDs, selfSockets := countFDs(self)
	childFDs, _ := countFDs(child.Process.Pid)
	// The 999999999 pid does not exist: listed, nothing to count.
	if ps.Processes != 3 {
		t.Errorf("processes = %d", ps.Processes)
	}
	// ReadProcessStats's own directory descriptor comes and goes.
	if want := selfFDs + childFDs; ps.FDs+1 < want || ps.FDs > want+1 {
		t.Errorf("fds = %d, want %d", ps.FDs, want)
	}
	if ps.Sockets < 1 || ps.Sockets != selfSockets {
		t.Errorf("sockets = %d, want %d (a listener is open)", ps.Sockets, selfSockets)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if ps.MaxOpenFiles == nil || *ps.MaxOpenFiles != lim.Cur {
		t.Errorf("max open files = %v, want %d", ps.MaxOpenFiles, lim.Cur)
	}
	if ps.Threads == nil || *ps.Threads < 2 { // the Go runtime has several, sleep one
		t.Errorf("threads = %v", ps.Threads)
	}
	// Not asked for threads; the root process is not in the cgroup.
	ps, err = ReadProcessStats(cg, 1, false)
	if err != nil || ps.Threads != nil || ps.MaxOpenFiles != nil {
		t.Errorf("without threads, foreign root: %+v %v", ps, err)
	}
	if _, err := ReadProcessStats("/gone", 0, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("gone: %v", err)
	}
}

func readKernelUint(t *testing.T, path string) uint64 {
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

// TestReadDetailedStatsRealV1 holds a busy loop at a tenth of a core with
// a CFS quota and checks the detail against the kernel's files, on this v1
// host.
func TestReadDetailedStatsRealV1(t *testing.T) {
	requireRoot(t)
	if DetectMode() != ModeV1 {
		t.Skip("v1 host only")
	}
	mnts := mountedHierarchies(t)
	p := newTestPodCgroup(t, mnts)
	t.Cleanup(func() { _ = p.Remove() })
	cpuDir := filepath.Join("/sys/fs/cgroup/cpu", p.PodPath)
	memDir := filepath.Join("/sys/fs/cgroup/memory", p.PodPath)
	for file, v := range map[string]string{
		filepath.Join(cpuDir, "cpu.cfs_quota_us"):           "10000",
		filepath.Join(memDir, "memory.limit_in_bytes"):      "268435456",
		filepath.Join(memDir, "memory.soft_limit_in_bytes"): "134217728",
	} {
		if err := os.WriteFile(file, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	hasMemsw := exists(filepath.Join(memDir, "memory.memsw.limit_in_bytes"))
	if hasMemsw {
		if err := os.WriteFile(filepath.Join(memDir, "memory.memsw.limit_in_bytes"), []byte("536870912"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := startBusy(t)
	if err := p.AddPause(s.Process.Pid); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	st, err := ReadDetailedStats(p.PodPath)
	if err != nil {
		t.Fatal(err)
	}
	c := st.CPU
	if c == nil || c.UserNanos == nil || c.SystemNanos == nil {
		t.Fatalf("cpu: %+v", c)
	}
	// cpuacct.stat counts ticks; cpuacct.usage is precise.
	if split := *c.UserNanos + *c.SystemNanos; split > c.UsageNanos+uint64(50*time.Millisecond) || split+uint64(50*time.Millisecond) < c.UsageNanos {
		t.Errorf("user %d + system %d ns, usage %d ns", *c.UserNanos, *c.SystemNanos, c.UsageNanos)
	}
	cc := st.CPUControl
	if cc == nil || cc.Quota == nil || *cc.Quota != 10000 || cc.Period != readKernelUint(t, filepath.Join(cpuDir, "cpu.cfs_period_us")) ||
		cc.Shares != readKernelUint(t, filepath.Join(cpuDir, "cpu.shares")) {
		t.Fatalf("cpu control: %+v", cc)
	}
	// A busy loop at a quota of a tenth of a core is throttled in most
	// periods, even on a loaded host.
	if th := cc.Throttling; th == nil || th.Periods < 3 || th.ThrottledPeriods == 0 || th.ThrottledNanos == 0 || th.ThrottledPeriods > th.Periods {
		t.Errorf("throttling: %+v", cc.Throttling)
	}
	m := st.Memory
	if m == nil || m.MaxUsage == nil || *m.MaxUsage < m.Usage || m.KernelUsage == nil || m.Failcnt == nil || m.MappedFile == nil ||
		m.LocalPageFaults == nil || *m.LocalPageFaults > m.PageFaults {
		t.Fatalf("memory: %+v", m)
	}
	if *m.Reservation != 134217728 {
		t.Errorf("reservation %d", *m.Reservation)
	}
	if hasMemsw && (*m.SwapLimit != 536870912 || m.Swap == nil) {
		t.Errorf("swap %v limit %d", m.Swap, *m.SwapLimit)
	}
	if exists(filepath.Join("/sys/fs/cgroup/blkio", p.PodPath)) && st.IO == nil {
		t.Errorf("blkio mounted, io not read")
	}

	// The pause cgroup holds the busy loop: one single-threaded process
	// with stdin, stdout and stderr.
	ps, err := ReadProcessStats(p.PausePath, s.Process.Pid, true)
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.Process.Pid))
	if ps.Processes != 1 || ps.Threads == nil || *ps.Threads != 1 || ps.FDs != uint64(len(ents)) || ps.Sockets != 0 || ps.MaxOpenFiles == nil {
		t.Errorf("processes: %+v (fd entries %d)", ps, len(ents))
	}
	if ps, err := ReadProcessStats(p.PodPath, s.Process.Pid, false); err != nil || ps.Processes != 0 || ps.MaxOpenFiles != nil {
		t.Errorf("the pod cgroup itself has no processes: %+v %v", ps, err)
	}
}
