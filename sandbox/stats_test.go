package sandbox

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"peapod/cgroups"
)

func TestCPURateUsesAnOldEnoughSample(t *testing.T) {
	s := &statsSampler{cpu: map[string]*cpuHistory{}}
	t0 := time.Now()
	h := &cpuHistory{}
	s.cpu["/p"] = h
	// Samples 2 s, 1 s and 0.1 s before the reading; 1 core busy.
	for _, ago := range []time.Duration{2 * time.Second, time.Second, 100 * time.Millisecond} {
		at := t0.Add(-ago)
		h.add(cpuSample{at: at, usage: uint64(10*time.Second - ago)})
	}
	// The 0.1 s sample is too recent: the 1 s one is used.
	if r := s.rate("/p", t0, uint64(10*time.Second), time.Time{}); r < 0.99e9 || r > 1.01e9 {
		t.Errorf("rate = %d, want 1e9", r)
	}
	// A sample newer than the reading (taken concurrently) is skipped.
	h.add(cpuSample{at: t0.Add(time.Millisecond), usage: uint64(10 * time.Second)})
	if r := s.rate("/p", t0, uint64(10*time.Second), time.Time{}); r < 0.99e9 || r > 1.01e9 {
		t.Errorf("with a later sample: rate = %d, want 1e9", r)
	}
	// A recreated cgroup (usage went down): no usable sample, so the
	// average since start is reported.
	start := t0.Add(-4 * time.Second)
	if r := s.rate("/p", t0, uint64(2*time.Second), start); r < 0.49e9 || r > 0.51e9 {
		t.Errorf("recreated: rate = %d, want 0.5e9 (average since start)", r)
	}
	// Unknown cgroup, idle: zero, not absent.
	if r := s.rate("/new", t0, 0, start); r != 0 {
		t.Errorf("idle new cgroup: %d", r)
	}
	// Only recent samples: the oldest one still gives a rate.
	s.cpu["/young"] = &cpuHistory{}
	s.cpu["/young"].add(cpuSample{at: t0.Add(-200 * time.Millisecond), usage: 0})
	if r := s.rate("/young", t0, uint64(100*time.Millisecond), time.Time{}); r < 0.49e9 || r > 0.51e9 {
		t.Errorf("young: rate = %d, want 0.5e9", r)
	}
}

func TestContainerFilterAndParallel(t *testing.T) {
	st := ContainerRunning
	r := &Container{SandboxID: "abcdef", State: ContainerRunning, Config: ContainerConfig{Labels: map[string]string{"app": "x"}}}
	for _, tc := range []struct {
		f    ContainerFilter
		want bool
	}{
		{ContainerFilter{}, true},
		{ContainerFilter{ID: "12"}, true},
		{ContainerFilter{ID: "13"}, false},
		{ContainerFilter{SandboxID: "abc"}, true},
		{ContainerFilter{SandboxID: "abd"}, false},
		{ContainerFilter{State: &st, Selector: map[string]string{"app": "x"}}, true},
		{ContainerFilter{Selector: map[string]string{"app": "y"}}, false},
	} {
		if got := containerMatches("1234", r, &tc.f); got != tc.want {
			t.Errorf("%+v: %v", tc.f, got)
		}
	}
	var sum atomic.Int64
	parallel(1000, func(i int) { sum.Add(int64(i)) })
	if sum.Load() != 999*1000/2 {
		t.Errorf("parallel missed work: %d", sum.Load())
	}
}

// cgroupMounts lists every mounted cgroup hierarchy.
func cgroupMounts(t *testing.T) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if ok && (strings.HasPrefix(post, "cgroup ") || strings.HasPrefix(post, "cgroup2 ")) {
			out = append(out, strings.Fields(pre)[4])
		}
	}
	return out
}

// TestStatsOfRealCgroupsWithoutLifecycleLocks builds a manager by hand
// around a real pod cgroup with one container cgroup holding a busy loop,
// holds every lifecycle lock, and reads stats: they must not block, must
// show one core of CPU, and must turn into ErrNotFound once the cgroups
// are gone.
func TestStatsOfRealCgroupsWithoutLifecycleLocks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for cgroups")
	}
	mnts := cgroupMounts(t)
	if len(mnts) == 0 {
		t.Skip("no cgroups")
	}
	oldInterval, oldWindow := samplerInterval, minRateWindow
	samplerInterval, minRateWindow = 100*time.Millisecond, 200*time.Millisecond
	t.Cleanup(func() { samplerInterval, minRateWindow = oldInterval, oldWindow })

	parent := "/peapod-statstest-" + strconv.Itoa(os.Getpid())
	sbID, cID := testID('e'), testID('f')
	pc, err := cgroups.CreatePodCgroup("", parent, sbID)
	if err != nil {
		t.Fatal(err)
	}
	cgDir := cgroups.ContainerCgroupPath(pc.PodPath, cID)
	for _, mnt := range mnts {
		if err := os.MkdirAll(filepath.Join(mnt, cgDir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busy := exec.Command("sh", "-c", "while :; do :; done")
	if err := busy.Start(); err != nil {
		t.Fatal(err)
	}
	killBusy := func() { _ = busy.Process.Kill(); _, _ = busy.Process.Wait() }
	t.Cleanup(killBusy)
	for _, mnt := range mnts {
		_ = os.WriteFile(filepath.Join(mnt, cgDir, "cgroup.procs"), []byte(strconv.Itoa(busy.Process.Pid)), 0o644)
	}
	removeCtr := func() {
		for _, mnt := range mnts {
			_ = os.Remove(filepath.Join(mnt, cgDir))
		}
	}
	t.Cleanup(func() {
		killBusy()
		removeCtr()
		_ = pc.Remove()
		for _, mnt := range mnts {
			_ = os.Remove(filepath.Join(mnt, parent))
		}
	})

	m := &Manager{sandboxes: map[string]*entry{}, byKey: map[string]*entry{}, stopRetry: make(chan struct{}), log: slog.Default()}
	started := time.Now()
	sb := &Sandbox{ID: sbID, State: StateReady, CreatedAt: started, Cgroup: &pc, Spec: Spec{Name: "p", Namespace: "ns", Labels: map[string]string{"app": "x"}}}
	e := &entry{rec: sb}
	m.sandboxes[sbID] = e
	ce := &centry{rec: &Container{ID: cID, SandboxID: sbID, State: ContainerRunning, StartedAt: started, Pid: busy.Process.Pid}}
	m.ctable().byID[cID] = ce
	// Every lifecycle lock is held for the whole test.
	e.op.Lock()
	ce.op.Lock()
	defer e.op.Unlock()
	defer ce.op.Unlock()

	m.StartStatsSampler()
	defer func() {
		// Stop the sampler (as Close does) and wait for it, before the
		// timing knobs are restored.
		close(m.stopRetry)
		for i := 0; i < 100; i++ {
			if _, ok := samplers.Load(m); !ok {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Error("the sampler did not stop")
	}()
	time.Sleep(800 * time.Millisecond)

	ctx := context.Background()
	done := make(chan struct{})
	var list []*PodStats
	go func() {
		defer close(done)
		list, err = m.ListPodStats(ctx, Filter{Selector: map[string]string{"app": "x"}})
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ListPodStats blocked on lifecycle locks")
	}
	if err != nil || len(list) != 1 {
		t.Fatalf("ListPodStats = %v, %v", list, err)
	}
	ps := list[0]
	if ps.Cgroup == nil || ps.Cgroup.CPU == nil || ps.CPUNanoCores == nil {
		t.Fatalf("pod stats without CPU: %+v", ps)
	}
	if r := *ps.CPUNanoCores; r < 0.6e9 || r > 1.2e9 {
		t.Errorf("pod usage_nano_cores = %d, want about 1e9 (one busy loop)", r)
	}
	if len(ps.Containers) != 1 || ps.Containers[0].CPUNanoCores == nil {
		t.Fatalf("containers: %+v", ps.Containers)
	}
	cs := ps.Containers[0]
	if r := *cs.CPUNanoCores; r < 0.6e9 || r > 1.2e9 {
		t.Errorf("container usage_nano_cores = %d", r)
	}
	if cs.Cgroup.Pids != nil && cs.Cgroup.Pids.Current != 1 {
		t.Errorf("container pids = %d, want 1", cs.Cgroup.Pids.Current)
	}
	if cs.CgroupPath != cgDir || cs.WritableLayer != nil {
		t.Errorf("container stats: path %s layer %+v", cs.CgroupPath, cs.WritableLayer)
	}
	// The stats RPCs read no detail; the metrics do, and the container's
	// processes.
	if cs.Processes != nil || cs.Filesystem != nil || cs.Cgroup.CPUControl != nil || ps.Cgroup.CPU.UserNanos != nil {
		t.Errorf("ListPodStats read the metrics' detail: %+v %+v", cs, ps.Cgroup)
	}
	ml, err := m.ListPodMetrics(ctx)
	if err != nil || len(ml) != 1 || len(ml[0].Containers) != 1 {
		t.Fatalf("ListPodMetrics = %+v, %v", ml, err)
	}
	if c := ml[0].Cgroup.CPU; c == nil || c.UserNanos == nil || c.SystemNanos == nil {
		t.Errorf("pod metrics without the CPU split: %+v", c)
	}
	mc := ml[0].Containers[0]
	if p := mc.Processes; p == nil || p.Processes != 1 || p.FDs == 0 || p.MaxOpenFiles == nil {
		t.Errorf("container processes: %+v", p)
	}
	if mc.Filesystem != nil { // no image store here
		t.Errorf("filesystem without an image store: %+v", mc.Filesystem)
	}
	if cgroups.DetectMode() == cgroups.ModeV1 && (mc.Cgroup.CPUControl == nil || mc.Cgroup.Memory.SwapLimit == nil) {
		t.Errorf("container cgroup detail: %+v %+v", mc.Cgroup.CPUControl, mc.Cgroup.Memory)
	}
	if l, err := m.ListPodStats(ctx, Filter{Selector: map[string]string{"app": "other"}}); err != nil || len(l) != 0 {
		t.Errorf("selector mismatch: %v %v", l, err)
	}
	if l, err := m.ListContainerStats(ctx, ContainerFilter{SandboxID: sbID[:8]}); err != nil || len(l) != 1 {
		t.Errorf("ListContainerStats: %v %v", l, err)
	}

	// Gone cgroups: NotFound, not zeros.
	killBusy()
	time.Sleep(50 * time.Millisecond)
	removeCtr()
	if _, err := m.ContainerStats(ctx, cID); !errors.Is(err, ErrNotFound) {
		t.Errorf("ContainerStats of a container whose cgroup is gone: %v", err)
	}
	if ps, err := m.PodStats(ctx, sbID); err != nil || len(ps.Containers) != 0 {
		t.Errorf("pod without its container cgroup: %+v %v", ps, err)
	}
	if err := pc.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.PodStats(ctx, sbID); !errors.Is(err, ErrNotFound) {
		t.Errorf("PodStats of a pod whose cgroup is gone: %v", err)
	}
	if l, _ := m.ListPodStats(ctx, Filter{}); len(l) != 0 {
		t.Errorf("ListPodStats lists a pod without cgroup: %+v", l)
	}
}
