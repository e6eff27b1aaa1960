package cgroups

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Stats is what the kernel accounts for one cgroup. A nil section means the
// controller behind it is not available for this cgroup (not mounted on v1,
// not enabled for it on v2, or its files unreadable): absent, not zero.
type Stats struct {
	Mode   Mode
	CPU    *CPUStats
	Memory *MemoryStats
	Pids   *PidsStats
}

// CPUStats is cumulative CPU time of the cgroup and its descendants.
type CPUStats struct {
	// UsageNanos is total CPU time: cpuacct.usage (v1), cpu.stat
	// usage_usec (v2).
	UsageNanos uint64
}

// MemoryStats is the memory controller's view of the cgroup, hierarchical
// (it includes the cgroup's descendants).
type MemoryStats struct {
	// Usage is memory.usage_in_bytes (v1) or memory.current (v2).
	Usage uint64
	// WorkingSet is Usage minus inactive file pages (total_inactive_file
	// on v1, inactive_file on v2), as cAdvisor and the kubelet compute it.
	WorkingSet uint64
	// RSS is anonymous memory: total_rss (v1), anon (v2).
	RSS uint64
	// Cache is page cache: total_cache (v1), file (v2).
	Cache uint64
	// PageFaults and MajorPageFaults are cumulative counts.
	PageFaults      uint64
	MajorPageFaults uint64
	// Limit is the cgroup's own memory limit; nil when unlimited.
	Limit *uint64
	// Available is Limit − WorkingSet (at least 0); nil without a limit.
	Available *uint64
	// OOMKills counts processes the OOM killer killed because this cgroup
	// hit its limit: oom_kill of memory.oom_control (v1, this cgroup only)
	// or of memory.events (v2, this cgroup and its descendants). Nil when
	// the kernel does not report it.
	OOMKills *uint64
}

// PidsStats is the pids controller's view: tasks (processes and threads).
type PidsStats struct {
	Current uint64
	// Limit is pids.max; nil when "max" (unlimited).
	Limit *uint64
}

// ErrNotFound is returned (wrapped) by ReadStats when the cgroup does not
// exist (any more). errors.Is(err, fs.ErrNotExist) holds for it too.
var ErrNotFound error = notFoundError{}

type notFoundError struct{}

func (notFoundError) Error() string        { return "cgroup does not exist" }
func (notFoundError) Is(target error) bool { return target == fs.ErrNotExist }

func notFound(cgPath string) error { return fmt.Errorf("cgroup %s: %w", cgPath, ErrNotFound) }

func isNotExist(err error) bool { return errors.Is(err, unix.ENOENT) || errors.Is(err, fs.ErrNotExist) }

// ContainerCgroupPath is the cgroup of container id in the pod cgroup
// podPath: <podPath>/<id>, where the shim creates it.
func ContainerCgroupPath(podPath, id string) string { return filepath.Join(podPath, id) }

// ReadStats reads the accounting of the cgroup at cgPath (a cgroupfs path
// relative to each hierarchy's root, such as PodCgroup.PodPath) from every
// hierarchy that accounts something. A cgroup that does not exist yields
// an error wrapping ErrNotFound.
func ReadStats(cgPath string) (*Stats, error) {
	if err := checkPath(cgPath); err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	h, err := statsHierarchies()
	if err != nil {
		return nil, err
	}
	r := reader{buf: getBuf()}
	defer putBuf(r.buf)
	st := &Stats{Mode: h.mode}
	if h.mode == ModeV2 {
		err = r.readV2(h.roots[""], cgPath, st)
	} else {
		err = r.readV1(h.roots, cgPath, st)
	}
	if err != nil {
		return nil, err
	}
	return st, nil
}

// ReadCPUUsage reads only the cumulative CPU time of cgPath: one file, for
// the background sampler. ok is false when CPU accounting is unavailable.
func ReadCPUUsage(cgPath string) (nanos uint64, ok bool, err error) {
	if err := checkPath(cgPath); err != nil {
		return 0, false, fmt.Errorf("cgroup stats: %w", err)
	}
	h, err := statsHierarchies()
	if err != nil {
		return 0, false, err
	}
	r := reader{buf: getBuf()}
	defer putBuf(r.buf)
	var st Stats
	if h.mode == ModeV2 {
		dir := filepath.Join(h.roots[""], cgPath)
		b, err := r.read(dir, "cpu.stat")
		if isNotExist(err) && !exists(dir) {
			return 0, false, notFound(cgPath)
		}
		if err != nil {
			return 0, false, nil
		}
		if v, ok := field(b, "usage_usec"); ok {
			return v * 1000, true, nil
		}
		return 0, false, nil
	}
	root, ok := h.roots["cpuacct"]
	if !ok {
		return 0, false, nil
	}
	if err := r.cpuV1(filepath.Join(root, cgPath), cgPath, &st); err != nil {
		return 0, false, err
	}
	if st.CPU == nil {
		return 0, false, nil
	}
	return st.CPU.UsageNanos, true, nil
}

// Availability reports, for the controllers that matter to peapod (limits
// and accounting), whether each can be used on this host: mounted (v1) or
// offered by the root cgroup (v2). The CRI Status reports the false ones.
func Availability() map[string]bool {
	mode := hostMode()
	out := map[string]bool{}
	switch mode {
	case ModeV2:
		data, _ := os.ReadFile(filepath.Join(unifiedMountpoint, "cgroup.controllers"))
		have := strings.Fields(string(data))
		for _, c := range []string{"cpu", "cpuset", "memory", "pids", "io", "hugetlb"} {
			out[c] = slices.Contains(have, c)
		}
	default:
		roots, _ := v1Roots()
		for _, c := range []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "blkio", "hugetlb"} {
			_, out[c] = roots[c]
		}
	}
	return out
}

// Unavailable lists, sorted, the controllers that Availability reports
// false: what a verbose Status shows.
func Unavailable() []string {
	var out []string
	for c, ok := range Availability() {
		if !ok {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// hierarchies is the cached set of hierarchy roots for stats.
type hierarchies struct {
	mode    Mode
	unified string // unifiedMountpoint the entry was made for
	roots   map[string]string
	at      time.Time
}

// Mounts hardly ever change; a cached layout is refreshed after this long.
const hierarchyCacheTTL = 30 * time.Second

var (
	hierMu    sync.Mutex
	hierCache *hierarchies
	// v1Roots finds the v1 hierarchies; tests point it at a fake tree.
	v1Roots = func() (map[string]string, error) { return hierarchyRoots(ModeV1) }
)

func statsHierarchies() (*hierarchies, error) {
	mode := hostMode()
	hierMu.Lock()
	defer hierMu.Unlock()
	if c := hierCache; c != nil && c.mode == mode && c.unified == unifiedMountpoint && time.Since(c.at) < hierarchyCacheTTL {
		return c, nil
	}
	h := &hierarchies{mode: mode, unified: unifiedMountpoint, at: time.Now()}
	if mode == ModeV2 {
		h.roots = map[string]string{"": unifiedMountpoint}
	} else {
		roots, err := v1Roots()
		if err != nil {
			return nil, err
		}
		h.roots = roots
	}
	hierCache = h
	return h, nil
}

// resetStatsCache drops the cached layout (tests that repoint the roots).
func resetStatsCache() {
	hierMu.Lock()
	hierCache = nil
	hierMu.Unlock()
}

// reader reads small cgroup files into one reused buffer.
type reader struct{ buf *[]byte }

var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// read returns the content of dir/name, valid until the next read. It uses
// plain open/read/close: cgroup files are small and this is the hot path.
func (r reader) read(dir, name string) ([]byte, error) {
	p := dir + "/" + name
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	buf := *r.buf
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, len(buf))...)
			*r.buf = buf
		}
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: p, Err: err}
		}
		if m == 0 {
			return buf[:n], nil
		}
		n += m
	}
}

// readUint reads a file holding one number; "max" gives max=true.
func (r reader) readUint(dir, name string) (v uint64, max bool, err error) {
	b, err := r.read(dir, name)
	if err != nil {
		return 0, false, err
	}
	b = bytes.TrimSpace(b)
	if string(b) == "max" {
		return 0, true, nil
	}
	v, err = strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("%s/%s: %w", dir, name, err)
	}
	return v, false, nil
}

// field finds "key value" in a flat-keyed file (memory.stat, cpu.stat,
// memory.events, memory.oom_control).
func field(b []byte, key string) (uint64, bool) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(line) > len(key) && line[len(key)] == ' ' && string(line[:len(key)]) == key {
			v, err := strconv.ParseUint(string(bytes.TrimSpace(line[len(key)+1:])), 10, 64)
			return v, err == nil
		}
	}
	return 0, false
}

// fields extracts several keys in one pass.
func fields(b []byte, keys map[string]*uint64) (found int) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		sp := bytes.IndexByte(line, ' ')
		if sp <= 0 {
			continue
		}
		if dst, ok := keys[string(line[:sp])]; ok {
			if v, err := strconv.ParseUint(string(bytes.TrimSpace(line[sp+1:])), 10, 64); err == nil {
				*dst = v
				found++
			}
		}
	}
	return found
}

// dirGone tells a missing cgroup from a missing file: a file that is not
// there in a directory that is is an unavailable feature.
func dirGone(dir string, err error) bool {
	return isNotExist(err) && !exists(dir)
}

// v1Unlimited: memory.limit_in_bytes without a limit is PAGE_COUNTER_MAX
// pages (9223372036854771712 with 4 KiB pages); anything this large is no
// limit.
const v1Unlimited = uint64(1) << 62

func (r reader) readV1(roots map[string]string, cgPath string, st *Stats) error {
	seen := false
	if root, ok := roots["cpuacct"]; ok {
		seen = true
		if err := r.cpuV1(filepath.Join(root, cgPath), cgPath, st); err != nil {
			return err
		}
	}
	if root, ok := roots["memory"]; ok {
		seen = true
		if err := r.memoryV1(filepath.Join(root, cgPath), cgPath, st); err != nil {
			return err
		}
	}
	if root, ok := roots["pids"]; ok {
		seen = true
		if err := r.pids(filepath.Join(root, cgPath), cgPath, st); err != nil {
			return err
		}
	}
	if !seen {
		// No accounting hierarchy at all: the cgroup can still be told
		// apart from a missing one through any other hierarchy.
		for _, root := range roots {
			if exists(filepath.Join(root, cgPath)) {
				return nil
			}
		}
		return notFound(cgPath)
	}
	return nil
}

func (r reader) cpuV1(dir, cgPath string, st *Stats) error {
	v, _, err := r.readUint(dir, "cpuacct.usage")
	switch {
	case err == nil:
		st.CPU = &CPUStats{UsageNanos: v}
	case dirGone(dir, err):
		return notFound(cgPath)
	}
	return nil
}

func (r reader) memoryV1(dir, cgPath string, st *Stats) error {
	usage, _, err := r.readUint(dir, "memory.usage_in_bytes")
	if err != nil {
		if dirGone(dir, err) {
			return notFound(cgPath)
		}
		return nil // unreadable: memory accounting absent
	}
	b, err := r.read(dir, "memory.stat")
	if err != nil {
		if dirGone(dir, err) {
			return notFound(cgPath)
		}
		return nil
	}
	m := &MemoryStats{Usage: usage}
	var inactiveFile uint64
	fields(b, map[string]*uint64{
		"total_inactive_file": &inactiveFile,
		"total_rss":           &m.RSS,
		"total_cache":         &m.Cache,
		"total_pgfault":       &m.PageFaults,
		"total_pgmajfault":    &m.MajorPageFaults,
	})
	m.WorkingSet = usage - min(usage, inactiveFile)
	if lim, _, err := r.readUint(dir, "memory.limit_in_bytes"); err == nil && lim < v1Unlimited {
		m.Limit = &lim
	}
	if b, err := r.read(dir, "memory.oom_control"); err == nil {
		if v, ok := field(b, "oom_kill"); ok {
			m.OOMKills = &v
		}
	}
	m.setAvailable()
	st.Memory = m
	return nil
}

func (m *MemoryStats) setAvailable() {
	if m.Limit == nil {
		return
	}
	a := *m.Limit - min(*m.Limit, m.WorkingSet)
	m.Available = &a
}

func (r reader) pids(dir, cgPath string, st *Stats) error {
	cur, _, err := r.readUint(dir, "pids.current")
	if err != nil {
		if dirGone(dir, err) {
			return notFound(cgPath)
		}
		return nil
	}
	p := &PidsStats{Current: cur}
	if lim, isMax, err := r.readUint(dir, "pids.max"); err == nil && !isMax {
		p.Limit = &lim
	}
	st.Pids = p
	return nil
}

// readV2 reads the unified hierarchy. cpu.stat is a core file (present
// without the cpu controller); memory.* and pids.* exist only where the
// parent delegates the controller, so their absence is "unavailable".
func (r reader) readV2(root, cgPath string, st *Stats) error {
	dir := filepath.Join(root, cgPath)
	if !exists(dir) {
		return notFound(cgPath)
	}
	if b, err := r.read(dir, "cpu.stat"); err == nil {
		if v, ok := field(b, "usage_usec"); ok {
			st.CPU = &CPUStats{UsageNanos: v * 1000}
		}
	}
	if usage, _, err := r.readUint(dir, "memory.current"); err == nil {
		m := &MemoryStats{Usage: usage}
		if b, err := r.read(dir, "memory.stat"); err == nil {
			var inactiveFile uint64
			fields(b, map[string]*uint64{
				"inactive_file": &inactiveFile,
				"anon":          &m.RSS,
				"file":          &m.Cache,
				"pgfault":       &m.PageFaults,
				"pgmajfault":    &m.MajorPageFaults,
			})
			m.WorkingSet = usage - min(usage, inactiveFile)
			if lim, isMax, err := r.readUint(dir, "memory.max"); err == nil && !isMax {
				m.Limit = &lim
			}
			if b, err := r.read(dir, "memory.events"); err == nil {
				if v, ok := field(b, "oom_kill"); ok {
					m.OOMKills = &v
				}
			}
			m.setAvailable()
			st.Memory = m
		}
	}
	if err := r.pids(dir, cgPath, st); err != nil {
		return err
	}
	// Removed while being read: do not report a half-read cgroup.
	if !exists(dir) {
		return notFound(cgPath)
	}
	return nil
}
