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

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// Stats is what the kernel accounts for one cgroup. A nil section means the
// controller behind it is not available for this cgroup (not mounted on v1,
// not enabled for it on v2, or its files unreadable): absent, not zero.
//
// ReadDetailedStats fills in, besides, what only the cAdvisor-style
// metrics need (the fields and sections marked "detail"); ReadStats leaves
// them nil.
type Stats struct {
	Mode   Mode
	CPU    *CPUStats
	Memory *MemoryStats
	Pids   *PidsStats

	// CPUControl is the cpu controller's configuration and CFS bandwidth
	// accounting (detail).
	CPUControl *CPUControl
	// IO is block I/O per device (detail); nil without the blkio (v1) or
	// io (v2) controller. A device the cgroup never did I/O on is not
	// listed: no devices at all is what a virtual disk without per-cgroup
	// accounting gives.
	IO *IOStats
	// Hugetlb is per huge page size (detail); empty without the hugetlb
	// controller.
	Hugetlb []HugetlbStats
	// Pressure is PSI (detail): cpu.pressure, memory.pressure and
	// io.pressure of the cgroup; nil where the kernel has none (v1).
	Pressure *PressureStats
}

// CPUStats is cumulative CPU time of the cgroup and its descendants.
type CPUStats struct {
	// UsageNanos is total CPU time: cpuacct.usage (v1), cpu.stat
	// usage_usec (v2).
	UsageNanos uint64
	// UserNanos and SystemNanos split it (detail): cpuacct.stat user and
	// system, in USER_HZ ticks (v1), or cpu.stat user_usec and system_usec
	// (v2). Nil when not reported.
	UserNanos, SystemNanos *uint64
}

// CPUControl is what the cpu controller enforces on the cgroup and how
// often it did.
type CPUControl struct {
	// Shares is cpu.shares (v1), or cpu.weight converted to shares the
	// way cAdvisor converts it (v2).
	Shares uint64
	// Period and Quota are the CFS bandwidth period and quota in µs:
	// cpu.cfs_period_us and cpu.cfs_quota_us (v1), cpu.max (v2). Quota
	// is nil without a quota.
	Period uint64
	Quota  *uint64
	// Throttling is nil when cpu.stat does not report it; on v1 it is
	// read for cgroups with a quota only (cAdvisor reports it for those
	// only).
	Throttling *CPUThrottling
}

// CPUThrottling counts CFS bandwidth enforcement: cpu.stat nr_periods,
// nr_throttled and throttled_time (v1, ns) or throttled_usec (v2).
type CPUThrottling struct {
	Periods, ThrottledPeriods, ThrottledNanos uint64
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

	// Detail fields; nil when not read or not reported by this kernel.
	//
	// LocalPageFaults and LocalMajorPageFaults are the cgroup's own page
	// faults, without its descendants: pgfault and pgmajfault of
	// memory.stat (v1). v2 only counts hierarchically: they repeat
	// PageFaults and MajorPageFaults there.
	LocalPageFaults, LocalMajorPageFaults *uint64
	// Failcnt counts hits of the limit: memory.failcnt (v1), max of
	// memory.events (v2).
	Failcnt *uint64
	// MaxUsage is the peak usage: memory.max_usage_in_bytes (v1),
	// memory.peak (v2, Linux 5.19 and later).
	MaxUsage *uint64
	// KernelUsage is kernel memory: memory.kmem.usage_in_bytes (v1),
	// kernel of memory.stat (v2; before Linux 6.1 the sum of its parts:
	// kernel_stack, pagetables, percpu, sock, vmalloc, slab).
	KernelUsage *uint64
	// MappedFile is memory-mapped file pages: total_mapped_file (v1),
	// file_mapped (v2), of memory.stat.
	MappedFile *uint64
	// Swap is swap in use: total_swap of memory.stat (v1, with swap
	// accounting; else memory.memsw.usage_in_bytes minus
	// memory.usage_in_bytes), memory.swap.current (v2).
	Swap *uint64
	// SwapLimit and Reservation are limits as cAdvisor's container spec
	// reports them, 0 standing for unlimited: memory.memsw.limit_in_bytes
	// (v1: memory plus swap) or memory.swap.max (v2), and
	// memory.soft_limit_in_bytes (v1) or memory.min (v2).
	SwapLimit, Reservation *uint64
}

// IOStats is block I/O per device, the cgroup and its descendants
// together.
type IOStats struct {
	Devices []IODevice
}

// IODevice is the I/O of the cgroup on one block device.
type IODevice struct {
	Major, Minor uint32
	// Name is the device node, /dev/<DEVNAME> from sysfs, else
	// "<major>:<minor>".
	Name string
	// Ops are per operation, in the kernel's order and with its names on
	// v1 (Read, Write, Sync, Async, Discard, Total from
	// blkio.throttle.io_service_bytes_recursive and io_serviced_recursive);
	// Read, Write and Discard from io.stat on v2.
	Ops []IOOp
}

// IOOp is the bytes and the number of requests of one operation.
type IOOp struct {
	Name         string
	Bytes, Count uint64
}

// HugetlbStats is the use of one huge page size.
type HugetlbStats struct {
	// PageSize is as the cgroup files name it: "2MB", "1GB".
	PageSize string
	// Usage is hugetlb.<size>.usage_in_bytes (v1), .current (v2).
	Usage uint64
	// MaxUsage is hugetlb.<size>.max_usage_in_bytes (v1); v2 keeps no
	// peak: nil.
	MaxUsage *uint64
}

// PressureStats is pressure stall information per resource; a nil
// resource is one the kernel does not report.
type PressureStats struct {
	CPU, Memory, IO *PSIStats
}

// PSIStats are the cumulative stall times in µs: some task stalled
// (waiting), and all tasks stalled at once (full; nil when not reported).
type PSIStats struct {
	SomeMicros uint64
	FullMicros *uint64
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

func isNotExist(err error) bool {
	// ENODEV: read from a cgroup removed meanwhile (systemd drops empty scopes).
	return errors.Is(err, unix.ENOENT) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}

// ContainerCgroupPath is the cgroup of container id in the pod cgroup
// podPath: <podPath>/<id>, where the shim creates it.
func ContainerCgroupPath(podPath, id string) string { return filepath.Join(podPath, id) }

// ReadStats reads the accounting of the cgroup at cgPath (a cgroupfs path
// relative to each hierarchy's root, such as PodCgroup.PodPath) from every
// hierarchy that accounts something. A cgroup that does not exist yields
// an error wrapping ErrNotFound.
func ReadStats(cgPath string) (*Stats, error) { return readStats(cgPath, false) }

// ReadDetailedStats is ReadStats plus the detail only the metrics need
// (CPU split and CFS accounting, memory extras and limits, block I/O, huge
// pages, pressure): some twenty more small files per cgroup on v1.
func ReadDetailedStats(cgPath string) (*Stats, error) { return readStats(cgPath, true) }

func readStats(cgPath string, detail bool) (*Stats, error) {
	if err := checkPath(cgPath); err != nil {
		return nil, fmt.Errorf("cgroup stats: %w", err)
	}
	h, err := statsHierarchies()
	if err != nil {
		return nil, err
	}
	r := reader{buf: getBuf(), detail: detail, dir: newDirHandle()}
	defer putBuf(r.buf)
	defer r.dir.close()
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
			if notDelegated(h.roots[""], cgPath, ErrNotFound) {
				return 0, false, nil
			}
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
		if notDelegated(root, cgPath, err) {
			return 0, false, nil
		}
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

// hierarchies is the layout stats read: the host's mode and its hierarchy
// roots (kept for a while by hierarchyRoots).
type hierarchies struct {
	mode  Mode
	roots map[string]string
}

// v1Roots finds the v1 hierarchies; tests point it at a fake tree.
var v1Roots = func() (map[string]string, error) { return hierarchyRoots(ModeV1) }

func statsHierarchies() (*hierarchies, error) {
	h := &hierarchies{mode: hostMode()}
	if h.mode == ModeV2 {
		h.roots = map[string]string{"": unifiedMountpoint}
		return h, nil
	}
	roots, err := v1Roots()
	if err != nil {
		return nil, err
	}
	h.roots = roots
	return h, nil
}

// reader reads small cgroup files into one reused buffer; detail asks for
// the detail fields too. With a dirHandle, files read one after the other
// from one directory are opened relative to it.
type reader struct {
	buf    *[]byte
	detail bool
	dir    *dirHandle
}

// dirHandle is the directory a reader last read from. The first file of a
// directory is opened by its path; from the second on, the directory is
// kept open and files are opened relative to it, so that a cgroup's long
// path is walked once per hierarchy rather than once per file.
type dirHandle struct {
	path string
	fd   int // -1: not opened
}

func newDirHandle() *dirHandle { return &dirHandle{fd: -1} }

func (d *dirHandle) close() {
	if d != nil && d.fd >= 0 {
		unix.Close(d.fd)
		d.fd = -1
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

func (r reader) open(dir, name string) (int, error) {
	const flags = unix.O_RDONLY | unix.O_CLOEXEC
	d := r.dir
	if d == nil {
		return unix.Open(dir+"/"+name, flags, 0)
	}
	if d.path != dir {
		d.close()
		d.path = dir
		return unix.Open(dir+"/"+name, flags, 0)
	}
	if d.fd < 0 {
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return -1, err
		}
		d.fd = fd
	}
	return unix.Openat(d.fd, name, flags, 0)
}

// read returns the content of dir/name, valid until the next read. It uses
// plain open/read/close: cgroup files are small and this is the hot path.
func (r reader) read(dir, name string) ([]byte, error) {
	fd, err := r.open(dir, name)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: dir + "/" + name, Err: err}
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
			return nil, &os.PathError{Op: "read", Path: dir + "/" + name, Err: err}
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
	hugetlb := func(dir, _ string, st *Stats) error {
		r.hugetlb(dir, "usage_in_bytes", "max_usage_in_bytes", st)
		return nil
	}
	// Each hierarchy's reader; the detailed ones only when asked for.
	readers := []struct {
		controller string
		detail     bool
		read       func(dir, cgPath string, st *Stats) error
	}{
		{"cpuacct", false, r.cpuV1},
		{"memory", false, r.memoryV1},
		{"pids", false, r.pids},
		{"cpu", true, r.cpuControlV1},
		{"blkio", true, r.blkioV1},
		{"hugetlb", true, hugetlb},
	}
	seen := false
	for _, c := range readers {
		root, ok := roots[c.controller]
		if !ok || (c.detail && !r.detail) {
			continue
		}
		seen = true
		if err := c.read(filepath.Join(root, cgPath), cgPath, st); err != nil && !notDelegated(root, cgPath, err) {
			return err
		}
	}
	if !seen {
		// No accounting hierarchy at all: the cgroup can still be told
		// apart from a missing one through any other hierarchy.
		for _, root := range roots {
			if exists(filepath.Join(root, cgPath)) || notDelegated(root, cgPath, ErrNotFound) {
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
	if st.CPU != nil && r.detail {
		if b, err := r.read(dir, "cpuacct.stat"); err == nil {
			var user, system uint64
			if fields(b, map[string]*uint64{"user": &user, "system": &system}) == 2 {
				user, system = user*nanosPerTick, system*nanosPerTick
				st.CPU.UserNanos, st.CPU.SystemNanos = &user, &system
			}
		}
	}
	return nil
}

// nanosPerTick converts cpuacct.stat's clock ticks: USER_HZ is 100 on
// every Linux architecture.
const nanosPerTick = uint64(time.Second) / 100

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
	keys := map[string]*uint64{
		"total_inactive_file": &inactiveFile,
		"total_rss":           &m.RSS,
		"total_cache":         &m.Cache,
		"total_pgfault":       &m.PageFaults,
		"total_pgmajfault":    &m.MajorPageFaults,
	}
	var d memDetailV1
	if r.detail {
		d.keys(keys)
	}
	fields(b, keys)
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
	if r.detail {
		r.memoryDetailV1(dir, &d, m)
	}
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
		if notDelegated(root, cgPath, ErrNotFound) {
			return nil // rootless without delegation: nothing is accounted
		}
		return notFound(cgPath)
	}
	if b, err := r.read(dir, "cpu.stat"); err == nil {
		if v, ok := field(b, "usage_usec"); ok {
			st.CPU = &CPUStats{UsageNanos: v * 1000}
			if r.detail {
				r.cpuDetailV2(dir, b, st)
			}
		}
	}
	if usage, _, err := r.readUint(dir, "memory.current"); err == nil {
		m := &MemoryStats{Usage: usage}
		if b, err := r.read(dir, "memory.stat"); err == nil {
			var inactiveFile uint64
			keys := map[string]*uint64{
				"inactive_file": &inactiveFile,
				"anon":          &m.RSS,
				"file":          &m.Cache,
				"pgfault":       &m.PageFaults,
				"pgmajfault":    &m.MajorPageFaults,
			}
			var d memDetailV2
			if r.detail {
				d.keys(keys)
			}
			fields(b, keys)
			m.WorkingSet = usage - min(usage, inactiveFile)
			if lim, isMax, err := r.readUint(dir, "memory.max"); err == nil && !isMax {
				m.Limit = &lim
			}
			if b, err := r.read(dir, "memory.events"); err == nil {
				if v, ok := field(b, "oom_kill"); ok {
					m.OOMKills = &v
				}
				if v, ok := field(b, "max"); ok && r.detail {
					m.Failcnt = &v
				}
			}
			m.setAvailable()
			if r.detail {
				r.memoryDetailV2(dir, &d, m)
			}
			st.Memory = m
		}
	}
	if err := r.pids(dir, cgPath, st); err != nil {
		return err
	}
	if r.detail {
		r.ioV2(dir, st)
		r.hugetlb(dir, "current", "", st)
		r.pressure(dir, st)
	}
	// Removed while being read: do not report a half-read cgroup.
	if !exists(dir) {
		return notFound(cgPath)
	}
	return nil
}

// ---- Detail (ReadDetailedStats) ----

// absent marks a memory.stat or cpu.stat key that was not found.
const absent = ^uint64(0)

func ptr(v uint64) *uint64 { return &v }

// present returns v as a pointer, nil when absent.
func present(v uint64) *uint64 {
	if v == absent {
		return nil
	}
	return &v
}

// specLimit is a limit as cAdvisor's container spec reports it: 0 for
// unlimited (or not limitable here).
func specLimit(v uint64, err error, isMax bool) *uint64 {
	if err != nil || isMax || v >= v1Unlimited {
		return ptr(0)
	}
	return &v
}

// memDetailV1 holds the extra memory.stat keys of v1.
type memDetailV1 struct{ pgfault, pgmajfault, mapped, swap uint64 }

func (d *memDetailV1) keys(k map[string]*uint64) {
	*d = memDetailV1{absent, absent, absent, absent}
	k["pgfault"], k["pgmajfault"] = &d.pgfault, &d.pgmajfault
	k["total_mapped_file"], k["total_swap"] = &d.mapped, &d.swap
}

func (r reader) memoryDetailV1(dir string, d *memDetailV1, m *MemoryStats) {
	m.LocalPageFaults, m.LocalMajorPageFaults = present(d.pgfault), present(d.pgmajfault)
	m.MappedFile = present(d.mapped)
	if v, _, err := r.readUint(dir, "memory.failcnt"); err == nil {
		m.Failcnt = &v
	}
	if v, _, err := r.readUint(dir, "memory.max_usage_in_bytes"); err == nil {
		m.MaxUsage = &v
	}
	if v, _, err := r.readUint(dir, "memory.kmem.usage_in_bytes"); err == nil {
		m.KernelUsage = &v
	}
	m.Swap = present(d.swap)
	if m.Swap == nil {
		// total_swap is listed only with swap accounting, as memsw is;
		// kept as a fallback for kernels that list one and not the other.
		if v, _, err := r.readUint(dir, "memory.memsw.usage_in_bytes"); err == nil {
			m.Swap = ptr(v - min(v, m.Usage))
		}
	}
	v, isMax, err := r.readUint(dir, "memory.memsw.limit_in_bytes")
	m.SwapLimit = specLimit(v, err, isMax)
	v, isMax, err = r.readUint(dir, "memory.soft_limit_in_bytes")
	m.Reservation = specLimit(v, err, isMax)
}

// memDetailV2 holds the extra memory.stat keys of v2.
type memDetailV2 struct {
	mapped, kernel uint64
	parts          [6]uint64 // kernel_stack pagetables percpu sock vmalloc slab
}

var kernelParts = [6]string{"kernel_stack", "pagetables", "percpu", "sock", "vmalloc", "slab"}

func (d *memDetailV2) keys(k map[string]*uint64) {
	d.mapped, d.kernel = absent, absent
	k["file_mapped"], k["kernel"] = &d.mapped, &d.kernel
	for i, name := range kernelParts {
		d.parts[i] = absent
		k[name] = &d.parts[i]
	}
}

func (r reader) memoryDetailV2(dir string, d *memDetailV2, m *MemoryStats) {
	// v2 counts faults hierarchically only.
	m.LocalPageFaults, m.LocalMajorPageFaults = ptr(m.PageFaults), ptr(m.MajorPageFaults)
	m.MappedFile = present(d.mapped)
	m.KernelUsage = present(d.kernel)
	if m.KernelUsage == nil {
		var sum uint64
		found := false
		for _, v := range d.parts {
			if v != absent {
				sum, found = sum+v, true
			}
		}
		if found {
			m.KernelUsage = &sum
		}
	}
	if v, _, err := r.readUint(dir, "memory.peak"); err == nil {
		m.MaxUsage = &v
	}
	if v, _, err := r.readUint(dir, "memory.swap.current"); err == nil {
		m.Swap = &v
	}
	v, isMax, err := r.readUint(dir, "memory.swap.max")
	m.SwapLimit = specLimit(v, err, isMax)
	v, isMax, err = r.readUint(dir, "memory.min")
	m.Reservation = specLimit(v, err, isMax)
}

// cpuControlV1 reads the v1 cpu controller: shares, CFS bandwidth and
// its throttling counters.
func (r reader) cpuControlV1(dir, cgPath string, st *Stats) error {
	shares, _, err := r.readUint(dir, "cpu.shares")
	if err != nil {
		if dirGone(dir, err) {
			return notFound(cgPath)
		}
		return nil
	}
	cc := &CPUControl{Shares: shares}
	if v, _, err := r.readUint(dir, "cpu.cfs_period_us"); err == nil {
		cc.Period = v
	}
	if b, err := r.read(dir, "cpu.cfs_quota_us"); err == nil {
		// -1 without a quota.
		if q, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64); err == nil && q > 0 {
			cc.Quota = ptr(uint64(q))
		}
	}
	if cc.Quota != nil { // what is throttled without a quota is never reported
		if b, err := r.read(dir, "cpu.stat"); err == nil {
			var t CPUThrottling
			if fields(b, map[string]*uint64{"nr_periods": &t.Periods, "nr_throttled": &t.ThrottledPeriods, "throttled_time": &t.ThrottledNanos}) == 3 {
				cc.Throttling = &t
			}
		}
	}
	st.CPUControl = cc
	return nil
}

// cpuDetailV2 takes the CPU split and throttling from cpuStat (the
// content of cpu.stat, parsed before any other read reuses the buffer)
// and the configuration from cpu.max and cpu.weight, which exist where the
// cpu controller is enabled.
func (r reader) cpuDetailV2(dir string, cpuStat []byte, st *Stats) {
	user, system, periods, throttled, throttledUsec := absent, absent, absent, absent, absent
	fields(cpuStat, map[string]*uint64{
		"user_usec": &user, "system_usec": &system,
		"nr_periods": &periods, "nr_throttled": &throttled, "throttled_usec": &throttledUsec,
	})
	if user != absent && system != absent {
		st.CPU.UserNanos, st.CPU.SystemNanos = ptr(user*1000), ptr(system*1000)
	}
	var thr *CPUThrottling
	if periods != absent && throttled != absent && throttledUsec != absent {
		thr = &CPUThrottling{Periods: periods, ThrottledPeriods: throttled, ThrottledNanos: throttledUsec * 1000}
	}
	b, err := r.read(dir, "cpu.max") // "max 100000" or "20000 100000"
	if err != nil {
		return
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return
	}
	period, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return
	}
	cc := &CPUControl{Period: period, Throttling: thr}
	if f[0] != "max" {
		if q, err := strconv.ParseUint(f[0], 10, 64); err == nil {
			cc.Quota = &q
		}
	}
	if w, _, err := r.readUint(dir, "cpu.weight"); err == nil && w >= 1 && w <= 10000 {
		// cAdvisor's conversion, the inverse of the one the kubelet and
		// runc apply to shares.
		cc.Shares = 2 + (w-1)*262142/9999
	}
	st.CPUControl = cc
}

// blkioV1 reads the throttle layer's per-device accounting (it sees every
// bio, whatever the I/O scheduler), recursive where the kernel has it.
func (r reader) blkioV1(dir, cgPath string, st *Stats) error {
	var devs []IODevice
	for i, name := range [2]string{"blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced"} {
		b, err := r.read(dir, name+"_recursive")
		if err != nil {
			b, err = r.read(dir, name)
		}
		if err != nil {
			if dirGone(dir, err) {
				return notFound(cgPath)
			}
			if i == 0 {
				return nil // no blkio accounting
			}
			break
		}
		devs = parseBlkioV1(b, devs, i == 0)
		if len(devs) == 0 {
			break // no I/O accounted on any device: nothing to count
		}
	}
	for i := range devs {
		devs[i].Name = deviceName(devs[i].Major, devs[i].Minor)
	}
	st.IO = &IOStats{Devices: devs}
	return nil
}

// parseBlkioV1 adds lines "8:0 Read 4096" to devs, as bytes or counts.
func parseBlkioV1(b []byte, devs []IODevice, isBytes bool) []IODevice {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		f := bytes.Fields(line)
		if len(f) != 3 { // "Total 1234" closes the file
			continue
		}
		major, minor, ok := parseDevice(f[0])
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(string(f[2]), 10, 64)
		if err != nil {
			continue
		}
		op := ioOp(device(&devs, major, minor), opName(f[1]))
		if isBytes {
			op.Bytes = v
		} else {
			op.Count = v
		}
	}
	return devs
}

// ioV2 reads io.stat: "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0".
func (r reader) ioV2(dir string, st *Stats) {
	b, err := r.read(dir, "io.stat")
	if err != nil {
		return // io not enabled for this cgroup
	}
	var devs []IODevice
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		f := bytes.Fields(line)
		if len(f) < 2 {
			continue
		}
		major, minor, ok := parseDevice(f[0])
		if !ok {
			continue
		}
		var d *IODevice
		for _, kv := range f[1:] {
			k, v, ok := bytes.Cut(kv, []byte("="))
			if !ok {
				continue
			}
			var name string
			var isBytes bool
			switch string(k) {
			case "rbytes", "rios":
				name, isBytes = "Read", k[1] == 'b'
			case "wbytes", "wios":
				name, isBytes = "Write", k[1] == 'b'
			case "dbytes", "dios":
				name, isBytes = "Discard", k[1] == 'b'
			default:
				continue
			}
			n, err := strconv.ParseUint(string(v), 10, 64)
			if err != nil {
				continue
			}
			if d == nil {
				d = device(&devs, major, minor)
			}
			op := ioOp(d, name)
			if isBytes {
				op.Bytes = n
			} else {
				op.Count = n
			}
		}
	}
	for i := range devs {
		devs[i].Name = deviceName(devs[i].Major, devs[i].Minor)
	}
	st.IO = &IOStats{Devices: devs}
}

func parseDevice(b []byte) (major, minor uint32, ok bool) {
	ma, mi, ok := bytes.Cut(b, []byte(":"))
	if !ok {
		return 0, 0, false
	}
	x, err1 := strconv.ParseUint(string(ma), 10, 32)
	y, err2 := strconv.ParseUint(string(mi), 10, 32)
	return uint32(x), uint32(y), err1 == nil && err2 == nil
}

func device(devs *[]IODevice, major, minor uint32) *IODevice {
	for i := range *devs {
		if d := &(*devs)[i]; d.Major == major && d.Minor == minor {
			return d
		}
	}
	*devs = append(*devs, IODevice{Major: major, Minor: minor})
	return &(*devs)[len(*devs)-1]
}

func ioOp(d *IODevice, name string) *IOOp {
	for i := range d.Ops {
		if d.Ops[i].Name == name {
			return &d.Ops[i]
		}
	}
	d.Ops = append(d.Ops, IOOp{Name: name})
	return &d.Ops[len(d.Ops)-1]
}

// opName interns the v1 operation names.
func opName(b []byte) string {
	for _, n := range [...]string{"Read", "Write", "Sync", "Async", "Discard", "Total"} {
		if string(b) == n {
			return n
		}
	}
	return string(b)
}

var (
	// sysDevBlock is where block devices are found by number; tests
	// repoint it.
	sysDevBlock = "/sys/dev/block"
	devNames    sync.Map // major<<32|minor -> string
)

// deviceName is the node of a block device, /dev/<DEVNAME>, as cAdvisor
// labels it; "<major>:<minor>" when sysfs does not know it.
func deviceName(major, minor uint32) string {
	key := uint64(major)<<32 | uint64(minor)
	if v, ok := devNames.Load(key); ok {
		return v.(string)
	}
	num := strconv.FormatUint(uint64(major), 10) + ":" + strconv.FormatUint(uint64(minor), 10)
	name := num
	if b, err := os.ReadFile(filepath.Join(sysDevBlock, num, "uevent")); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "DEVNAME="); ok && v != "" {
				name = "/dev/" + v
				break
			}
		}
		devNames.Store(key, name) // devices known to sysfs keep their name
	}
	return name
}

// hugePageSizes lists the huge page sizes as the cgroup files name them;
// tests replace it.
var hugePageSizes = cgroups.HugePageSizes

// hugetlb reads hugetlb.<size>.<usage> (and .<maxUsage> unless empty) for
// every huge page size.
func (r reader) hugetlb(dir, usage, maxUsage string, st *Stats) {
	for _, size := range hugePageSizes() {
		v, _, err := r.readUint(dir, "hugetlb."+size+"."+usage)
		if err != nil {
			continue
		}
		h := HugetlbStats{PageSize: size, Usage: v}
		if maxUsage != "" {
			if v, _, err := r.readUint(dir, "hugetlb."+size+"."+maxUsage); err == nil {
				h.MaxUsage = &v
			}
		}
		st.Hugetlb = append(st.Hugetlb, h)
	}
}

// pressure reads the PSI files of a v2 cgroup.
func (r reader) pressure(dir string, st *Stats) {
	var p PressureStats
	for _, res := range [...]struct {
		file string
		dst  **PSIStats
	}{{"cpu.pressure", &p.CPU}, {"memory.pressure", &p.Memory}, {"io.pressure", &p.IO}} {
		if b, err := r.read(dir, res.file); err == nil {
			*res.dst = parsePSI(b)
		}
	}
	if p.CPU != nil || p.Memory != nil || p.IO != nil {
		st.Pressure = &p
	}
}

// parsePSI parses "some avg10=0.00 avg60=0.00 avg300=0.00 total=123" and
// the same for "full".
func parsePSI(b []byte) *PSIStats {
	var p PSIStats
	some := false
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		kind, rest, ok := bytes.Cut(line, []byte(" "))
		if !ok {
			continue
		}
		var total uint64
		found := false
		for _, kv := range bytes.Fields(rest) {
			if v, ok := bytes.CutPrefix(kv, []byte("total=")); ok {
				n, err := strconv.ParseUint(string(v), 10, 64)
				total, found = n, err == nil
			}
		}
		if !found {
			continue
		}
		switch string(kind) {
		case "some":
			p.SomeMicros, some = total, true
		case "full":
			p.FullMicros = ptr(total)
		}
	}
	if !some {
		return nil
	}
	return &p
}

// ---- Processes ----

// ProcessStats is what the processes of a cgroup hold, from /proc.
type ProcessStats struct {
	// Processes is the number of processes listed in the cgroup's own
	// cgroup.procs (as cAdvisor counts them).
	Processes uint64
	// Threads sums Threads: of their /proc/<pid>/status; nil unless
	// asked for (the pids controller counts tasks more cheaply).
	Threads *uint64
	// FDs counts their open file descriptors, Sockets those that are
	// sockets.
	FDs, Sockets uint64
	// MaxOpenFiles is the soft RLIMIT_NOFILE of the root process (a
	// container's init) from /proc/<pid>/limits; nil when it is not in
	// the cgroup (any more) or the limit is unlimited.
	MaxOpenFiles *uint64
}

// procRoot is where /proc is; tests repoint it.
var procRoot = "/proc"

// ReadProcessStats lists the processes of the cgroup cgPath and counts
// their file descriptors and sockets (and their threads when
// countThreads), and reads the open files limit of rootPid if it is one
// of them. A cgroup that does not exist yields an error wrapping
// ErrNotFound. Processes that exit meanwhile are skipped.
func ReadProcessStats(cgPath string, rootPid int, countThreads bool) (*ProcessStats, error) {
	if err := checkPath(cgPath); err != nil {
		return nil, fmt.Errorf("cgroup processes: %w", err)
	}
	h, err := statsHierarchies()
	if err != nil {
		return nil, err
	}
	root := procsRoot(h, cgPath)
	if root == "" {
		return nil, fmt.Errorf("cgroup processes of %s: no hierarchy", cgPath)
	}
	dir := filepath.Join(root, cgPath)
	r := reader{buf: getBuf()}
	defer putBuf(r.buf)
	b, err := r.read(dir, "cgroup.procs")
	if err != nil {
		if dirGone(dir, err) {
			return nil, notFound(cgPath)
		}
		return nil, fmt.Errorf("cgroup processes of %s: %w", cgPath, err)
	}
	var pids []int
	for f := range bytes.FieldsSeq(b) {
		if pid, err := strconv.Atoi(string(f)); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	ps := &ProcessStats{Processes: uint64(len(pids))}
	var threads uint64
	link := make([]byte, 64)
	for _, pid := range pids {
		pdir := procRoot + "/" + strconv.Itoa(pid)
		fds, sockets := countFDs(pdir+"/fd", link)
		ps.FDs += fds
		ps.Sockets += sockets
		if countThreads {
			if b, err := r.read(pdir, "status"); err == nil {
				threads += statusThreads(b)
			}
		}
		if pid == rootPid {
			if b, err := r.read(pdir, "limits"); err == nil {
				ps.MaxOpenFiles = softLimit(b, "Max open files")
			}
		}
	}
	if countThreads {
		ps.Threads = &threads
	}
	return ps, nil
}

// procsRoot picks the hierarchy whose cgroup.procs lists a cgroup's
// processes: the unified one, else one of the controllers every container
// cgroup is created in (rootless: one that was delegated).
func procsRoot(h *hierarchies, cgPath string) string {
	if h.mode == ModeV2 {
		return h.roots[""]
	}
	for _, c := range []string{"pids", "cpuacct", "cpu", "memory", "devices", "freezer"} {
		if root, ok := h.roots[c]; ok && !notDelegated(root, cgPath, ErrNotFound) {
			return root
		}
	}
	return ""
}

// countFDs counts the entries of a /proc/<pid>/fd directory and those
// that link to a socket ("socket:[inode]").
func countFDs(dir string, link []byte) (fds, sockets uint64) {
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, 0 // exited, or a kernel thread
	}
	f := os.NewFile(uintptr(dfd), dir)
	defer f.Close()
	names, _ := f.Readdirnames(-1)
	for _, n := range names {
		fds++
		if k, err := unix.Readlinkat(dfd, n, link); err == nil && bytes.HasPrefix(link[:k], []byte("socket:")) {
			sockets++
		}
	}
	return fds, sockets
}

// statusThreads finds "Threads:\t3" in /proc/<pid>/status.
func statusThreads(b []byte) uint64 {
	i := bytes.Index(b, []byte("\nThreads:"))
	if i < 0 {
		return 0
	}
	line := b[i+len("\nThreads:"):]
	if j := bytes.IndexByte(line, '\n'); j >= 0 {
		line = line[:j]
	}
	v, _ := strconv.ParseUint(string(bytes.TrimSpace(line)), 10, 64)
	return v
}

// softLimit finds the soft value of a /proc/<pid>/limits row ("Max open
// files   1024   4096   files"); nil when unlimited or not found.
func softLimit(b []byte, name string) *uint64 {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		rest, ok := bytes.CutPrefix(line, []byte(name))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) == 0 {
			return nil
		}
		v, err := strconv.ParseUint(string(f[0]), 10, 64)
		if err != nil { // "unlimited"
			return nil
		}
		return &v
	}
	return nil
}
