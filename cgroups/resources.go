package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs"
	"github.com/opencontainers/cgroups/fs2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ErrInvalidResources marks limits that peapod or the kernel refuse; the
// CRI layer maps it to InvalidArgument. Nothing was changed.
var ErrInvalidResources = errors.New("invalid resources")

func invalidRes(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidResources, fmt.Sprintf(format, args...))
}

// Bounds of the kernel (v1 cpu.shares, cpu.cfs_period_us) that v2 maps onto.
const (
	minShares = 2
	maxShares = 262144
	minPeriod = 1000    // 1 ms
	maxPeriod = 1000000 // 1 s
	minQuota  = 1000
)

// SetResources applies r to the pod cgroup while the pod runs (the pod
// level of UpdatePodSandboxResources): cpu shares (cpu.weight on v2), quota
// and period, cpuset, memory limit and memory+swap, pids (unified
// "pids.max"), hugepage limits when the hugetlb controller is there (the
// kubelet sends them anyway: without the controller they are dropped), and
// on v2 any other unified key. Unset fields (zero) are left as they are. A
// swap limit defaults to the memory limit (no swap), as for containers.
//
// Values are checked first (an error wrapping ErrInvalidResources, nothing
// written); if the kernel still refuses one, what was already written is
// put back. With the systemd driver the values are also set as properties
// of the pod's slice, so that systemd keeps them. A pod cgroup that is gone
// yields ErrNotFound.
func (p PodCgroup) SetResources(r *specs.LinuxResources) error {
	if err := p.check(); err != nil {
		return err
	}
	if !p.Exists() {
		return notFound(p.PodPath)
	}
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return err
	}
	// Rootless: only the hierarchies delegated to the pod (the limits of
	// the others' controllers are left out, as those controllers are).
	roots = usableRoots(roots, p.PodPath)
	res, err := p.resources(roots, r)
	if err != nil {
		return err
	}
	// Rootless: only the delegated controllers can take limits (the
	// containers' are dropped the same way, see Undelegated).
	if p.Driver != DriverSystemd && inUserNS() {
		DropLimits(res, Undelegated(p.PodPath))
		if len(roots) == 0 {
			return nil
		}
	}
	snap := snapshot(p.Mode, roots, p.PodPath, res)
	var m cgroups.Manager
	cg := &cgroups.Cgroup{Path: p.PodPath, Resources: res}
	switch {
	case p.Driver == DriverSystemd:
		m, err = systemdSliceManager(p.Mode, p.Slice, res)
	case p.Mode == ModeV2:
		m, err = fs2.NewManager(cg, filepath.Join(unifiedMountpoint, p.PodPath))
	default:
		m, err = fs.NewManager(cg, joinAll(roots, p.PodPath))
	}
	if err != nil {
		return fmt.Errorf("pod cgroup %s: %w", p.PodPath, err)
	}
	if p.Mode == ModeV1 && (res.CpusetCpus != "" || res.CpusetMems != "") {
		// v1 refuses a parent cpuset narrower than a child's: narrow the
		// pause and container cgroups first, deepest first.
		if err := narrowV1Cpusets(roots, p.PodPath, res); err != nil {
			snap.restore()
			return err
		}
	}
	if err := m.Set(res); err != nil {
		snap.restore()
		// The values passed the checks above; what the kernel still
		// refuses (EINVAL, ERANGE; v1 EBUSY for a memory limit below what
		// cannot be reclaimed, which the library reports without the
		// errno) is a request that does not fit this pod now. A cgroup
		// that vanished or a permission problem is the runtime's.
		if isNotExist(err) {
			return notFound(p.PodPath)
		}
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, unix.EROFS) {
			return fmt.Errorf("pod cgroup %s: set resources: %w", p.PodPath, err)
		}
		return fmt.Errorf("%w: pod cgroup %s: the kernel refused: %v (nothing changed)", ErrInvalidResources, p.PodPath, err)
	}
	return nil
}

var (
	// Compiled on first use: every process of peapod's (the per-pod shim
	// and its helpers too) would otherwise pay for them at start.
	cpuListRE  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$`) })
	pageSizeRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9]+(KB|MB|GB|TB|PB)$`) })
	unifiedRE  = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z_]+\.[a-z0-9_.]+$`) })
)

// resources checks r and converts it for the cgroup managers.
func (p PodCgroup) resources(roots map[string]string, r *specs.LinuxResources) (*cgroups.Resources, error) {
	res := &cgroups.Resources{SkipDevices: true}
	if r == nil {
		return res, nil
	}
	if c := r.CPU; c != nil {
		if c.Shares != nil && *c.Shares != 0 {
			if *c.Shares < minShares || *c.Shares > maxShares {
				return nil, invalidRes("cpu shares %d: want %d to %d", *c.Shares, minShares, maxShares)
			}
			res.CpuShares = *c.Shares
			if p.Mode == ModeV2 { // cpu.weight (and systemd's CPUWeight)
				res.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*c.Shares)
			}
		}
		if c.Period != nil && *c.Period != 0 {
			if *c.Period < minPeriod || *c.Period > maxPeriod {
				return nil, invalidRes("cpu period %d µs: want %d to %d", *c.Period, minPeriod, maxPeriod)
			}
			res.CpuPeriod = *c.Period
		}
		if c.Quota != nil && *c.Quota != 0 {
			if *c.Quota != -1 && *c.Quota < minQuota {
				return nil, invalidRes("cpu quota %d µs: want -1 (unlimited) or at least %d", *c.Quota, minQuota)
			}
			res.CpuQuota = *c.Quota
		}
		if c.Cpus != "" {
			if err := checkCPUList("cpuset cpus", c.Cpus, p.available(roots, "cpuset.cpus.effective", "cpuset.effective_cpus", "cpuset.cpus")); err != nil {
				return nil, err
			}
			res.CpusetCpus = c.Cpus
		}
		if c.Mems != "" {
			if err := checkCPUList("cpuset mems", c.Mems, p.available(roots, "cpuset.mems.effective", "cpuset.effective_mems", "cpuset.mems")); err != nil {
				return nil, err
			}
			res.CpusetMems = c.Mems
		}
	}
	if m := r.Memory; m != nil {
		if m.Limit != nil && *m.Limit != 0 {
			if *m.Limit < 0 && *m.Limit != -1 {
				return nil, invalidRes("memory limit %d: want -1 (unlimited) or a positive byte count", *m.Limit)
			}
			res.Memory = *m.Limit
		}
		if m.Swap != nil && *m.Swap != 0 {
			switch {
			case *m.Swap < -1:
				return nil, invalidRes("memory+swap limit %d: want -1 (unlimited) or a byte count", *m.Swap)
			case *m.Swap != -1 && res.Memory == 0:
				return nil, invalidRes("memory+swap limit %d needs a memory limit", *m.Swap)
			case *m.Swap != -1 && res.Memory > 0 && *m.Swap < res.Memory:
				return nil, invalidRes("memory+swap limit %d is below the memory limit %d", *m.Swap, res.Memory)
			}
			res.MemorySwap = *m.Swap
		} else if res.Memory > 0 && p.hasSwapFile(roots) {
			res.MemorySwap = res.Memory // no swap, as the kubelet expects
		}
	}
	if r.Pids != nil && r.Pids.Limit != nil && *r.Pids.Limit != 0 {
		l := *r.Pids.Limit
		if l < -1 {
			return nil, invalidRes("pids limit %d: want -1 (unlimited) or a positive count", l)
		}
		res.PidsLimit = &l
	}
	if len(r.HugepageLimits) > 0 && p.hasController(roots, "hugetlb") {
		sizes := cgroups.HugePageSizes()
		for _, h := range r.HugepageLimits {
			if !pageSizeRE().MatchString(h.Pagesize) {
				return nil, invalidRes("hugepage size %q: want a size such as 2MB or 1GB", h.Pagesize)
			}
			if !slices.Contains(sizes, h.Pagesize) {
				return nil, invalidRes("hugepage size %q: this host has %v", h.Pagesize, sizes)
			}
			res.HugetlbLimit = append(res.HugetlbLimit, &cgroups.HugepageLimit{Pagesize: h.Pagesize, Limit: h.Limit})
		}
	}
	for k, v := range r.Unified {
		if !unifiedRE().MatchString(k) || strings.HasPrefix(k, "cgroup.") || strings.ContainsAny(v, "\n\x00") {
			return nil, invalidRes("unified key %q (value %q): want a controller file such as memory.high", k, v)
		}
		if k == "pids.max" {
			n := int64(-1)
			if v != "max" {
				var err error
				if n, err = strconv.ParseInt(v, 10, 64); err != nil || n <= 0 {
					return nil, invalidRes("unified pids.max %q: want max or a positive count", v)
				}
			}
			res.PidsLimit = &n
			continue
		}
		if p.Mode != ModeV2 {
			return nil, invalidRes("unified key %q: unified resources need cgroup v2; this host has v1", k)
		}
		if !p.hasController(roots, strings.SplitN(k, ".", 2)[0]) {
			return nil, invalidRes("unified key %q: the pod cgroup has no %s controller", k, strings.SplitN(k, ".", 2)[0])
		}
		if res.Unified == nil {
			res.Unified = map[string]string{}
		}
		res.Unified[k] = v
	}
	return res, nil
}

// checkCPUList checks a cpuset list's syntax and that every cpu (node) in
// it is one the pod may use.
func checkCPUList(what, list, avail string) error {
	if !cpuListRE().MatchString(list) {
		return invalidRes("%s %q: want a list such as 0-2,4", what, list)
	}
	want, err := parseCPUList(list)
	if err != nil {
		return invalidRes("%s %q: %v", what, list, err)
	}
	if avail == "" {
		return nil
	}
	have, err := parseCPUList(avail)
	if err != nil {
		return nil // unreadable: let the kernel decide
	}
	for _, c := range want {
		if !slices.Contains(have, c) {
			return invalidRes("%s %q: %d is not available to the pod (it may use %s)", what, list, c, avail)
		}
	}
	return nil
}

func parseCPUList(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(strings.TrimSpace(s), ",") {
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, err
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, err
			}
		}
		if b < a || b-a > 65536 {
			return nil, fmt.Errorf("bad range %q", part)
		}
		for i := a; i <= b; i++ {
			out = append(out, i)
		}
	}
	return out, nil
}

// available reads the cpus or mems the pod's parent offers (the first of
// names that exists), or "" when unknown.
func (p PodCgroup) available(roots map[string]string, names ...string) string {
	root, ok := roots["cpuset"]
	if p.Mode == ModeV2 {
		root, ok = roots[""]
	}
	if !ok {
		return ""
	}
	for dir := filepath.Join(root, filepath.Dir(p.PodPath)); ; dir = filepath.Dir(dir) {
		for _, n := range names {
			if b, err := os.ReadFile(filepath.Join(dir, n)); err == nil && strings.TrimSpace(string(b)) != "" {
				return strings.TrimSpace(string(b))
			}
		}
		if dir == root || len(dir) <= len(root) {
			break
		}
	}
	if b, err := os.ReadFile("/sys/devices/system/cpu/online"); err == nil && slices.Contains(names, "cpuset.cpus") {
		return strings.TrimSpace(string(b))
	}
	return ""
}

// hasController reports whether the pod cgroup has controller c.
func (p PodCgroup) hasController(roots map[string]string, c string) bool {
	if p.Mode == ModeV2 {
		b, err := os.ReadFile(filepath.Join(roots[""], p.PodPath, "cgroup.controllers"))
		return err == nil && slices.Contains(strings.Fields(string(b)), c)
	}
	root, ok := roots[c]
	return ok && exists(filepath.Join(root, p.PodPath))
}

// hasSwapFile reports whether the kernel accounts swap for the pod (v1
// memsw, v2 memory.swap.max): without it a swap limit cannot be written.
func (p PodCgroup) hasSwapFile(roots map[string]string) bool {
	if p.Mode == ModeV2 {
		return exists(filepath.Join(roots[""], p.PodPath, "memory.swap.max"))
	}
	root, ok := roots["memory"]
	return ok && exists(filepath.Join(root, p.PodPath, "memory.memsw.limit_in_bytes"))
}

// narrowV1Cpusets writes the new cpus/mems to every cgroup below the pod
// whose own set is not inside them, deepest first.
func narrowV1Cpusets(roots map[string]string, podPath string, res *cgroups.Resources) error {
	root, ok := roots["cpuset"]
	if !ok {
		return nil
	}
	var dirs []string
	_ = filepath.WalkDir(filepath.Join(root, podPath), func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && path != filepath.Join(root, podPath) {
			dirs = append(dirs, path)
		}
		return nil
	})
	sortDeepestFirst(dirs)
	podDir := filepath.Join(root, podPath)
	for _, f := range []struct{ file, want string }{{"cpuset.mems", res.CpusetMems}, {"cpuset.cpus", res.CpusetCpus}} {
		if f.want == "" {
			continue
		}
		want, _ := parseCPUList(f.want)
		// A set disjoint from the current one: the pod first takes both
		// (inside its parent, as both are), so the children can move.
		if cur, err := cgroups.ReadFile(podDir, f.file); err == nil {
			if u := unionList(cur, f.want); u != strings.TrimSpace(cur) {
				if err := cgroups.WriteFile(podDir, f.file, u); err != nil {
					return fmt.Errorf("%w: %s: %v", ErrInvalidResources, filepath.Join(podDir, f.file), err)
				}
			}
		}
		for _, dir := range dirs {
			cur, err := cgroups.ReadFile(dir, f.file)
			if err != nil {
				continue
			}
			have, _ := parseCPUList(cur)
			inside := len(have) > 0
			for _, c := range have {
				if !slices.Contains(want, c) {
					inside = false
				}
			}
			if inside {
				continue
			}
			if err := cgroups.WriteFile(dir, f.file, f.want); err != nil {
				return fmt.Errorf("%w: %s: %v", ErrInvalidResources, filepath.Join(dir, f.file), err)
			}
		}
	}
	return nil
}

// fileSnapshot holds the previous content of the files a Set may write.
type fileSnapshot map[string]string

// snapshot reads the files res may change in the pod cgroup (and, for a
// v1 cpuset, below it).
func snapshot(mode Mode, roots map[string]string, podPath string, res *cgroups.Resources) fileSnapshot {
	var files []string
	add := func(key string, names ...string) {
		root, ok := roots[key]
		if !ok {
			return
		}
		for _, n := range names {
			files = append(files, filepath.Join(root, podPath, n))
		}
	}
	if mode == ModeV2 {
		add("", "cpu.weight", "cpu.max", "cpuset.cpus", "cpuset.mems", "memory.max", "memory.swap.max", "pids.max")
		for _, h := range res.HugetlbLimit {
			add("", "hugetlb."+h.Pagesize+".max", "hugetlb."+h.Pagesize+".rsvd.max")
		}
		for k := range res.Unified {
			add("", k)
		}
	} else {
		add("cpu", "cpu.shares", "cpu.cfs_period_us", "cpu.cfs_quota_us")
		add("memory", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
		add("pids", "pids.max")
		for _, h := range res.HugetlbLimit {
			add("hugetlb", "hugetlb."+h.Pagesize+".limit_in_bytes")
		}
		if root, ok := roots["cpuset"]; ok {
			_ = filepath.WalkDir(filepath.Join(root, podPath), func(path string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					files = append(files, filepath.Join(path, "cpuset.cpus"), filepath.Join(path, "cpuset.mems"))
				}
				return nil
			})
		}
	}
	snap := fileSnapshot{}
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			snap[f] = strings.TrimSpace(string(b))
		}
	}
	return snap
}

// restore writes the old values back, best effort. Some files constrain
// each other: a v1 cpuset parent must hold its children's sets, so cpusets
// are first widened to old ∪ current from the top down, then set to the
// old values from the bottom up; the others (v1 memory limit ≤ memsw, cfs
// period and quota) are retried in a second and third pass.
func (s fileSnapshot) restore() {
	var pending, cpusets []string
	for f := range s {
		if strings.HasSuffix(f, "/cpuset.cpus") || strings.HasSuffix(f, "/cpuset.mems") {
			cpusets = append(cpusets, f)
		} else {
			pending = append(pending, f)
		}
	}
	sortDeepestFirst(cpusets)
	for i := len(cpusets) - 1; i >= 0; i-- { // top down: widen
		f := cpusets[i]
		if cur, err := os.ReadFile(f); err == nil && s[f] != "" {
			_ = cgroups.WriteFile(filepath.Dir(f), filepath.Base(f), unionList(string(cur), s[f]))
		}
	}
	pending = append(cpusets, pending...) // bottom up: the old values
	for pass := 0; pass < 3 && len(pending) > 0; pass++ {
		var failed []string
		for _, f := range pending {
			v := s[f]
			if v == "" {
				v = "\n" // v2 cpuset: empty means "as the parent"
			}
			if err := cgroups.WriteFile(filepath.Dir(f), filepath.Base(f), v); err != nil {
				failed = append(failed, f)
			}
		}
		pending = failed
	}
}

// sortDeepestFirst orders paths by depth, deepest first.
func sortDeepestFirst(paths []string) {
	slices.SortStableFunc(paths, func(a, b string) int {
		return strings.Count(b, "/") - strings.Count(a, "/")
	})
}

// unionList is the union of two cpu (or node) lists, as a list.
func unionList(a, b string) string {
	x, err1 := parseCPUList(a)
	y, err2 := parseCPUList(b)
	if err1 != nil || err2 != nil {
		return strings.TrimSpace(b)
	}
	all := append(x, y...)
	slices.Sort(all)
	all = slices.Compact(all)
	var parts []string
	for i := 0; i < len(all); {
		j := i
		for j+1 < len(all) && all[j+1] == all[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, strconv.Itoa(all[i]))
		} else {
			parts = append(parts, strconv.Itoa(all[i])+"-"+strconv.Itoa(all[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
