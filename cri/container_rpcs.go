package cri

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/sandbox"
)

// containerConfig validates a CreateContainer request and converts it.
func containerConfig(req *runtime.CreateContainerRequest) (*sandbox.ContainerConfig, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod_sandbox_id is required")
	}
	cfg := req.GetConfig()
	if cfg == nil || cfg.GetMetadata() == nil {
		return nil, invalid("config.metadata is required (name)")
	}
	if err := checkName("metadata.name", cfg.GetMetadata().GetName(), maxNameLen); err != nil {
		return nil, err
	}
	if cfg.GetImage().GetImage() == "" {
		return nil, invalid("config.image.image is required")
	}
	out := &sandbox.ContainerConfig{
		Name:        cfg.GetMetadata().GetName(),
		Attempt:     cfg.GetMetadata().GetAttempt(),
		Image:       cfg.GetImage().GetImage(),
		Command:     cfg.GetCommand(),
		Args:        cfg.GetArgs(),
		WorkingDir:  cfg.GetWorkingDir(),
		Labels:      cfg.GetLabels(),
		Annotations: cfg.GetAnnotations(),
		LogPath:     cfg.GetLogPath(),
		Stdin:       cfg.GetStdin(),
		StdinOnce:   cfg.GetStdinOnce(),
		Tty:         cfg.GetTty(),
	}
	if err := checkMetadataMap("labels", out.Labels); err != nil {
		return nil, err
	}
	if err := checkMetadataMap("annotations", out.Annotations); err != nil {
		return nil, err
	}
	if out.WorkingDir != "" && !filepath.IsAbs(out.WorkingDir) {
		return nil, invalid("working_dir %q must be absolute", out.WorkingDir)
	}
	if lp := out.LogPath; lp != "" {
		if filepath.IsAbs(lp) || filepath.Clean(lp) != lp || strings.HasPrefix(lp, "..") || hasControl(lp) {
			return nil, invalid("log_path %q must be a clean path relative to the sandbox's log_directory", lp)
		}
	}
	for _, kv := range cfg.GetEnvs() {
		if kv.GetKey() == "" || strings.ContainsAny(kv.GetKey(), "=\x00") || bytes.IndexByte(kv.GetValue(), 0) >= 0 {
			return nil, invalid("env %q: keys must be non-empty without '=' or NUL", kv.GetKey())
		}
		out.Env = append(out.Env, kv.GetKey()+"="+string(kv.GetValue()))
	}
	for _, m := range cfg.GetMounts() {
		if m.GetImage().GetImage() != "" {
			return nil, status.Errorf(codes.Unimplemented, "mount %q: image volumes are not supported by peapod yet", m.GetContainerPath())
		}
		if m.GetRecursiveReadOnly() {
			return nil, invalid("mount %q: recursive read-only mounts are not supported by peapod yet", m.GetContainerPath())
		}
		if !filepath.IsAbs(m.GetContainerPath()) || !filepath.IsAbs(m.GetHostPath()) {
			return nil, invalid("mount %q -> %q: both paths must be absolute", m.GetHostPath(), m.GetContainerPath())
		}
		prop := "private"
		switch m.GetPropagation() {
		case runtime.MountPropagation_PROPAGATION_HOST_TO_CONTAINER:
			prop = "rslave"
		case runtime.MountPropagation_PROPAGATION_BIDIRECTIONAL:
			prop = "rshared"
		}
		out.Mounts = append(out.Mounts, sandbox.ContainerMount{HostPath: m.GetHostPath(), ContainerPath: m.GetContainerPath(), Readonly: m.GetReadonly(), Propagation: prop})
	}
	for _, d := range cfg.GetDevices() {
		if !filepath.IsAbs(d.GetHostPath()) || !filepath.IsAbs(d.GetContainerPath()) {
			return nil, invalid("device %q -> %q: both paths must be absolute", d.GetHostPath(), d.GetContainerPath())
		}
		out.Devices = append(out.Devices, sandbox.ContainerDevice{HostPath: d.GetHostPath(), ContainerPath: d.GetContainerPath(), Permissions: d.GetPermissions()})
	}
	linux := cfg.GetLinux()
	out.Resources = linuxResources(linux.GetResources())
	out.OOMScoreAdj = int(linux.GetResources().GetOomScoreAdj())
	sc := linux.GetSecurityContext()
	sec := sandbox.ContainerSecurity{
		RunAsUsername:    sc.GetRunAsUsername(),
		Privileged:       sc.GetPrivileged(),
		NoNewPrivs:       sc.GetNoNewPrivs(),
		ReadonlyRootfs:   sc.GetReadonlyRootfs(),
		AddCapabilities:  sc.GetCapabilities().GetAddCapabilities(),
		DropCapabilities: sc.GetCapabilities().GetDropCapabilities(),
		PIDMode:          sandbox.ModePod, // CRI's zero value
	}
	if sc.GetRunAsUser() != nil {
		v := sc.GetRunAsUser().GetValue()
		sec.RunAsUser = &v
	}
	if sc.GetRunAsGroup() != nil {
		v := sc.GetRunAsGroup().GetValue()
		sec.RunAsGroup = &v
	}
	if sc.GetRunAsGroup() != nil && sc.GetRunAsUser() == nil && sc.GetRunAsUsername() == "" {
		return nil, invalid("run_as_group is set without run_as_user or run_as_username")
	}
	sec.SupplementalGroups = sc.GetSupplementalGroups()
	sec.StrictSupplementalGroups = sc.GetSupplementalGroupsPolicy() == runtime.SupplementalGroupsPolicy_Strict
	if len(sc.GetMaskedPaths()) > 0 {
		sec.MaskedPaths = sc.GetMaskedPaths()
	}
	if len(sc.GetReadonlyPaths()) > 0 {
		sec.ReadonlyPaths = sc.GetReadonlyPaths()
	}
	if ns := sc.GetNamespaceOptions(); ns != nil {
		mode, err := namespaceMode("pid", ns.GetPid(), true)
		if err != nil {
			return nil, err
		}
		sec.PIDMode = mode
		sec.TargetID = ns.GetTargetId()
		if mode == sandbox.ModeTarget && sec.TargetID == "" {
			return nil, invalid("namespace_options.pid is TARGET but target_id is empty")
		}
	}
	seccomp, err := seccompProfile(sc.GetSeccomp())
	if err != nil {
		return nil, err
	}
	sec.Seccomp = seccomp
	// A nil profile is unconfined; an empty one is RuntimeDefault (the
	// enum's zero value), as the kubelet and critest send them.
	sec.SeccompRuntimeDefault = sc.GetSeccomp() != nil && sc.GetSeccomp().GetProfileType() == runtime.SecurityProfile_RuntimeDefault
	out.Security = sec
	return out, nil
}

// seccompProfile loads a Localhost profile (runtime-spec JSON). Unconfined
// runs without a filter; RuntimeDefault is built by the sandbox package
// from the container's capabilities.
func seccompProfile(p *runtime.SecurityProfile) (*specs.LinuxSeccomp, error) {
	if p == nil || p.GetProfileType() != runtime.SecurityProfile_Localhost {
		return nil, nil
	}
	path := p.GetLocalhostRef()
	if !filepath.IsAbs(path) {
		return nil, invalid("seccomp localhost profile %q must be an absolute path", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, invalid("seccomp localhost profile: %v", err)
	}
	var s specs.LinuxSeccomp
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, invalid("seccomp localhost profile %s is not a runtime-spec seccomp JSON: %v", path, err)
	}
	return &s, nil
}

func linuxResources(r *runtime.LinuxContainerResources) *specs.LinuxResources {
	if r == nil {
		return nil
	}
	out := &specs.LinuxResources{CPU: &specs.LinuxCPU{}, Memory: &specs.LinuxMemory{}}
	if v := r.GetCpuShares(); v > 0 {
		s := uint64(v)
		out.CPU.Shares = &s
	}
	if v := r.GetCpuQuota(); v != 0 {
		out.CPU.Quota = &v
	}
	if v := r.GetCpuPeriod(); v > 0 {
		p := uint64(v)
		out.CPU.Period = &p
	}
	out.CPU.Cpus = r.GetCpusetCpus()
	out.CPU.Mems = r.GetCpusetMems()
	if v := r.GetMemoryLimitInBytes(); v > 0 {
		out.Memory.Limit = &v
	}
	if v := r.GetMemorySwapLimitInBytes(); v > 0 {
		out.Memory.Swap = &v
	}
	// The kubelet sends hugepage limits even where hugetlb is not mounted.
	if _, err := os.Stat("/sys/fs/cgroup/hugetlb"); err == nil {
		for _, h := range r.GetHugepageLimits() {
			out.HugepageLimits = append(out.HugepageLimits, specs.LinuxHugepageLimit{Pagesize: h.GetPageSize(), Limit: h.GetLimit()})
		}
	}
	if len(r.GetUnified()) > 0 {
		out.Unified = r.GetUnified()
	}
	return out
}

func (s *Server) CreateContainer(ctx context.Context, req *runtime.CreateContainerRequest) (*runtime.CreateContainerResponse, error) {
	cfg, err := containerConfig(req)
	if err != nil {
		return nil, err
	}
	id, err := s.sandboxes.CreateContainer(ctx, req.GetPodSandboxId(), *cfg)
	if err != nil {
		return nil, grpcError(err)
	}
	return &runtime.CreateContainerResponse{ContainerId: id}, nil
}

func (s *Server) StartContainer(ctx context.Context, req *runtime.StartContainerRequest) (*runtime.StartContainerResponse, error) {
	if req.GetContainerId() == "" {
		return nil, invalid("container_id is required")
	}
	if err := s.sandboxes.StartContainer(ctx, req.GetContainerId()); err != nil {
		return nil, grpcError(err)
	}
	return &runtime.StartContainerResponse{}, nil
}

func (s *Server) StopContainer(ctx context.Context, req *runtime.StopContainerRequest) (*runtime.StopContainerResponse, error) {
	if req.GetContainerId() == "" {
		return nil, invalid("container_id is required")
	}
	// Stopping a container that does not exist (any more) succeeds: the
	// kubelet retries stops and removals.
	err := s.sandboxes.StopContainer(ctx, req.GetContainerId(), time.Duration(req.GetTimeout())*time.Second)
	if err != nil && !errors.Is(err, sandbox.ErrNotFound) {
		return nil, grpcError(err)
	}
	return &runtime.StopContainerResponse{}, nil
}

func (s *Server) RemoveContainer(ctx context.Context, req *runtime.RemoveContainerRequest) (*runtime.RemoveContainerResponse, error) {
	if req.GetContainerId() == "" {
		return nil, invalid("container_id is required")
	}
	if err := s.sandboxes.RemoveContainer(ctx, req.GetContainerId()); err != nil {
		return nil, grpcError(err)
	}
	return &runtime.RemoveContainerResponse{}, nil
}

func crContainerState(st sandbox.ContainerState) runtime.ContainerState {
	switch st {
	case sandbox.ContainerCreated:
		return runtime.ContainerState_CONTAINER_CREATED
	case sandbox.ContainerRunning:
		return runtime.ContainerState_CONTAINER_RUNNING
	case sandbox.ContainerExited:
		return runtime.ContainerState_CONTAINER_EXITED
	}
	return runtime.ContainerState_CONTAINER_UNKNOWN
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func (s *Server) ListContainers(ctx context.Context, req *runtime.ListContainersRequest) (*runtime.ListContainersResponse, error) {
	var f sandbox.ContainerFilter
	if rf := req.GetFilter(); rf != nil {
		f.ID, f.SandboxID, f.Selector = rf.GetId(), rf.GetPodSandboxId(), rf.GetLabelSelector()
		if rf.GetState() != nil {
			var st sandbox.ContainerState
			switch rf.GetState().GetState() {
			case runtime.ContainerState_CONTAINER_CREATED:
				st = sandbox.ContainerCreated
			case runtime.ContainerState_CONTAINER_RUNNING:
				st = sandbox.ContainerRunning
			case runtime.ContainerState_CONTAINER_EXITED:
				st = sandbox.ContainerExited
			default:
				st = sandbox.ContainerUnknown
			}
			f.State = &st
		}
	}
	resp := &runtime.ListContainersResponse{}
	for _, c := range s.sandboxes.ListContainers(ctx, f) {
		resp.Containers = append(resp.Containers, &runtime.Container{
			Id:           c.ID,
			PodSandboxId: c.SandboxID,
			Metadata:     &runtime.ContainerMetadata{Name: c.Config.Name, Attempt: c.Config.Attempt},
			Image:        &runtime.ImageSpec{Image: c.ImageName},
			ImageRef:     c.ImageRef,
			ImageId:      c.ImageID,
			State:        crContainerState(c.State),
			CreatedAt:    c.CreatedAt.UnixNano(),
			Labels:       c.Config.Labels,
			Annotations:  c.Config.Annotations,
		})
	}
	return resp, nil
}

func (s *Server) ContainerStatus(ctx context.Context, req *runtime.ContainerStatusRequest) (*runtime.ContainerStatusResponse, error) {
	if req.GetContainerId() == "" {
		return nil, invalid("container_id is required")
	}
	c, err := s.sandboxes.ContainerStatus(ctx, req.GetContainerId())
	if err != nil {
		return nil, grpcError(err)
	}
	st := crContainerStatus(c)
	resp := &runtime.ContainerStatusResponse{Status: st}
	if req.GetVerbose() {
		b, _ := json.Marshal(map[string]any{"pid": c.Pid, "sandboxId": c.SandboxID, "config": c.Config})
		resp.Info = map[string]string{"info": string(b)}
	}
	return resp, nil
}

// crContainerStatus is a container record as CRI's ContainerStatus.
func crContainerStatus(c *sandbox.Container) *runtime.ContainerStatus {
	st := &runtime.ContainerStatus{
		Id:          c.ID,
		Metadata:    &runtime.ContainerMetadata{Name: c.Config.Name, Attempt: c.Config.Attempt},
		State:       crContainerState(c.State),
		CreatedAt:   c.CreatedAt.UnixNano(),
		StartedAt:   nanos(c.StartedAt),
		FinishedAt:  nanos(c.FinishedAt),
		ExitCode:    c.ExitCode,
		Image:       &runtime.ImageSpec{Image: c.ImageName},
		ImageRef:    c.ImageRef,
		ImageId:     c.ImageID,
		Reason:      c.Reason,
		Message:     c.Message,
		Labels:      c.Config.Labels,
		Annotations: c.Config.Annotations,
		LogPath:     c.LogPath,
		Resources:   crResources(c.Resources),
	}
	if c.User != nil {
		lu := &runtime.LinuxContainerUser{Uid: int64(c.User.UID), Gid: int64(c.User.GID)}
		for _, g := range c.User.Groups {
			lu.SupplementalGroups = append(lu.SupplementalGroups, int64(g))
		}
		st.User = &runtime.ContainerUser{Linux: lu}
	}
	for _, m := range c.Config.Mounts {
		prop := runtime.MountPropagation_PROPAGATION_PRIVATE
		switch m.Propagation {
		case "rslave":
			prop = runtime.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
		case "rshared":
			prop = runtime.MountPropagation_PROPAGATION_BIDIRECTIONAL
		}
		st.Mounts = append(st.Mounts, &runtime.Mount{HostPath: m.HostPath, ContainerPath: m.ContainerPath, Readonly: m.Readonly, Propagation: prop})
	}
	return st
}

func crResources(r *specs.LinuxResources) *runtime.ContainerResources {
	if r == nil {
		return nil
	}
	out := &runtime.LinuxContainerResources{}
	if r.CPU != nil {
		if r.CPU.Shares != nil {
			out.CpuShares = int64(*r.CPU.Shares)
		}
		if r.CPU.Quota != nil {
			out.CpuQuota = *r.CPU.Quota
		}
		if r.CPU.Period != nil {
			out.CpuPeriod = int64(*r.CPU.Period)
		}
		out.CpusetCpus, out.CpusetMems = r.CPU.Cpus, r.CPU.Mems
	}
	if r.Memory != nil {
		if r.Memory.Limit != nil {
			out.MemoryLimitInBytes = *r.Memory.Limit
		}
		if r.Memory.Swap != nil {
			out.MemorySwapLimitInBytes = *r.Memory.Swap
		}
	}
	out.Unified = r.Unified
	return &runtime.ContainerResources{Linux: out}
}

func (s *Server) UpdateContainerResources(ctx context.Context, req *runtime.UpdateContainerResourcesRequest) (*runtime.UpdateContainerResourcesResponse, error) {
	if req.GetContainerId() == "" {
		return nil, invalid("container_id is required")
	}
	if err := s.sandboxes.UpdateContainerResources(ctx, req.GetContainerId(), linuxResources(req.GetLinux())); err != nil {
		return nil, grpcError(err)
	}
	return &runtime.UpdateContainerResourcesResponse{}, nil
}

func (s *Server) ReopenContainerLog(ctx context.Context, req *runtime.ReopenContainerLogRequest) (*runtime.ReopenContainerLogResponse, error) {
	if err := s.sandboxes.ReopenContainerLog(ctx, req.GetContainerId()); err != nil {
		return nil, grpcError(err)
	}
	return &runtime.ReopenContainerLogResponse{}, nil
}

// maxExecSyncOutput bounds what ExecSync returns per stream, as the
// kubelet's own limit for probes does.
const maxExecSyncOutput = 16 << 20

func (s *Server) ExecSync(ctx context.Context, req *runtime.ExecSyncRequest) (*runtime.ExecSyncResponse, error) {
	if req.GetContainerId() == "" || len(req.GetCmd()) == 0 {
		return nil, invalid("container_id and cmd are required")
	}
	timeout := time.Duration(req.GetTimeout()) * time.Second
	stdout, stderr, code, err := s.sandboxes.ExecSync(ctx, req.GetContainerId(), req.GetCmd(), timeout, maxExecSyncOutput)
	if err != nil {
		if strings.Contains(err.Error(), "timed out") {
			return nil, grpcError(fmt.Errorf("%w: command %q timed out after %v", context.DeadlineExceeded, req.GetCmd(), timeout))
		}
		return nil, grpcError(err)
	}
	return &runtime.ExecSyncResponse{Stdout: stdout, Stderr: stderr, ExitCode: int32(code)}, nil
}
