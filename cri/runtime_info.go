package cri

import (
	"context"
	"encoding/json"
	"maps"
	"slices"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const (
	runtimeName       = "peapod"
	runtimeAPIVersion = "v1"
	// kubeAPIVersion is the CRI "version" field, which kubelets ignore
	// beyond logging; 0.1.0 as the reference runtimes do.
	kubeAPIVersion = "0.1.0"
)

func (s *Server) Version(ctx context.Context, req *runtime.VersionRequest) (*runtime.VersionResponse, error) {
	return &runtime.VersionResponse{
		Version:           kubeAPIVersion,
		RuntimeName:       runtimeName,
		RuntimeVersion:    s.info.Version,
		RuntimeApiVersion: runtimeAPIVersion,
	}, nil
}

func (s *Server) Status(ctx context.Context, req *runtime.StatusRequest) (*runtime.StatusResponse, error) {
	netReady := &runtime.RuntimeCondition{Type: runtime.NetworkReady, Status: true}
	if err := s.network.Ready(); err != nil {
		netReady.Status = false
		netReady.Reason = "NetworkPluginNotReady"
		netReady.Message = err.Error()
	}
	resp := &runtime.StatusResponse{
		Status: &runtime.RuntimeStatus{Conditions: []*runtime.RuntimeCondition{
			{Type: runtime.RuntimeReady, Status: true},
			netReady,
		}},
		RuntimeHandlers: []*runtime.RuntimeHandler{
			{Name: "", Features: &runtime.RuntimeHandlerFeatures{}},
			{Name: runtimeName, Features: &runtime.RuntimeHandlerFeatures{}},
		},
		Features: &runtime.RuntimeFeatures{SupplementalGroupsPolicy: true},
	}
	if req.GetVerbose() {
		unavail := s.sandboxes.CgroupControllersUnavailable()
		details := map[string]any{"network": s.network.Describe(),
			"cgroupControllersUnavailable": slices.Sorted(maps.Keys(unavail)), "cgroupControllersUnavailableReasons": unavail}
		for k, v := range s.info.StatusDetails {
			details[k] = v
		}
		b, _ := json.Marshal(details)
		resp.Info = map[string]string{"config": string(b)}
	}
	return resp, nil
}

func (s *Server) RuntimeConfig(ctx context.Context, req *runtime.RuntimeConfigRequest) (*runtime.RuntimeConfigResponse, error) {
	driver := runtime.CgroupDriver_CGROUPFS
	if s.info.CgroupDriver == "systemd" {
		driver = runtime.CgroupDriver_SYSTEMD
	}
	return &runtime.RuntimeConfigResponse{Linux: &runtime.LinuxRuntimeConfiguration{CgroupDriver: driver}}, nil
}

// UpdateRuntimeConfig accepts the kubelet's pod CIDR. peapod's network comes
// from its CNI configuration, so there is nothing to change.
func (s *Server) UpdateRuntimeConfig(ctx context.Context, req *runtime.UpdateRuntimeConfigRequest) (*runtime.UpdateRuntimeConfigResponse, error) {
	if cidr := req.GetRuntimeConfig().GetNetworkConfig().GetPodCidr(); cidr != "" {
		s.log.Info("kubelet reported pod CIDR; the CNI configuration decides addresses", "podCIDR", cidr)
	}
	return &runtime.UpdateRuntimeConfigResponse{}, nil
}
