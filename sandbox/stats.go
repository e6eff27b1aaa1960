package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"peapod/cgroups"
	"peapod/netns"
)

// Stats of pods and containers come from their cgroups, the pod's network
// namespace and the image store. Reading them never takes a sandbox's or a
// container's lifecycle lock: the records are copied under the table
// mutexes (held for the copy only) and the kernel files are read after.
//
// A background sampler reads the cumulative CPU time of every pod and
// container cgroup every samplerInterval, so a stats call can compute
// usage_nano_cores against a recent earlier sample, already on its first
// call. It also refreshes, less often, the disk usage of containers'
// writable layers (a tree walk, too slow to do per call), and closes the
// netlink sockets kept open in ready pods' network namespaces once a pod
// is no longer ready.

// CgroupStats is what the kernel accounts for a cgroup (see cgroups.Stats).
type CgroupStats = cgroups.Stats

// ContainerStats is one container's resource use.
type ContainerStats struct {
	Container  Container
	CgroupPath string
	Timestamp  time.Time
	// Cgroup holds what the kernel accounts; sections of controllers
	// that are unavailable are nil.
	Cgroup *cgroups.Stats
	// CPUNanoCores is the recent CPU usage rate; nil without CPU
	// accounting.
	CPUNanoCores *uint64
	// WritableLayer is nil when unknown (rootfs not made, store gone).
	WritableLayer *LayerUsage

	// Filled for metrics only (ListPodMetrics); nil otherwise or when
	// unknown.
	//
	// Processes is what the container's processes hold (/proc).
	Processes *cgroups.ProcessStats
	// Filesystem is the filesystem the writable layer lives on; set with
	// WritableLayer.
	Filesystem *FsInfo
}

// FsInfo is the size and the inodes of a filesystem (statfs).
type FsInfo struct {
	Mountpoint         string // as in LayerUsage
	CapacityBytes      uint64
	Inodes, InodesFree uint64
}

// LayerUsage is the disk use of a container's writable layer.
type LayerUsage struct {
	Bytes, Inodes uint64
	Mountpoint    string // of the filesystem the store lives on
	Timestamp     time.Time
}

// PodStats is a pod's resource use: its pod cgroup (pause and containers
// together), its network and its containers.
type PodStats struct {
	Sandbox      Sandbox
	CgroupPath   string
	Timestamp    time.Time
	Cgroup       *cgroups.Stats
	CPUNanoCores *uint64
	// Network is per interface of the pod's network namespace, loopback
	// excluded; nil for host-network pods or when the netns is gone.
	Network          []netns.InterfaceStats
	DefaultInterface string
	NetworkTimestamp time.Time
	Containers       []*ContainerStats
}

// Sampler timing; tests shorten it.
var (
	samplerInterval = time.Second
	// fsRefreshEvery is how many sampler passes apart writable layers
	// are measured again.
	fsRefreshEvery = 10
	// minRateWindow is the shortest interval a CPU rate is computed over;
	// shorter ones are dominated by scheduling noise.
	minRateWindow = 500 * time.Millisecond
)

// cpuHistoryLen is how many samples are kept per cgroup: the newest may be
// too recent for a rate, the one before is then old enough.
const cpuHistoryLen = 3

type cpuSample struct {
	at    time.Time
	usage uint64
}

type cpuHistory struct {
	s    [cpuHistoryLen]cpuSample // s[0] newest
	n    int
	pass uint64 // sampler pass that last saw the cgroup
}

func (h *cpuHistory) add(s cpuSample) {
	copy(h.s[1:], h.s[:cpuHistoryLen-1])
	h.s[0] = s
	h.n = min(h.n+1, cpuHistoryLen)
}

// statsSampler is a Manager's stats state. It lives in a table keyed by
// the Manager so that the Manager needs no field for it.
type statsSampler struct {
	once sync.Once

	mu   sync.Mutex
	cpu  map[string]*cpuHistory // by cgroup path
	fs   map[string]LayerUsage  // by container id
	pass uint64

	// net keeps, per ready pod, a netlink socket opened in its network
	// namespace (opening one costs more than a dump); closed by the
	// sampler once the pod is no longer ready.
	net map[string]*netReader // by sandbox id

	fsBusy     atomic.Bool
	mountOnce  sync.Once
	mountpoint string
}

var samplers sync.Map // *Manager -> *statsSampler

func (m *Manager) stats() *statsSampler {
	if v, ok := samplers.Load(m); ok {
		return v.(*statsSampler)
	}
	v, _ := samplers.LoadOrStore(m, &statsSampler{cpu: map[string]*cpuHistory{}, fs: map[string]LayerUsage{}, net: map[string]*netReader{}})
	return v.(*statsSampler)
}

// StartStatsSampler starts the background sampler (once; later calls do
// nothing). The daemon calls it at start so that CPU rates are known by
// the first stats call; a stats call starts it too. It stops with Close.
func (m *Manager) StartStatsSampler() {
	s := m.stats()
	s.once.Do(func() { go s.run(m) })
}

type netReader struct {
	pin string
	r   *netns.NetStatsReader
}

func (s *statsSampler) run(m *Manager) {
	defer func() {
		samplers.Delete(m)
		s.mu.Lock()
		for id, n := range s.net {
			n.r.Close()
			delete(s.net, id)
		}
		s.mu.Unlock()
	}()
	s.sampleOnce(m)
	t := time.NewTicker(samplerInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stopRetry: // closed by Close
			return
		case <-t.C:
			s.sampleOnce(m)
		}
	}
}

// statsTarget is one cgroup the sampler follows.
type statsTarget struct {
	cgPath      string
	containerID string // "" for a pod cgroup
	rootfsReady bool
}

func (s *statsSampler) sampleOnce(m *Manager) {
	start := time.Now()
	pods, ctrs := m.statsSnapshot(nil, nil)
	var targets []statsTarget
	for _, sb := range pods {
		if sb.Cgroup != nil {
			targets = append(targets, statsTarget{cgPath: sb.Cgroup.PodPath})
		}
	}
	for _, c := range ctrs {
		targets = append(targets, statsTarget{cgPath: containerCgroup(pods[c.SandboxID], c.ID), containerID: c.ID, rootfsReady: c.RootfsReady})
	}
	type reading struct {
		path  string
		at    time.Time
		usage uint64
	}
	readings := make([]reading, 0, len(targets))
	for _, tg := range targets {
		usage, ok, err := cgroups.ReadCPUUsage(tg.cgPath)
		if err == nil && ok {
			readings = append(readings, reading{tg.cgPath, time.Now(), usage})
		}
	}
	s.mu.Lock()
	s.pass++
	for _, r := range readings {
		h := s.cpu[r.path]
		if h == nil {
			h = &cpuHistory{}
			s.cpu[r.path] = h
		}
		h.add(cpuSample{at: r.at, usage: r.usage})
		h.pass = s.pass
	}
	for p, h := range s.cpu {
		if h.pass != s.pass {
			delete(s.cpu, p)
		}
	}
	for id, n := range s.net {
		if sb := pods[id]; sb == nil || sb.State != StateReady || sb.Namespaces[netns.Net] != n.pin {
			n.r.Close()
			delete(s.net, id)
		}
	}
	live := make(map[string]bool, len(ctrs))
	for _, c := range ctrs {
		live[c.ID] = true
	}
	for id := range s.fs {
		if !live[id] {
			delete(s.fs, id)
		}
	}
	refreshFS := fsRefreshEvery <= 1 || s.pass%uint64(fsRefreshEvery) == 1
	s.mu.Unlock()

	if refreshFS && m.cfg.Images != nil && s.fsBusy.CompareAndSwap(false, true) {
		var ids []string
		for _, tg := range targets {
			if tg.containerID != "" && tg.rootfsReady {
				ids = append(ids, tg.containerID)
			}
		}
		go func() {
			defer s.fsBusy.Store(false)
			for _, id := range ids {
				s.measureLayer(m, id)
			}
		}()
	}
	if took := time.Since(start); took > samplerInterval/2 {
		m.log.Warn("stats sampler pass is slow", "took", took, "cgroups", len(targets))
	}
}

// initMountpoint finds, once, the directory of the image store (on the
// filesystem the writable layers live on).
func (s *statsSampler) initMountpoint(m *Manager) {
	s.mountOnce.Do(func() {
		if _, _, mp, err := m.cfg.Images.FsUsage(); err == nil {
			s.mountpoint = mp
		}
	})
}

// measureLayer walks a container's writable layer and caches the result.
func (s *statsSampler) measureLayer(m *Manager, id string) (LayerUsage, bool) {
	if m.cfg.Images == nil {
		return LayerUsage{}, false
	}
	s.initMountpoint(m)
	b, i, err := m.cfg.Images.WritableLayerUsage(id)
	if err != nil {
		return LayerUsage{}, false
	}
	u := LayerUsage{Bytes: b, Inodes: i, Mountpoint: s.mountpoint, Timestamp: time.Now()}
	s.mu.Lock()
	s.fs[id] = u
	s.mu.Unlock()
	return u, true
}

func (s *statsSampler) layer(m *Manager, c *Container) *LayerUsage {
	if !c.RootfsReady {
		return nil
	}
	s.mu.Lock()
	u, ok := s.fs[c.ID]
	s.mu.Unlock()
	if !ok {
		// First call for a new container: measure now, once.
		if u, ok = s.measureLayer(m, c.ID); !ok {
			return nil
		}
	}
	return &u
}

// rate computes usage_nano_cores for a fresh reading of path: against the
// newest sample at least minRateWindow old, else the oldest sample there
// is, else (a cgroup younger than one sampler pass) as the average since
// start.
func (s *statsSampler) rate(cgPath string, at time.Time, usage uint64, start time.Time) uint64 {
	s.mu.Lock()
	var prev *cpuSample
	if h := s.cpu[cgPath]; h != nil {
		for i := 0; i < h.n; i++ {
			c := h.s[i]
			if c.usage > usage || !c.at.Before(at) {
				continue // a recreated cgroup, or a sample taken after the reading
			}
			cp := c
			prev = &cp
			if at.Sub(c.at) >= minRateWindow {
				break
			}
		}
	}
	s.mu.Unlock()
	if prev != nil && at.Sub(prev.at) >= 10*time.Millisecond {
		return uint64(float64(usage-prev.usage) / at.Sub(prev.at).Seconds())
	}
	if usage == 0 || start.IsZero() || !at.After(start) {
		return 0
	}
	return uint64(float64(usage) / at.Sub(start).Seconds())
}

// readNetwork reads a pod's interfaces through its kept reader, opening
// one on first use.
func (s *statsSampler) readNetwork(id, pin string) ([]netns.InterfaceStats, error) {
	s.mu.Lock()
	n := s.net[id]
	s.mu.Unlock()
	if n == nil || n.pin != pin {
		r, err := netns.OpenNetStats(pin)
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		if cur := s.net[id]; cur != nil && cur.pin == pin {
			r.Close() // opened concurrently: keep one
			n = cur
		} else {
			if cur != nil {
				cur.r.Close()
			}
			n = &netReader{pin: pin, r: r}
			s.net[id] = n
		}
		s.mu.Unlock()
	}
	ifs, err := n.r.Read()
	if err != nil {
		s.mu.Lock()
		if s.net[id] == n {
			delete(s.net, id)
		}
		s.mu.Unlock()
		n.r.Close()
	}
	return ifs, err
}

// containerCgroup is where the shim puts a container: <pod cgroup>/<id>.
func containerCgroup(sb *Sandbox, id string) string {
	if sb == nil || sb.Cgroup == nil {
		return path.Join("/", id)
	}
	return sb.Cgroup.ContainerPath(id)
}

// statsSnapshot copies the records stats are made from: the visible
// sandboxes that podFilter accepts (all when nil), by id, and the live
// containers that ctrFilter accepts (all when nil), oldest first. Only the
// table mutexes are taken, for the copy.
func (m *Manager) statsSnapshot(podFilter *Filter, ctrFilter *ContainerFilter) (map[string]*Sandbox, []*Container) {
	var f Filter
	if podFilter != nil {
		f = *podFilter
	}
	pods := map[string]*Sandbox{}
	for _, sb := range m.List(f) {
		pods[sb.ID] = sb
	}
	t := m.ctable()
	t.mu.Lock()
	var ctrs []*Container
	for id, ce := range t.byID {
		r := ce.rec
		if ce.removed || r == nil || r.State == ContainerUnknown && r.Pid == 0 && !r.RootfsReady {
			continue
		}
		if ctrFilter != nil && !containerMatches(id, r, ctrFilter) {
			continue
		}
		cp := *r
		ctrs = append(ctrs, &cp)
	}
	t.mu.Unlock()
	// Containers of pods the filter dropped (or that are gone) go too.
	kept := ctrs[:0]
	for _, c := range ctrs {
		if pods[c.SandboxID] != nil {
			kept = append(kept, c)
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].CreatedAt.Before(kept[j].CreatedAt) })
	return pods, kept
}

func containerMatches(id string, r *Container, f *ContainerFilter) bool {
	if f.ID != "" && !strings.HasPrefix(id, f.ID) {
		return false
	}
	if f.SandboxID != "" && !strings.HasPrefix(r.SandboxID, f.SandboxID) {
		return false
	}
	if f.State != nil && r.State != *f.State {
		return false
	}
	for k, v := range f.Selector {
		if r.Config.Labels[k] != v {
			return false
		}
	}
	return true
}

// statsDetail says what a stats read includes beyond the stats RPCs'
// needs; nil for the stats RPCs.
type statsDetail struct {
	// fs is the filesystem of the writable layers, measured once per
	// call; nil when unknown.
	fs *FsInfo
}

// containerStats reads one container's cgroup. A cgroup that is gone
// yields an error wrapping ErrNotFound.
func (m *Manager) containerStats(s *statsSampler, sb *Sandbox, c *Container, detail *statsDetail) (*ContainerStats, error) {
	cg := containerCgroup(sb, c.ID)
	read := cgroups.ReadStats
	if detail != nil {
		read = cgroups.ReadDetailedStats
	}
	st, err := read(cg)
	now := time.Now()
	if errors.Is(err, cgroups.ErrNotFound) {
		return nil, fmt.Errorf("%w: container %s: its cgroup %s is gone", ErrNotFound, c.ID, cg)
	}
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", c.ID, err)
	}
	cs := &ContainerStats{Container: *c, CgroupPath: cg, Timestamp: now, Cgroup: st}
	if st.CPU != nil {
		r := s.rate(cg, now, st.CPU.UsageNanos, c.StartedAt)
		cs.CPUNanoCores = &r
	}
	cs.WritableLayer = s.layer(m, c)
	if detail != nil {
		// Threads from /proc only where the pids controller does not
		// count them.
		if ps, err := cgroups.ReadProcessStats(cg, c.Pid, st.Pids == nil); err == nil {
			cs.Processes = ps
		}
		if cs.WritableLayer != nil {
			cs.Filesystem = detail.fs
		}
	}
	return cs, nil
}

// podStats reads a pod's cgroup, network and the containers given.
func (m *Manager) podStats(s *statsSampler, sb *Sandbox, ctrs []*Container, detail *statsDetail) (*PodStats, error) {
	ps := &PodStats{Sandbox: *sb}
	if sb.Cgroup != nil {
		ps.CgroupPath = sb.Cgroup.PodPath
		read := cgroups.ReadStats
		if detail != nil {
			read = cgroups.ReadDetailedStats
		}
		st, err := read(sb.Cgroup.PodPath)
		ps.Timestamp = time.Now()
		if errors.Is(err, cgroups.ErrNotFound) {
			return nil, fmt.Errorf("%w: pod %s: its cgroup %s is gone", ErrNotFound, sb.ID, sb.Cgroup.PodPath)
		}
		if err != nil {
			return nil, fmt.Errorf("stats of pod %s: %w", sb.ID, err)
		}
		ps.Cgroup = st
		if st.CPU != nil {
			r := s.rate(sb.Cgroup.PodPath, ps.Timestamp, st.CPU.UsageNanos, sb.CreatedAt)
			ps.CPUNanoCores = &r
		}
	} else {
		ps.Timestamp = time.Now()
	}
	if pin := sb.Namespaces[netns.Net]; pin != "" && sb.Spec.NetworkMode != ModeNode {
		if ifs, err := s.readNetwork(sb.ID, pin); err == nil {
			ps.Network, ps.NetworkTimestamp = ifs, time.Now()
			if sb.Network != nil && sb.Network.IfName != "" {
				ps.DefaultInterface = sb.Network.IfName
			} else if len(ifs) > 0 {
				ps.DefaultInterface = ifs[0].Name
			}
		}
	}
	for _, c := range ctrs {
		cs, err := m.containerStats(s, sb, c, detail)
		if err != nil {
			continue // removed meanwhile, or never started: no cgroup
		}
		ps.Containers = append(ps.Containers, cs)
	}
	return ps, nil
}

// ContainerStats returns the stats of one container (id or unique prefix).
func (m *Manager) ContainerStats(ctx context.Context, id string) (*ContainerStats, error) {
	m.StartStatsSampler()
	ce, err := m.lookupContainer(id)
	if err != nil {
		return nil, err
	}
	c := m.copyRec(ce)
	sb, err := m.getAny(c.SandboxID)
	if err != nil {
		return nil, fmt.Errorf("%w: container %s: its sandbox is gone", ErrNotFound, c.ID)
	}
	return m.containerStats(m.stats(), sb, c, nil)
}

// ListContainerStats returns the stats of the containers f matches whose
// cgroups exist, oldest first.
func (m *Manager) ListContainerStats(ctx context.Context, f ContainerFilter) ([]*ContainerStats, error) {
	m.StartStatsSampler()
	pods, ctrs := m.statsSnapshot(nil, &f)
	s := m.stats()
	out := make([]*ContainerStats, len(ctrs))
	parallel(len(ctrs), func(i int) {
		if cs, err := m.containerStats(s, pods[ctrs[i].SandboxID], ctrs[i], nil); err == nil {
			out[i] = cs
		}
	})
	return compact(out), ctx.Err()
}

// PodStats returns the stats of one pod (id or unique prefix). A pod whose
// cgroup is gone (removed behind peapod's back) or that is not ready
// (stopped: peapod removes its cgroup) is ErrNotFound.
func (m *Manager) PodStats(ctx context.Context, id string) (*PodStats, error) {
	m.StartStatsSampler()
	sb, err := m.Get(id)
	if err != nil {
		return nil, err
	}
	if sb.State != StateReady {
		return nil, fmt.Errorf("%w: pod %s is not ready (%s): only running pods have stats", ErrNotFound, sb.ID, sb.State)
	}
	_, ctrs := m.statsSnapshot(&Filter{ID: sb.ID}, &ContainerFilter{SandboxID: sb.ID})
	return m.podStats(m.stats(), sb, ctrs, nil)
}

// ListPodStats returns the stats of the ready pods f matches whose cgroups
// exist, oldest first.
func (m *Manager) ListPodStats(ctx context.Context, f Filter) ([]*PodStats, error) {
	return m.listPodStats(ctx, f, nil)
}

// ListPodMetrics is ListPodStats of every ready pod with the detail the
// cAdvisor-style metrics need: the detailed cgroup accounting, the
// containers' processes (their /proc entries only) and the filesystem of
// the writable layers.
func (m *Manager) ListPodMetrics(ctx context.Context) ([]*PodStats, error) {
	return m.listPodStats(ctx, Filter{}, &statsDetail{fs: m.stats().layerFs(m)})
}

// layerFs measures the filesystem the writable layers live on.
func (s *statsSampler) layerFs(m *Manager) *FsInfo {
	if m.cfg.Images == nil {
		return nil
	}
	s.initMountpoint(m)
	if s.mountpoint == "" {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.mountpoint, &st); err != nil {
		return nil
	}
	bs := uint64(st.Frsize)
	if bs == 0 {
		bs = uint64(st.Bsize)
	}
	return &FsInfo{Mountpoint: s.mountpoint, CapacityBytes: st.Blocks * bs, Inodes: st.Files, InodesFree: st.Ffree}
}

func (m *Manager) listPodStats(ctx context.Context, f Filter, detail *statsDetail) ([]*PodStats, error) {
	m.StartStatsSampler()
	pods, ctrs := m.statsSnapshot(&f, nil)
	byPod := map[string][]*Container{}
	for _, c := range ctrs {
		byPod[c.SandboxID] = append(byPod[c.SandboxID], c)
	}
	list := make([]*Sandbox, 0, len(pods))
	for _, sb := range pods {
		// Stopped pods have no stats: their cgroup is gone, or only
		// left over until their containers are removed.
		if sb.State == StateReady {
			list = append(list, sb)
		}
	}
	sort.Slice(list, func(i, j int) bool { return list[i].CreatedAt.Before(list[j].CreatedAt) })
	s := m.stats()
	out := make([]*PodStats, len(list))
	parallel(len(list), func(i int) {
		if ps, err := m.podStats(s, list[i], byPod[list[i].ID], detail); err == nil {
			out[i] = ps
		}
	})
	return compact(out), ctx.Err()
}

// parallel runs fn(0..n-1) on up to GOMAXPROCS goroutines: reading cgroup
// files is syscall-bound and scales with cores.
func parallel(n int, fn func(i int)) {
	workers := min(n, runtime.GOMAXPROCS(0), 8)
	if workers <= 1 {
		for i := 0; i < n; i++ {
			fn(i)
		}
		return
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				fn(i)
			}
		}()
	}
	wg.Wait()
}

func compact[T any](in []*T) []*T {
	out := in[:0]
	for _, v := range in {
		if v != nil {
			out = append(out, v)
		}
	}
	return out
}
