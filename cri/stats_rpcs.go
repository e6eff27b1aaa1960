package cri

import (
	"context"
	"strconv"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/cgroups"
	"peapod/sandbox"
)

// The stats RPCs. Values come from the sandbox package (cgroups, the pod
// netns, the image store); what a host cannot account (a controller not
// mounted or not delegated) is left unset, never reported as zero.

func (s *Server) ContainerStats(ctx context.Context, req *runtime.ContainerStatsRequest) (*runtime.ContainerStatsResponse, error) {
	if req.GetContainerId() == "" {
		return nil, invalid("container_id is required")
	}
	cs, err := s.sandboxes.ContainerStats(ctx, req.GetContainerId())
	if err != nil {
		return nil, grpcError(err)
	}
	return &runtime.ContainerStatsResponse{Stats: crContainerStats(cs)}, nil
}

func (s *Server) ListContainerStats(ctx context.Context, req *runtime.ListContainerStatsRequest) (*runtime.ListContainerStatsResponse, error) {
	var f sandbox.ContainerFilter
	if rf := req.GetFilter(); rf != nil {
		f.ID, f.SandboxID, f.Selector = rf.GetId(), rf.GetPodSandboxId(), rf.GetLabelSelector()
	}
	list, err := s.sandboxes.ListContainerStats(ctx, f)
	if err != nil {
		return nil, grpcError(err)
	}
	resp := &runtime.ListContainerStatsResponse{Stats: make([]*runtime.ContainerStats, 0, len(list))}
	for _, cs := range list {
		resp.Stats = append(resp.Stats, crContainerStats(cs))
	}
	return resp, nil
}

func (s *Server) PodSandboxStats(ctx context.Context, req *runtime.PodSandboxStatsRequest) (*runtime.PodSandboxStatsResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod_sandbox_id is required")
	}
	ps, err := s.sandboxes.PodStats(ctx, req.GetPodSandboxId())
	if err != nil {
		return nil, grpcError(err)
	}
	return &runtime.PodSandboxStatsResponse{Stats: crPodStats(ps)}, nil
}

func (s *Server) ListPodSandboxStats(ctx context.Context, req *runtime.ListPodSandboxStatsRequest) (*runtime.ListPodSandboxStatsResponse, error) {
	var f sandbox.Filter
	if rf := req.GetFilter(); rf != nil {
		f.ID, f.Selector = rf.GetId(), rf.GetLabelSelector()
	}
	list, err := s.sandboxes.ListPodStats(ctx, f)
	if err != nil {
		return nil, grpcError(err)
	}
	resp := &runtime.ListPodSandboxStatsResponse{Stats: make([]*runtime.PodSandboxStats, 0, len(list))}
	for _, ps := range list {
		resp.Stats = append(resp.Stats, crPodStats(ps))
	}
	return resp, nil
}

func u64(v uint64) *runtime.UInt64Value { return &runtime.UInt64Value{Value: v} }

func u64p(v *uint64) *runtime.UInt64Value {
	if v == nil {
		return nil
	}
	return u64(*v)
}

func crContainerStats(cs *sandbox.ContainerStats) *runtime.ContainerStats {
	c := &cs.Container
	out := &runtime.ContainerStats{
		Attributes: &runtime.ContainerAttributes{
			Id:          c.ID,
			Metadata:    &runtime.ContainerMetadata{Name: c.Config.Name, Attempt: c.Config.Attempt},
			Labels:      c.Config.Labels,
			Annotations: c.Config.Annotations,
		},
	}
	ts := cs.Timestamp.UnixNano()
	out.Cpu, out.Memory = crCPU(ts, cs.Cgroup, cs.CPUNanoCores), crMemory(ts, cs.Cgroup)
	if l := cs.WritableLayer; l != nil {
		out.WritableLayer = &runtime.FilesystemUsage{
			Timestamp:  l.Timestamp.UnixNano(),
			FsId:       &runtime.FilesystemIdentifier{Mountpoint: l.Mountpoint},
			UsedBytes:  u64(l.Bytes),
			InodesUsed: u64(l.Inodes),
		}
	}
	return out
}

func crCPU(ts int64, st *sandbox.CgroupStats, rate *uint64) *runtime.CpuUsage {
	if st == nil || st.CPU == nil {
		return nil
	}
	return &runtime.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: u64(st.CPU.UsageNanos), UsageNanoCores: u64p(rate)}
}

func crMemory(ts int64, st *sandbox.CgroupStats) *runtime.MemoryUsage {
	if st == nil || st.Memory == nil {
		return nil
	}
	m := st.Memory
	return &runtime.MemoryUsage{
		Timestamp:       ts,
		WorkingSetBytes: u64(m.WorkingSet),
		AvailableBytes:  u64p(m.Available),
		UsageBytes:      u64(m.Usage),
		RssBytes:        u64(m.RSS),
		PageFaults:      u64(m.PageFaults),
		MajorPageFaults: u64(m.MajorPageFaults),
	}
}

func crPodStats(ps *sandbox.PodStats) *runtime.PodSandboxStats {
	sb := &ps.Sandbox
	ts := ps.Timestamp.UnixNano()
	linux := &runtime.LinuxPodSandboxStats{
		Cpu:    crCPU(ts, ps.Cgroup, ps.CPUNanoCores),
		Memory: crMemory(ts, ps.Cgroup),
	}
	if ps.Cgroup != nil && ps.Cgroup.Pids != nil {
		linux.Process = &runtime.ProcessUsage{Timestamp: ts, ProcessCount: u64(ps.Cgroup.Pids.Current)}
	}
	if ps.Network != nil {
		n := &runtime.NetworkUsage{Timestamp: ps.NetworkTimestamp.UnixNano()}
		for _, i := range ps.Network {
			iu := &runtime.NetworkInterfaceUsage{
				Name:    i.Name,
				RxBytes: u64(i.RxBytes), RxErrors: u64(i.RxErrors),
				TxBytes: u64(i.TxBytes), TxErrors: u64(i.TxErrors),
			}
			if i.Name == ps.DefaultInterface {
				n.DefaultInterface = iu
			}
			n.Interfaces = append(n.Interfaces, iu)
		}
		linux.Network = n
	}
	for _, cs := range ps.Containers {
		linux.Containers = append(linux.Containers, crContainerStats(cs))
	}
	return &runtime.PodSandboxStats{
		Attributes: &runtime.PodSandboxAttributes{
			Id:          sb.ID,
			Metadata:    metadata(sb),
			Labels:      sb.Spec.Labels,
			Annotations: sb.Spec.Annotations,
		},
		Linux: linux,
	}
}

// Metrics in cAdvisor's names, labels and help texts, so that a kubelet
// with PodAndContainerStatsFromCRI serves /metrics/cadvisor from them.
// Label values follow cAdvisor: for a container, container is its name, id
// its cgroup path, name its id and image the image it was created from;
// the pod cgroup's series (the whole pod, network included) have empty
// container, name and image, as cAdvisor's pod cgroup series do.
//
// Every value comes from the kernel (cgroup files, /proc, statfs, the pod's
// netns) or from the records of the pod and container; what this host does
// not account is absent, never a made-up zero. Limits follow cAdvisor's
// spec: 0 is unlimited. Per-process counts (file descriptors, sockets,
// ulimits) are read for containers, from their own processes only.
//
// CRI metric values are integers: seconds are whole seconds (as CRI-O
// reports them); the nanosecond counter is in the stats RPCs.

var (
	baseLabels     = []string{"container", "id", "image", "name", "namespace", "pod"}
	networkLabels  = withLabels("interface")
	fsLabels       = withLabels("device")
	blkioLabels    = withLabels("device", "major", "minor", "operation")
	failuresLabels = withLabels("failure_type", "scope")
	hugetlbLabels  = withLabels("pagesize")
	ulimitLabels   = withLabels("ulimit")
)

func withLabels(extra ...string) []string {
	return append(append([]string(nil), baseLabels...), extra...)
}

type metricDef struct {
	desc *runtime.MetricDescriptor
	typ  runtime.MetricType
}

// allMetricDefs lists every metric def declares, in declaration order.
var allMetricDefs []metricDef

func def(name, help string, typ runtime.MetricType, labels []string) metricDef {
	d := metricDef{&runtime.MetricDescriptor{Name: name, Help: help, LabelKeys: labels}, typ}
	allMetricDefs = append(allMetricDefs, d)
	return d
}

const (
	counter = runtime.MetricType_COUNTER
	gauge   = runtime.MetricType_GAUGE
)

var (
	// CPU
	mCPUUsage            = def("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", counter, baseLabels)
	mCPUUser             = def("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", counter, baseLabels)
	mCPUSystem           = def("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", counter, baseLabels)
	mCFSPeriods          = def("container_cpu_cfs_periods_total", "Number of elapsed enforcement period intervals.", counter, baseLabels)
	mCFSThrottledPeriods = def("container_cpu_cfs_throttled_periods_total", "Number of throttled period intervals.", counter, baseLabels)
	mCFSThrottledSeconds = def("container_cpu_cfs_throttled_seconds_total", "Total time duration the container has been throttled.", counter, baseLabels)

	// Memory
	mMemUsage      = def("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", gauge, baseLabels)
	mMemMaxUsage   = def("container_memory_max_usage_bytes", "Maximum memory usage recorded in bytes", gauge, baseLabels)
	mMemWorkingSet = def("container_memory_working_set_bytes", "Current working set in bytes.", gauge, baseLabels)
	mMemRSS        = def("container_memory_rss", "Size of RSS in bytes.", gauge, baseLabels)
	mMemCache      = def("container_memory_cache", "Number of bytes of page cache memory.", gauge, baseLabels)
	mMemKernel     = def("container_memory_kernel_usage", "Size of kernel memory allocated in bytes.", gauge, baseLabels)
	mMemMappedFile = def("container_memory_mapped_file", "Size of memory mapped files in bytes.", gauge, baseLabels)
	mMemSwap       = def("container_memory_swap", "Container swap usage in bytes.", gauge, baseLabels)
	mMemFailcnt    = def("container_memory_failcnt", "Number of memory usage hits limits", counter, baseLabels)
	mMemFailures   = def("container_memory_failures_total", "Cumulative count of memory allocation failures.", counter, failuresLabels)
	mOOM           = def("container_oom_events_total", "Count of out of memory events observed for the container", counter, baseLabels)

	// Huge pages
	mHugetlbUsage    = def("container_hugetlb_usage_bytes", "Current hugepage usage in bytes", gauge, hugetlbLabels)
	mHugetlbMaxUsage = def("container_hugetlb_max_usage_bytes", "Maximum hugepage usage recorded in bytes", gauge, hugetlbLabels)

	// Processes
	mProcesses   = def("container_processes", "Number of processes running inside the container.", gauge, baseLabels)
	mThreads     = def("container_threads", "Number of threads running inside the container", gauge, baseLabels)
	mThreadsMax  = def("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero", gauge, baseLabels)
	mFDs         = def("container_file_descriptors", "Number of open file descriptors for the container.", gauge, baseLabels)
	mSockets     = def("container_sockets", "Number of open sockets for the container.", gauge, baseLabels)
	mUlimitsSoft = def("container_ulimits_soft", "Soft ulimit values for the container root process. Unlimited if -1, except priority and nice", gauge, ulimitLabels)

	// Filesystem (of the writable layer)
	mFsUsage      = def("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", gauge, fsLabels)
	mFsLimit      = def("container_fs_limit_bytes", "Number of bytes that can be consumed by the container on this filesystem.", gauge, fsLabels)
	mFsInodes     = def("container_fs_inodes_total", "Number of Inodes", gauge, fsLabels)
	mFsInodesFree = def("container_fs_inodes_free", "Number of available Inodes", gauge, fsLabels)

	// Disk I/O
	mFsReadsBytes  = def("container_fs_reads_bytes_total", "Cumulative count of bytes read", counter, fsLabels)
	mFsReads       = def("container_fs_reads_total", "Cumulative count of reads completed", counter, fsLabels)
	mFsWritesBytes = def("container_fs_writes_bytes_total", "Cumulative count of bytes written", counter, fsLabels)
	mFsWrites      = def("container_fs_writes_total", "Cumulative count of writes completed", counter, fsLabels)
	mBlkio         = def("container_blkio_device_usage_total", "Blkio Device bytes usage", counter, blkioLabels)

	// Pressure (PSI)
	mPressureCPUStalled    = def("container_pressure_cpu_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to CPU congestion.", counter, baseLabels)
	mPressureCPUWaiting    = def("container_pressure_cpu_waiting_seconds_total", "Total time duration tasks in the container have waited due to CPU congestion.", counter, baseLabels)
	mPressureMemoryStalled = def("container_pressure_memory_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to memory congestion.", counter, baseLabels)
	mPressureMemoryWaiting = def("container_pressure_memory_waiting_seconds_total", "Total time duration tasks in the container have waited due to memory congestion.", counter, baseLabels)
	mPressureIOStalled     = def("container_pressure_io_stalled_seconds_total", "Total time duration no tasks in the container could make progress due to IO congestion.", counter, baseLabels)
	mPressureIOWaiting     = def("container_pressure_io_waiting_seconds_total", "Total time duration tasks in the container have waited due to IO congestion.", counter, baseLabels)

	// Spec
	mSpecCPUPeriod      = def("container_spec_cpu_period", "CPU period of the container.", gauge, baseLabels)
	mSpecCPUQuota       = def("container_spec_cpu_quota", "CPU quota of the container.", gauge, baseLabels)
	mSpecCPUShares      = def("container_spec_cpu_shares", "CPU share of the container.", gauge, baseLabels)
	mMemLimit           = def("container_spec_memory_limit_bytes", "Memory limit for the container.", gauge, baseLabels)
	mSpecMemSwapLimit   = def("container_spec_memory_swap_limit_bytes", "Memory swap limit for the container.", gauge, baseLabels)
	mSpecMemReservation = def("container_spec_memory_reservation_limit_bytes", "Memory reservation limit for the container.", gauge, baseLabels)
	mStartTime          = def("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", gauge, baseLabels)
	mLastSeen           = def("container_last_seen", "Last time a container was seen by the exporter", gauge, baseLabels)

	// Network (the pod's)
	mNetRxBytes   = def("container_network_receive_bytes_total", "Cumulative count of bytes received", counter, networkLabels)
	mNetRxPackets = def("container_network_receive_packets_total", "Cumulative count of packets received", counter, networkLabels)
	mNetRxDropped = def("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving", counter, networkLabels)
	mNetRxErrors  = def("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", counter, networkLabels)
	mNetTxBytes   = def("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", counter, networkLabels)
	mNetTxPackets = def("container_network_transmit_packets_total", "Cumulative count of packets transmitted", counter, networkLabels)
	mNetTxDropped = def("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting", counter, networkLabels)
	mNetTxErrors  = def("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", counter, networkLabels)
)

func (s *Server) ListMetricDescriptors(ctx context.Context, req *runtime.ListMetricDescriptorsRequest) (*runtime.ListMetricDescriptorsResponse, error) {
	resp := &runtime.ListMetricDescriptorsResponse{Descriptors: make([]*runtime.MetricDescriptor, 0, len(allMetricDefs))}
	for _, d := range allMetricDefs {
		resp.Descriptors = append(resp.Descriptors, &runtime.MetricDescriptor{Name: d.desc.Name, Help: d.desc.Help, LabelKeys: append([]string(nil), d.desc.LabelKeys...)})
	}
	return resp, nil
}

func (s *Server) ListPodSandboxMetrics(ctx context.Context, req *runtime.ListPodSandboxMetricsRequest) (*runtime.ListPodSandboxMetricsResponse, error) {
	list, err := s.sandboxes.ListPodMetrics(ctx)
	if err != nil {
		return nil, grpcError(err)
	}
	resp := &runtime.ListPodSandboxMetricsResponse{PodMetrics: make([]*runtime.PodSandboxMetrics, 0, len(list))}
	for _, ps := range list {
		resp.PodMetrics = append(resp.PodMetrics, podMetrics(ps))
	}
	return resp, nil
}

// metricSet collects the metrics of one cgroup under one set of base
// label values.
type metricSet struct {
	ts     int64
	labels []string
	out    []*runtime.Metric
}

func (ms *metricSet) add(d metricDef, v uint64, extra ...string) {
	lv := ms.labels
	if len(extra) > 0 {
		lv = append(append(make([]string, 0, len(lv)+len(extra)), lv...), extra...)
	}
	ms.out = append(ms.out, &runtime.Metric{Name: d.desc.Name, Timestamp: ms.ts, MetricType: d.typ, LabelValues: lv, Value: u64(v)})
}

// addp adds v unless it is nil (not reported).
func (ms *metricSet) addp(d metricDef, v *uint64, extra ...string) {
	if v != nil {
		ms.add(d, *v, extra...)
	}
}

func seconds(nanos uint64) uint64 { return nanos / uint64(time.Second) }

func orZero(v *uint64) uint64 {
	if v == nil {
		return 0
	}
	return *v
}

func (ms *metricSet) cgroup(st *sandbox.CgroupStats) {
	if st == nil {
		return
	}
	if c := st.CPU; c != nil {
		ms.add(mCPUUsage, seconds(c.UsageNanos))
		if c.UserNanos != nil && c.SystemNanos != nil {
			ms.add(mCPUUser, seconds(*c.UserNanos))
			ms.add(mCPUSystem, seconds(*c.SystemNanos))
		}
	}
	if cc := st.CPUControl; cc != nil {
		ms.add(mSpecCPUPeriod, cc.Period)
		ms.add(mSpecCPUShares, cc.Shares)
		// cAdvisor reports the quota and the CFS counters of cgroups
		// with a quota only.
		if cc.Quota != nil {
			ms.add(mSpecCPUQuota, *cc.Quota)
			if t := cc.Throttling; t != nil {
				ms.add(mCFSPeriods, t.Periods)
				ms.add(mCFSThrottledPeriods, t.ThrottledPeriods)
				ms.add(mCFSThrottledSeconds, seconds(t.ThrottledNanos))
			}
		}
	}
	if m := st.Memory; m != nil {
		ms.add(mMemUsage, m.Usage)
		ms.add(mMemWorkingSet, m.WorkingSet)
		ms.add(mMemRSS, m.RSS)
		ms.add(mMemCache, m.Cache)
		ms.add(mMemLimit, orZero(m.Limit)) // cAdvisor: 0 when unlimited
		ms.addp(mSpecMemSwapLimit, m.SwapLimit)
		ms.addp(mSpecMemReservation, m.Reservation)
		ms.addp(mOOM, m.OOMKills)
		ms.addp(mMemMaxUsage, m.MaxUsage)
		ms.addp(mMemKernel, m.KernelUsage)
		ms.addp(mMemMappedFile, m.MappedFile)
		ms.addp(mMemSwap, m.Swap)
		ms.addp(mMemFailcnt, m.Failcnt)
		if m.LocalPageFaults != nil && m.LocalMajorPageFaults != nil {
			ms.add(mMemFailures, *m.LocalPageFaults, "pgfault", "container")
			ms.add(mMemFailures, *m.LocalMajorPageFaults, "pgmajfault", "container")
			ms.add(mMemFailures, m.PageFaults, "pgfault", "hierarchy")
			ms.add(mMemFailures, m.MajorPageFaults, "pgmajfault", "hierarchy")
		}
	}
	if p := st.Pids; p != nil {
		ms.add(mProcesses, p.Current)
		ms.add(mThreads, p.Current) // pids.current counts tasks: threads
		ms.add(mThreadsMax, orZero(p.Limit))
	}
	if io := st.IO; io != nil {
		for _, d := range io.Devices {
			major, minor := strconv.FormatUint(uint64(d.Major), 10), strconv.FormatUint(uint64(d.Minor), 10)
			for _, op := range d.Ops {
				ms.add(mBlkio, op.Bytes, d.Name, major, minor, op.Name)
				switch op.Name {
				case "Read":
					ms.add(mFsReadsBytes, op.Bytes, d.Name)
					ms.add(mFsReads, op.Count, d.Name)
				case "Write":
					ms.add(mFsWritesBytes, op.Bytes, d.Name)
					ms.add(mFsWrites, op.Count, d.Name)
				}
			}
		}
	}
	for _, h := range st.Hugetlb {
		ms.add(mHugetlbUsage, h.Usage, h.PageSize)
		ms.addp(mHugetlbMaxUsage, h.MaxUsage, h.PageSize)
	}
	if p := st.Pressure; p != nil {
		for _, r := range [...]struct {
			psi              *cgroups.PSIStats
			stalled, waiting metricDef
		}{
			{p.CPU, mPressureCPUStalled, mPressureCPUWaiting},
			{p.Memory, mPressureMemoryStalled, mPressureMemoryWaiting},
			{p.IO, mPressureIOStalled, mPressureIOWaiting},
		} {
			if r.psi == nil {
				continue
			}
			ms.add(r.waiting, r.psi.SomeMicros/1e6)
			if r.psi.FullMicros != nil {
				ms.add(r.stalled, *r.psi.FullMicros/1e6)
			}
		}
	}
}

// processes adds what a container's own processes hold.
func (ms *metricSet) processes(p *cgroups.ProcessStats, st *sandbox.CgroupStats) {
	if p == nil {
		return
	}
	if st == nil || st.Pids == nil {
		// Without the pids controller: counted from /proc.
		ms.add(mProcesses, p.Processes)
		ms.addp(mThreads, p.Threads)
	}
	ms.add(mFDs, p.FDs)
	ms.add(mSockets, p.Sockets)
	// cAdvisor reports the open files limit only.
	ms.addp(mUlimitsSoft, p.MaxOpenFiles, "max_open_files")
}

func unixSeconds(t time.Time) uint64 {
	if t.IsZero() || t.Unix() < 0 {
		return 0
	}
	return uint64(t.Unix())
}

func podMetrics(ps *sandbox.PodStats) *runtime.PodSandboxMetrics {
	sb := &ps.Sandbox
	pm := &runtime.PodSandboxMetrics{PodSandboxId: sb.ID}
	pod := metricSet{ts: ps.Timestamp.UnixNano(), labels: []string{"", ps.CgroupPath, "", "", sb.Spec.Namespace, sb.Spec.Name}}
	pod.cgroup(ps.Cgroup)
	pod.add(mStartTime, unixSeconds(sb.CreatedAt))
	pod.add(mLastSeen, unixSeconds(ps.Timestamp))
	if ps.Network != nil {
		net := metricSet{ts: ps.NetworkTimestamp.UnixNano(), labels: pod.labels}
		for _, i := range ps.Network {
			net.add(mNetRxBytes, i.RxBytes, i.Name)
			net.add(mNetRxPackets, i.RxPackets, i.Name)
			net.add(mNetRxDropped, i.RxDropped, i.Name)
			net.add(mNetRxErrors, i.RxErrors, i.Name)
			net.add(mNetTxBytes, i.TxBytes, i.Name)
			net.add(mNetTxPackets, i.TxPackets, i.Name)
			net.add(mNetTxDropped, i.TxDropped, i.Name)
			net.add(mNetTxErrors, i.TxErrors, i.Name)
		}
		pod.out = append(pod.out, net.out...)
	}
	pm.Metrics = pod.out
	for _, cs := range ps.Containers {
		c := &cs.Container
		ms := metricSet{ts: cs.Timestamp.UnixNano(), labels: []string{c.Config.Name, cs.CgroupPath, c.ImageName, c.ID, sb.Spec.Namespace, sb.Spec.Name}}
		ms.cgroup(cs.Cgroup)
		ms.processes(cs.Processes, cs.Cgroup)
		if l := cs.WritableLayer; l != nil {
			ms.add(mFsUsage, l.Bytes, l.Mountpoint)
		}
		if f := cs.Filesystem; f != nil {
			ms.add(mFsLimit, f.CapacityBytes, f.Mountpoint)
			ms.add(mFsInodes, f.Inodes, f.Mountpoint)
			ms.add(mFsInodesFree, f.InodesFree, f.Mountpoint)
		}
		if !c.StartedAt.IsZero() {
			ms.add(mStartTime, unixSeconds(c.StartedAt))
		}
		ms.add(mLastSeen, unixSeconds(cs.Timestamp))
		pm.ContainerMetrics = append(pm.ContainerMetrics, &runtime.ContainerMetrics{ContainerId: c.ID, Metrics: ms.out})
	}
	return pm
}
