package cri

import (
	"context"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// UpdatePodSandboxResources applies the pod's new limits (the containers'
// sum plus the overhead, see sandbox.PodLimits) to its pod cgroup, live,
// and records the request in the sandbox: PodSandboxStatus with verbose
// shows it under "resources", after a daemon restart too. Nonsense values
// are InvalidArgument and change nothing; an unknown sandbox is NotFound; a
// sandbox that is not ready is FailedPrecondition.
func (s *Server) UpdatePodSandboxResources(ctx context.Context, req *runtime.UpdatePodSandboxResourcesRequest) (*runtime.UpdatePodSandboxResourcesResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod_sandbox_id is required")
	}
	for name, r := range map[string]*runtime.LinuxContainerResources{"overhead": req.GetOverhead(), "resources": req.GetResources()} {
		if err := checkLinuxResources(name, r); err != nil {
			return nil, err
		}
	}
	err := s.sandboxes.UpdatePodSandboxResources(ctx, req.GetPodSandboxId(),
		linuxResources(req.GetOverhead()), linuxResources(req.GetResources()))
	if err != nil {
		return nil, grpcError(err)
	}
	return &runtime.UpdatePodSandboxResourcesResponse{}, nil
}

// checkLinuxResources refuses values that no cgroup can take. Zero means
// "not set" everywhere in CRI; finer checks (cpuset lists against the
// host's cpus, hugepage sizes, unified keys) are the cgroup layer's.
func checkLinuxResources(name string, r *runtime.LinuxContainerResources) error {
	if r == nil {
		return nil
	}
	switch {
	case r.GetCpuShares() < 0:
		return invalid("%s.cpu_shares %d: must not be negative", name, r.GetCpuShares())
	case r.GetCpuPeriod() < 0:
		return invalid("%s.cpu_period %d: must not be negative", name, r.GetCpuPeriod())
	case r.GetCpuQuota() < -1:
		return invalid("%s.cpu_quota %d: want -1 (unlimited), 0 (unset) or a positive µs count", name, r.GetCpuQuota())
	case r.GetMemoryLimitInBytes() < 0:
		return invalid("%s.memory_limit_in_bytes %d: must not be negative", name, r.GetMemoryLimitInBytes())
	case r.GetMemorySwapLimitInBytes() < -1:
		return invalid("%s.memory_swap_limit_in_bytes %d: want -1 (unlimited), 0 (unset) or a byte count", name, r.GetMemorySwapLimitInBytes())
	case r.GetOomScoreAdj() < -1000 || r.GetOomScoreAdj() > 1000:
		return invalid("%s.oom_score_adj %d: want -1000 to 1000", name, r.GetOomScoreAdj())
	}
	for _, h := range r.GetHugepageLimits() {
		if h.GetPageSize() == "" {
			return invalid("%s.hugepage_limits: page_size is required", name)
		}
	}
	for k := range r.GetUnified() {
		if k == "" {
			return invalid("%s.unified: empty key", name)
		}
	}
	return nil
}
