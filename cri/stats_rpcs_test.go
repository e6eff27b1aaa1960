package cri

import (
	"context"
	"slices"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/cgroups"
	"peapod/netns"
	"peapod/sandbox"
)

// The cAdvisor metric names critest v1.37.0 expects descriptors for
// (pkg/validate/pod.go, expectedMetricDescriptorNames).
var critestMetricNames = []string{
	"container_blkio_device_usage_total", "container_cpu_cfs_periods_total", "container_cpu_cfs_throttled_periods_total",
	"container_cpu_cfs_throttled_seconds_total", "container_cpu_system_seconds_total", "container_cpu_usage_seconds_total",
	"container_cpu_user_seconds_total", "container_file_descriptors", "container_fs_inodes_free", "container_fs_inodes_total",
	"container_fs_limit_bytes", "container_fs_reads_bytes_total", "container_fs_reads_total", "container_fs_usage_bytes",
	"container_fs_writes_bytes_total", "container_fs_writes_total", "container_hugetlb_max_usage_bytes",
	"container_hugetlb_usage_bytes", "container_last_seen", "container_memory_cache", "container_memory_failcnt",
	"container_memory_failures_total", "container_memory_kernel_usage", "container_memory_mapped_file",
	"container_memory_max_usage_bytes", "container_memory_rss", "container_memory_swap", "container_memory_usage_bytes",
	"container_memory_working_set_bytes", "container_network_receive_bytes_total", "container_network_receive_errors_total",
	"container_network_receive_packets_dropped_total", "container_network_receive_packets_total",
	"container_network_transmit_bytes_total", "container_network_transmit_errors_total",
	"container_network_transmit_packets_dropped_total", "container_network_transmit_packets_total",
	"container_oom_events_total", "container_pressure_cpu_stalled_seconds_total", "container_pressure_cpu_waiting_seconds_total",
	"container_pressure_io_stalled_seconds_total", "container_pressure_io_waiting_seconds_total",
	"container_pressure_memory_stalled_seconds_total", "container_pressure_memory_waiting_seconds_total",
	"container_processes", "container_sockets", "container_spec_cpu_period", "container_spec_cpu_quota",
	"container_spec_cpu_shares", "container_spec_memory_limit_bytes", "container_spec_memory_reservation_limit_bytes",
	"container_spec_memory_swap_limit_bytes", "container_start_time_seconds", "container_threads", "container_threads_max",
	"container_ulimits_soft",
}

func descriptors(t *testing.T) map[string]*runtime.MetricDescriptor {
	t.Helper()
	resp, err := (&Server{}).ListMetricDescriptors(context.Background(), &runtime.ListMetricDescriptorsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*runtime.MetricDescriptor{}
	for _, d := range resp.Descriptors {
		if out[d.Name] != nil {
			t.Errorf("descriptor %s listed twice", d.Name)
		}
		if d.Help == "" || !slices.Equal(d.LabelKeys[:len(baseLabels)], baseLabels) {
			t.Errorf("descriptor %s: help %q labels %v", d.Name, d.Help, d.LabelKeys)
		}
		out[d.Name] = d
	}
	return out
}

func TestMetricDescriptorsCoverCAdvisorNames(t *testing.T) {
	descs := descriptors(t)
	for _, name := range critestMetricNames {
		if descs[name] == nil {
			t.Errorf("no descriptor for %s", name)
		}
	}
	for name, extra := range map[string][]string{
		"container_memory_failures_total":       {"failure_type", "scope"},
		"container_blkio_device_usage_total":    {"device", "major", "minor", "operation"},
		"container_fs_reads_bytes_total":        {"device"},
		"container_ulimits_soft":                {"ulimit"},
		"container_hugetlb_usage_bytes":         {"pagesize"},
		"container_network_receive_bytes_total": {"interface"},
		"container_cpu_usage_seconds_total":     nil,
	} {
		if got := descs[name].LabelKeys[len(baseLabels):]; !slices.Equal(got, extra) {
			t.Errorf("%s: extra labels %v, want %v", name, got, extra)
		}
	}
}

func p64(v uint64) *uint64 { return &v }

// fullStats is a cgroup where the kernel reports everything.
func fullStats() *cgroups.Stats {
	return &cgroups.Stats{
		CPU: &cgroups.CPUStats{UsageNanos: 7.5e9, UserNanos: p64(5.2e9), SystemNanos: p64(2.3e9)},
		CPUControl: &cgroups.CPUControl{Shares: 1024, Period: 100000, Quota: p64(20000),
			Throttling: &cgroups.CPUThrottling{Periods: 50, ThrottledPeriods: 20, ThrottledNanos: 3.9e9}},
		Memory: &cgroups.MemoryStats{Usage: 100, WorkingSet: 90, RSS: 50, Cache: 40, PageFaults: 1000, MajorPageFaults: 10,
			Limit: p64(67108864), OOMKills: p64(1), LocalPageFaults: p64(600), LocalMajorPageFaults: p64(6), Failcnt: p64(3),
			MaxUsage: p64(200), KernelUsage: p64(30), MappedFile: p64(20), Swap: p64(0), SwapLimit: p64(67108864), Reservation: p64(0)},
		Pids: &cgroups.PidsStats{Current: 4, Limit: p64(100)},
		IO: &cgroups.IOStats{Devices: []cgroups.IODevice{{Major: 254, Minor: 0, Name: "/dev/vda",
			Ops: []cgroups.IOOp{{Name: "Read", Bytes: 4096, Count: 1}, {Name: "Write", Bytes: 8192, Count: 2}, {Name: "Total", Bytes: 12288, Count: 3}}}}},
		Hugetlb: []cgroups.HugetlbStats{{PageSize: "2MB", Usage: 2097152, MaxUsage: p64(4194304)}},
		Pressure: &cgroups.PressureStats{CPU: &cgroups.PSIStats{SomeMicros: 2.5e6, FullMicros: p64(1.5e6)},
			Memory: &cgroups.PSIStats{SomeMicros: 1e6, FullMicros: p64(0)}, IO: &cgroups.PSIStats{SomeMicros: 3e6, FullMicros: p64(1e6)}},
	}
}

type series struct {
	labels []string
	value  uint64
}

func collect(ms []*runtime.Metric) map[string][]series {
	out := map[string][]series{}
	for _, m := range ms {
		out[m.Name] = append(out[m.Name], series{m.LabelValues, m.Value.GetValue()})
	}
	return out
}

func TestPodMetricsFollowTheDescriptors(t *testing.T) {
	descs := descriptors(t)
	now := time.Now()
	ps := &sandbox.PodStats{Timestamp: now, CgroupPath: "/kubepods/pod1", Cgroup: fullStats(),
		Network: []netns.InterfaceStats{{Name: "eth0", RxBytes: 10}}, NetworkTimestamp: now}
	ps.Sandbox.ID, ps.Sandbox.CreatedAt = "sb1", now.Add(-time.Minute)
	ps.Sandbox.Spec.Name, ps.Sandbox.Spec.Namespace = "web", "default"
	// The container's kernel reports no memory PSI and no io full line.
	cst := fullStats()
	cst.Pressure.Memory, cst.Pressure.IO.FullMicros = nil, nil
	cs := &sandbox.ContainerStats{Timestamp: now, CgroupPath: "/kubepods/pod1/c1", Cgroup: cst,
		WritableLayer: &sandbox.LayerUsage{Bytes: 4096, Inodes: 3, Mountpoint: "/var/lib/peapod/images"},
		Filesystem:    &sandbox.FsInfo{Mountpoint: "/var/lib/peapod/images", CapacityBytes: 1 << 30, Inodes: 1000, InodesFree: 900},
		Processes:     &cgroups.ProcessStats{Processes: 2, FDs: 7, Sockets: 1, MaxOpenFiles: p64(1048576)}}
	cs.Container.ID, cs.Container.Config.Name, cs.Container.ImageName, cs.Container.StartedAt = "c1", "app", "busybox:1", now
	ps.Containers = []*sandbox.ContainerStats{cs}

	pm := podMetrics(ps)
	all := append(append([]*runtime.Metric(nil), pm.Metrics...), pm.ContainerMetrics[0].Metrics...)
	for _, m := range all {
		d := descs[m.Name]
		if d == nil || len(d.LabelKeys) != len(m.LabelValues) {
			t.Errorf("%s: %d label values for descriptor %v", m.Name, len(m.LabelValues), d)
		}
	}
	// With everything reported (the pod), every critest name has a series.
	got := collect(all)
	for _, name := range critestMetricNames {
		if len(got[name]) == 0 {
			t.Errorf("no series for %s", name)
		}
	}

	ctr := collect(pm.ContainerMetrics[0].Metrics)
	base := []string{"app", "/kubepods/pod1/c1", "busybox:1", "c1", "default", "web"}
	one := func(name string, want uint64, extra ...string) {
		t.Helper()
		for _, s := range ctr[name] {
			if slices.Equal(s.labels, append(append([]string(nil), base...), extra...)) {
				if s.value != want {
					t.Errorf("%s%v = %d, want %d", name, extra, s.value, want)
				}
				return
			}
		}
		t.Errorf("%s%v missing: %v", name, extra, ctr[name])
	}
	one("container_cpu_usage_seconds_total", 7)
	one("container_cpu_user_seconds_total", 5)
	one("container_cpu_system_seconds_total", 2)
	one("container_cpu_cfs_periods_total", 50)
	one("container_cpu_cfs_throttled_periods_total", 20)
	one("container_cpu_cfs_throttled_seconds_total", 3)
	one("container_spec_cpu_quota", 20000)
	one("container_spec_cpu_period", 100000)
	one("container_spec_cpu_shares", 1024)
	one("container_spec_memory_limit_bytes", 67108864)
	one("container_spec_memory_swap_limit_bytes", 67108864)
	one("container_spec_memory_reservation_limit_bytes", 0)
	one("container_memory_failures_total", 600, "pgfault", "container")
	one("container_memory_failures_total", 6, "pgmajfault", "container")
	one("container_memory_failures_total", 1000, "pgfault", "hierarchy")
	one("container_memory_failures_total", 10, "pgmajfault", "hierarchy")
	one("container_memory_failcnt", 3)
	one("container_memory_max_usage_bytes", 200)
	one("container_memory_kernel_usage", 30)
	one("container_memory_mapped_file", 20)
	one("container_memory_swap", 0)
	one("container_blkio_device_usage_total", 4096, "/dev/vda", "254", "0", "Read")
	one("container_blkio_device_usage_total", 12288, "/dev/vda", "254", "0", "Total")
	one("container_fs_reads_bytes_total", 4096, "/dev/vda")
	one("container_fs_reads_total", 1, "/dev/vda")
	one("container_fs_writes_bytes_total", 8192, "/dev/vda")
	one("container_fs_writes_total", 2, "/dev/vda")
	one("container_hugetlb_usage_bytes", 2097152, "2MB")
	one("container_hugetlb_max_usage_bytes", 4194304, "2MB")
	one("container_pressure_cpu_waiting_seconds_total", 2)
	one("container_pressure_cpu_stalled_seconds_total", 1)
	one("container_pressure_io_waiting_seconds_total", 3)
	one("container_processes", 4) // pids.current where the pids controller counts
	one("container_threads", 4)
	one("container_threads_max", 100)
	one("container_file_descriptors", 7)
	one("container_sockets", 1)
	one("container_ulimits_soft", 1048576, "max_open_files")
	one("container_fs_usage_bytes", 4096, "/var/lib/peapod/images")
	one("container_fs_limit_bytes", 1<<30, "/var/lib/peapod/images")
	one("container_fs_inodes_total", 1000, "/var/lib/peapod/images")
	one("container_fs_inodes_free", 900, "/var/lib/peapod/images")
	if n := len(ctr["container_fs_reads_total"]); n != 1 {
		t.Errorf("fs reads per device: %d series", n)
	}
	for _, name := range []string{"container_pressure_io_stalled_seconds_total", "container_pressure_memory_waiting_seconds_total"} {
		if len(ctr[name]) != 0 {
			t.Errorf("%s reported without PSI data", name)
		}
	}
}

func TestPodMetricsLeaveOutWhatIsNotReported(t *testing.T) {
	now := time.Now()
	st := fullStats()
	st.CPU.UserNanos, st.CPU.SystemNanos = nil, nil
	st.CPUControl.Quota = nil // no quota: no quota, no CFS counters (cAdvisor)
	st.Memory.Swap, st.Memory.MaxUsage, st.Memory.LocalPageFaults = nil, nil, nil
	st.Pids = nil
	st.IO = &cgroups.IOStats{} // blkio without per-device accounting
	st.Pressure, st.Hugetlb = nil, nil
	ps := &sandbox.PodStats{Timestamp: now, CgroupPath: "/p"}
	cs := &sandbox.ContainerStats{Timestamp: now, CgroupPath: "/p/c", Cgroup: st,
		Processes: &cgroups.ProcessStats{Processes: 2, Threads: p64(5), FDs: 3}}
	ps.Containers = []*sandbox.ContainerStats{cs}
	got := collect(podMetrics(ps).ContainerMetrics[0].Metrics)
	for _, name := range []string{"container_cpu_user_seconds_total", "container_spec_cpu_quota", "container_cpu_cfs_periods_total",
		"container_cpu_cfs_throttled_seconds_total", "container_memory_swap", "container_memory_max_usage_bytes",
		"container_memory_failures_total", "container_threads_max", "container_blkio_device_usage_total",
		"container_fs_reads_total", "container_ulimits_soft", "container_fs_inodes_free", "container_fs_usage_bytes",
		"container_start_time_seconds", "container_pressure_cpu_waiting_seconds_total", "container_hugetlb_usage_bytes"} {
		if len(got[name]) != 0 {
			t.Errorf("%s reported: %v", name, got[name])
		}
	}
	// Without the pids controller, processes and threads come from /proc.
	if s := got["container_processes"]; len(s) != 1 || s[0].value != 2 {
		t.Errorf("processes: %v", s)
	}
	if s := got["container_threads"]; len(s) != 1 || s[0].value != 5 {
		t.Errorf("threads: %v", s)
	}
	if s := got["container_spec_cpu_period"]; len(s) != 1 || s[0].value != 100000 {
		t.Errorf("period without a quota: %v", s)
	}
}
