package cri

import (
	"context"
	"encoding/json"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/sandbox"
)

func (s *Server) RunPodSandbox(ctx context.Context, req *runtime.RunPodSandboxRequest) (*runtime.RunPodSandboxResponse, error) {
	spec, err := specForDriver(req, s.info.CgroupDriver)
	if err != nil {
		return nil, err
	}
	id, err := s.sandboxes.Run(ctx, *spec)
	if err != nil {
		return nil, grpcError(err)
	}
	return &runtime.RunPodSandboxResponse{PodSandboxId: id}, nil
}

func (s *Server) StopPodSandbox(ctx context.Context, req *runtime.StopPodSandboxRequest) (*runtime.StopPodSandboxResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod_sandbox_id is required")
	}
	if err := s.sandboxes.Stop(ctx, req.GetPodSandboxId()); err != nil {
		return nil, grpcError(err)
	}
	return &runtime.StopPodSandboxResponse{}, nil
}

func (s *Server) RemovePodSandbox(ctx context.Context, req *runtime.RemovePodSandboxRequest) (*runtime.RemovePodSandboxResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod_sandbox_id is required")
	}
	if err := s.sandboxes.Remove(ctx, req.GetPodSandboxId()); err != nil {
		return nil, grpcError(err)
	}
	return &runtime.RemovePodSandboxResponse{}, nil
}

func (s *Server) PodSandboxStatus(ctx context.Context, req *runtime.PodSandboxStatusRequest) (*runtime.PodSandboxStatusResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod_sandbox_id is required")
	}
	sb, err := s.sandboxes.Get(req.GetPodSandboxId())
	if err != nil {
		return nil, grpcError(err)
	}
	st := crSandboxStatus(sb)
	resp := &runtime.PodSandboxStatusResponse{Status: st}
	if req.GetVerbose() {
		resp.Info = map[string]string{"info": verboseInfo(sb)}
	}
	return resp, nil
}

// crSandboxStatus is a sandbox record as CRI's PodSandboxStatus.
func crSandboxStatus(sb *sandbox.Sandbox) *runtime.PodSandboxStatus {
	st := &runtime.PodSandboxStatus{
		Id:             sb.ID,
		Metadata:       metadata(sb),
		State:          crState(sb),
		CreatedAt:      sb.CreatedAt.UnixNano(),
		Network:        &runtime.PodSandboxNetworkStatus{},
		Labels:         sb.Spec.Labels,
		Annotations:    sb.Spec.Annotations,
		RuntimeHandler: sb.Spec.RuntimeHandler,
		Linux: &runtime.LinuxPodSandboxStatus{Namespaces: &runtime.Namespace{Options: &runtime.NamespaceOption{
			Network:  crMode(sb.Spec.NetworkMode),
			Pid:      crMode(sb.Spec.PIDMode),
			Ipc:      crMode(sb.Spec.IPCMode),
			TargetId: sb.Spec.TargetID,
		}}},
	}
	if sb.State == sandbox.StateReady && sb.Network != nil && len(sb.Network.IPs) > 0 {
		st.Network.Ip = sb.Network.IPs[0]
		for _, ip := range sb.Network.IPs[1:] {
			st.Network.AdditionalIps = append(st.Network.AdditionalIps, &runtime.PodIP{Ip: ip})
		}
	}
	return st
}

// verboseInfo is the JSON a person debugging a pod wants: the pause pid,
// pinned namespace files, cgroup, CNI result and applied shaping.
func verboseInfo(sb *sandbox.Sandbox) string {
	info := map[string]any{
		"id":         sb.ID,
		"state":      sb.State,
		"reason":     sb.Reason,
		"namespaces": sb.Namespaces,
		"cgroup":     sb.Cgroup,
		"resources":  sb.Resources, // UpdatePodSandboxResources
		"runtimeDir": sb.Dir,
		"spec":       sb.Spec,
	}
	if sb.Pause != nil {
		info["pid"] = sb.Pause.PID
	}
	if sb.Network != nil {
		info["network"] = map[string]any{
			"name":           sb.Network.Network,
			"ifName":         sb.Network.IfName,
			"ips":            sb.Network.IPs,
			"cniResult":      sb.Network.Result,
			"detachPending":  sb.NetworkDetachPending,
			"lastDelFailure": sb.Network.LastDelFail,
		}
	}
	if sb.Shaping != nil {
		info["bandwidth"] = sb.Shaping
	}
	b, _ := json.Marshal(info)
	return string(b)
}

func (s *Server) ListPodSandbox(ctx context.Context, req *runtime.ListPodSandboxRequest) (*runtime.ListPodSandboxResponse, error) {
	var f sandbox.Filter
	if rf := req.GetFilter(); rf != nil {
		f.ID = rf.GetId()
		f.Selector = rf.GetLabelSelector()
		if rf.GetState() != nil {
			st := sandbox.StateNotReady
			if rf.GetState().GetState() == runtime.PodSandboxState_SANDBOX_READY {
				st = sandbox.StateReady
			}
			f.State = &st
		}
	}
	var items []*runtime.PodSandbox
	for _, sb := range s.sandboxes.List(f) {
		items = append(items, &runtime.PodSandbox{
			Id:             sb.ID,
			Metadata:       metadata(sb),
			State:          crState(sb),
			CreatedAt:      sb.CreatedAt.UnixNano(),
			Labels:         sb.Spec.Labels,
			Annotations:    sb.Spec.Annotations,
			RuntimeHandler: sb.Spec.RuntimeHandler,
		})
	}
	return &runtime.ListPodSandboxResponse{Items: items}, nil
}

func metadata(sb *sandbox.Sandbox) *runtime.PodSandboxMetadata {
	return &runtime.PodSandboxMetadata{Name: sb.Spec.Name, Namespace: sb.Spec.Namespace, Uid: sb.Spec.UID, Attempt: sb.Spec.Attempt}
}

func crState(sb *sandbox.Sandbox) runtime.PodSandboxState {
	if sb.PublicState() == sandbox.StateReady {
		return runtime.PodSandboxState_SANDBOX_READY
	}
	return runtime.PodSandboxState_SANDBOX_NOTREADY
}

func crMode(m sandbox.NamespaceMode) runtime.NamespaceMode {
	switch m {
	case sandbox.ModePod:
		return runtime.NamespaceMode_POD
	case sandbox.ModeNode:
		return runtime.NamespaceMode_NODE
	case sandbox.ModeTarget:
		return runtime.NamespaceMode_TARGET
	}
	return runtime.NamespaceMode_CONTAINER
}
