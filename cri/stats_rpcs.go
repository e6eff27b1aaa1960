package cri

import (
	"context"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

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

// Metrics in cAdvisor's names and labels, so that a kubelet with
// PodAndContainerStatsFromCRI serves /metrics/cadvisor from them. Label
// values follow cAdvisor: for a container, container is its name, id its
// cgroup path, name its id and image the image it was created from; the
// pod cgroup's series (the whole pod, network included) have empty
// container, name and image, as cAdvisor's pod cgroup series do.
//
// CRI metric values are integers: seconds are whole seconds (as CRI-O
// reports them); the nanosecond counter is in the stats RPCs.

var (
	baseLabels    = []string{"container", "id", "image", "name", "namespace", "pod"}
	networkLabels = append(append([]string(nil), baseLabels...), "interface")
	fsLabels      = append(append([]string(nil), baseLabels...), "device")
)

type metricDef struct {
	desc *runtime.MetricDescriptor
	typ  runtime.MetricType
}

func def(name, help string, typ runtime.MetricType, labels []string) metricDef {
	return metricDef{&runtime.MetricDescriptor{Name: name, Help: help, LabelKeys: labels}, typ}
}

var (
	mCPUUsage      = def("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", runtime.MetricType_COUNTER, baseLabels)
	mMemUsage      = def("container_memory_usage_bytes", "Current memory usage in bytes, including all memory regardless of when it was accessed", runtime.MetricType_GAUGE, baseLabels)
	mMemWorkingSet = def("container_memory_working_set_bytes", "Current working set in bytes.", runtime.MetricType_GAUGE, baseLabels)
	mMemRSS        = def("container_memory_rss", "Size of RSS in bytes.", runtime.MetricType_GAUGE, baseLabels)
	mMemCache      = def("container_memory_cache", "Number of bytes of page cache memory.", runtime.MetricType_GAUGE, baseLabels)
	mMemLimit      = def("container_spec_memory_limit_bytes", "Memory limit for the container.", runtime.MetricType_GAUGE, baseLabels)
	mOOM           = def("container_oom_events_total", "Count of out of memory events observed for the container", runtime.MetricType_COUNTER, baseLabels)
	mProcesses     = def("container_processes", "Number of processes running inside the container.", runtime.MetricType_GAUGE, baseLabels)
	mThreadsMax    = def("container_threads_max", "Maximum number of threads allowed inside the container, infinity if value is zero", runtime.MetricType_GAUGE, baseLabels)
	mFsUsage       = def("container_fs_usage_bytes", "Number of bytes that are consumed by the container on this filesystem.", runtime.MetricType_GAUGE, fsLabels)
	mStartTime     = def("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", runtime.MetricType_GAUGE, baseLabels)
	mLastSeen      = def("container_last_seen", "Last time a container was seen by the exporter", runtime.MetricType_GAUGE, baseLabels)
	mNetRxBytes    = def("container_network_receive_bytes_total", "Cumulative count of bytes received", runtime.MetricType_COUNTER, networkLabels)
	mNetRxPackets  = def("container_network_receive_packets_total", "Cumulative count of packets received", runtime.MetricType_COUNTER, networkLabels)
	mNetRxDropped  = def("container_network_receive_packets_dropped_total", "Cumulative count of packets dropped while receiving", runtime.MetricType_COUNTER, networkLabels)
	mNetRxErrors   = def("container_network_receive_errors_total", "Cumulative count of errors encountered while receiving", runtime.MetricType_COUNTER, networkLabels)
	mNetTxBytes    = def("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", runtime.MetricType_COUNTER, networkLabels)
	mNetTxPackets  = def("container_network_transmit_packets_total", "Cumulative count of packets transmitted", runtime.MetricType_COUNTER, networkLabels)
	mNetTxDropped  = def("container_network_transmit_packets_dropped_total", "Cumulative count of packets dropped while transmitting", runtime.MetricType_COUNTER, networkLabels)
	mNetTxErrors   = def("container_network_transmit_errors_total", "Cumulative count of errors encountered while transmitting", runtime.MetricType_COUNTER, networkLabels)
	allMetricDefs  = []metricDef{mCPUUsage, mMemUsage, mMemWorkingSet, mMemRSS, mMemCache, mMemLimit, mOOM, mProcesses, mThreadsMax, mFsUsage, mStartTime, mLastSeen, mNetRxBytes, mNetRxPackets, mNetRxDropped, mNetRxErrors, mNetTxBytes, mNetTxPackets, mNetTxDropped, mNetTxErrors}
)

func (s *Server) ListMetricDescriptors(ctx context.Context, req *runtime.ListMetricDescriptorsRequest) (*runtime.ListMetricDescriptorsResponse, error) {
	resp := &runtime.ListMetricDescriptorsResponse{Descriptors: make([]*runtime.MetricDescriptor, 0, len(allMetricDefs))}
	for _, d := range allMetricDefs {
		resp.Descriptors = append(resp.Descriptors, &runtime.MetricDescriptor{Name: d.desc.Name, Help: d.desc.Help, LabelKeys: append([]string(nil), d.desc.LabelKeys...)})
	}
	return resp, nil
}

func (s *Server) ListPodSandboxMetrics(ctx context.Context, req *runtime.ListPodSandboxMetricsRequest) (*runtime.ListPodSandboxMetricsResponse, error) {
	list, err := s.sandboxes.ListPodStats(ctx, sandbox.Filter{})
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

func (ms *metricSet) cgroup(st *sandbox.CgroupStats) {
	if st == nil {
		return
	}
	if c := st.CPU; c != nil {
		ms.add(mCPUUsage, c.UsageNanos/uint64(time.Second))
	}
	if m := st.Memory; m != nil {
		ms.add(mMemUsage, m.Usage)
		ms.add(mMemWorkingSet, m.WorkingSet)
		ms.add(mMemRSS, m.RSS)
		ms.add(mMemCache, m.Cache)
		var limit uint64 // cAdvisor: 0 when unlimited
		if m.Limit != nil {
			limit = *m.Limit
		}
		ms.add(mMemLimit, limit)
		if m.OOMKills != nil {
			ms.add(mOOM, *m.OOMKills)
		}
	}
	if p := st.Pids; p != nil {
		ms.add(mProcesses, p.Current)
		var max uint64
		if p.Limit != nil {
			max = *p.Limit
		}
		ms.add(mThreadsMax, max)
	}
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
		if l := cs.WritableLayer; l != nil {
			ms.add(mFsUsage, l.Bytes, l.Mountpoint)
		}
		if !c.StartedAt.IsZero() {
			ms.add(mStartTime, unixSeconds(c.StartedAt))
		}
		ms.add(mLastSeen, unixSeconds(cs.Timestamp))
		pm.ContainerMetrics = append(pm.ContainerMetrics, &runtime.ContainerMetrics{ContainerId: c.ID, Metrics: ms.out})
	}
	return pm
}
