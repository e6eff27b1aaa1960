package cgroups

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
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
	resetStatsCache()
	t.Cleanup(func() { v1Roots, hostMode = oldRoots, oldMode; resetStatsCache() })
	return base
}

func fakeV2(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	fakeUnifiedRoot(t, root)
	resetStatsCache()
	t.Cleanup(resetStatsCache)
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
	resetStatsCache()
	t.Cleanup(resetStatsCache)
	parent := testDefaultParent(t, mnts)
	p, err := CreatePodCgroup("", parent, newSandboxID())
	if err != nil {
		t.Fatal(err)
	}
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
	_ = busy.Process.Kill()
	_, _ = busy.Process.Wait()
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStats(p.PodPath); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed: %v", err)
	}
}
