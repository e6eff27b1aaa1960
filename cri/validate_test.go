package cri

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/sandbox"
)

func validRequest() *runtime.RunPodSandboxRequest {
	return &runtime.RunPodSandboxRequest{Config: &runtime.PodSandboxConfig{
		Metadata: &runtime.PodSandboxMetadata{Name: "web", Namespace: "default", Uid: "u-1"},
		Hostname: "web",
		Linux:    &runtime.LinuxPodSandboxConfig{},
	}}
}

func TestValidRequestConvertsToSpec(t *testing.T) {
	req := validRequest()
	req.Config.DnsConfig = &runtime.DNSConfig{Servers: []string{"10.0.0.10", "fd00::a"}, Searches: []string{"a.svc"}, Options: []string{"ndots:5", "edns0", "single-request-reopen"}}
	req.Config.PortMappings = []*runtime.PortMapping{{ContainerPort: 80, HostPort: 8080, Protocol: runtime.Protocol_UDP}, {ContainerPort: 81}}
	req.Config.Annotations = map[string]string{"kubernetes.io/ingress-bandwidth": "10M"}
	req.Config.Linux.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1", "net/ipv4/conf/eth0.100/forwarding": "1"}
	req.Config.Linux.CgroupParent = "/kubepods/besteffort/pod1234"
	req.Config.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Pid: runtime.NamespaceMode_POD}}
	spec, err := specFromRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	if spec.PIDMode != sandbox.ModePod || spec.NetworkMode != sandbox.ModePod || spec.IPCMode != sandbox.ModePod {
		t.Errorf("modes: %+v", spec)
	}
	if len(spec.PortMappings) != 1 || spec.PortMappings[0].Protocol != "udp" || spec.PortMappings[0].HostPort != 8080 {
		t.Errorf("port mappings: %+v", spec.PortMappings)
	}
	if spec.Bandwidth.IngressRateBitsPerSec != 10_000_000 {
		t.Errorf("bandwidth: %+v", spec.Bandwidth)
	}
	if len(spec.Sysctls) != 3 || spec.CgroupParent != "/kubepods/besteffort/pod1234" {
		t.Errorf("sysctls/cgroup: %+v", spec)
	}
}

func TestMalformedRequestsAreInvalidArgument(t *testing.T) {
	long := strings.Repeat("x", 300)
	cases := map[string]func(r *runtime.RunPodSandboxRequest){
		"no config":             func(r *runtime.RunPodSandboxRequest) { r.Config = nil },
		"no metadata":           func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata = nil },
		"empty name":            func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Name = "" },
		"empty namespace":       func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Namespace = "" },
		"empty uid":             func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Uid = "" },
		"name with slash":       func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Name = "../../etc" },
		"name dotdot":           func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Name = ".." },
		"namespace with slash":  func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Namespace = "a/b" },
		"name too long":         func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Name = long },
		"name with newline":     func(r *runtime.RunPodSandboxRequest) { r.Config.Metadata.Name = "a\nb" },
		"hostname too long":     func(r *runtime.RunPodSandboxRequest) { r.Config.Hostname = strings.Repeat("h", 65) },
		"hostname bad char":     func(r *runtime.RunPodSandboxRequest) { r.Config.Hostname = "web/0" },
		"hostname leading dash": func(r *runtime.RunPodSandboxRequest) { r.Config.Hostname = "-web" },
		"log dir relative":      func(r *runtime.RunPodSandboxRequest) { r.Config.LogDirectory = "var/log/pods" },
		"log dir traversal":     func(r *runtime.RunPodSandboxRequest) { r.Config.LogDirectory = "/var/log/pods/../../etc" },
		"dns server not IP": func(r *runtime.RunPodSandboxRequest) {
			r.Config.DnsConfig = &runtime.DNSConfig{Servers: []string{"dns.example"}}
		},
		"dns option whitespace": func(r *runtime.RunPodSandboxRequest) {
			r.Config.DnsConfig = &runtime.DNSConfig{Options: []string{"ndots: 5"}}
		},
		"dns option injection": func(r *runtime.RunPodSandboxRequest) {
			r.Config.DnsConfig = &runtime.DNSConfig{Options: []string{"ndots:5\nnameserver 1.2.3.4"}}
		},
		"dns search whitespace": func(r *runtime.RunPodSandboxRequest) {
			r.Config.DnsConfig = &runtime.DNSConfig{Searches: []string{"a b"}}
		},
		"dns too many searches": func(r *runtime.RunPodSandboxRequest) {
			r.Config.DnsConfig = &runtime.DNSConfig{Searches: make([]string, 40)}
		},
		"sysctl not namespaced": func(r *runtime.RunPodSandboxRequest) { r.Config.Linux.Sysctls = map[string]string{"kernel.panic": "1"} },
		"sysctl vm": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Linux.Sysctls = map[string]string{"vm.swappiness": "1"}
		},
		"sysctl missing": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Linux.Sysctls = map[string]string{"net.ipv4.no_such_knob": "1"}
		},
		"sysctl traversal": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Linux.Sysctls = map[string]string{"net/../../kernel/panic": "1"}
		},
		"sysctl value newline": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Linux.Sysctls = map[string]string{"net.ipv4.ip_forward": "1\n0"}
		},
		"net sysctl hostNetwork": func(r *runtime.RunPodSandboxRequest) {
			hostNS(r, true, false)
			r.Config.Linux.Sysctls = map[string]string{"net.ipv4.ip_forward": "1"}
		},
		"ipc sysctl hostIPC": func(r *runtime.RunPodSandboxRequest) {
			hostNS(r, false, true)
			r.Config.Linux.Sysctls = map[string]string{"kernel.shm_rmid_forced": "1"}
		},
		"cgroup parent relative": func(r *runtime.RunPodSandboxRequest) { r.Config.Linux.CgroupParent = "kubepods/pod1" },
		"cgroup parent dotdot":   func(r *runtime.RunPodSandboxRequest) { r.Config.Linux.CgroupParent = "/kubepods/../../x" },
		"cgroup parent slice":    func(r *runtime.RunPodSandboxRequest) { r.Config.Linux.CgroupParent = "kubepods-besteffort.slice" },
		"port out of range": func(r *runtime.RunPodSandboxRequest) {
			r.Config.PortMappings = []*runtime.PortMapping{{ContainerPort: 70000}}
		},
		"host port negative": func(r *runtime.RunPodSandboxRequest) {
			r.Config.PortMappings = []*runtime.PortMapping{{ContainerPort: 80, HostPort: -1}}
		},
		"host ip bad": func(r *runtime.RunPodSandboxRequest) {
			r.Config.PortMappings = []*runtime.PortMapping{{ContainerPort: 80, HostPort: 80, HostIp: "nope"}}
		},
		"huge annotations": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Annotations = map[string]string{"big": strings.Repeat("a", 300<<10)}
		},
		"annotation key space": func(r *runtime.RunPodSandboxRequest) { r.Config.Annotations = map[string]string{"a b": "c"} },
		"label key empty":      func(r *runtime.RunPodSandboxRequest) { r.Config.Labels = map[string]string{"": "c"} },
		"bandwidth abc": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Annotations = map[string]string{"kubernetes.io/ingress-bandwidth": "abc"}
		},
		"bandwidth hostNetwork": func(r *runtime.RunPodSandboxRequest) {
			hostNS(r, true, false)
			r.Config.Annotations = map[string]string{"kubernetes.io/egress-bandwidth": "10M"}
		},
		"pid target without id": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Pid: runtime.NamespaceMode_TARGET}}
		},
		"network target": func(r *runtime.RunPodSandboxRequest) {
			r.Config.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_TARGET}}
		},
		"unknown runtime handler": func(r *runtime.RunPodSandboxRequest) { r.RuntimeHandler = "kata" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			req := validRequest()
			mutate(req)
			_, err := specFromRequest(req)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			if len(status.Convert(err).Message()) < 10 {
				t.Errorf("message %q does not tell a person what to fix", status.Convert(err).Message())
			}
		})
	}
}

func hostNS(r *runtime.RunPodSandboxRequest, net, ipc bool) {
	o := &runtime.NamespaceOption{}
	if net {
		o.Network = runtime.NamespaceMode_NODE
	}
	if ipc {
		o.Ipc = runtime.NamespaceMode_NODE
	}
	r.Config.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: o}
}

func TestHostNetworkDropsPortMappings(t *testing.T) {
	req := validRequest()
	hostNS(req, true, false)
	req.Config.PortMappings = []*runtime.PortMapping{{ContainerPort: 80, HostPort: 80}}
	spec, err := specFromRequest(req)
	if err != nil {
		t.Fatal(err)
	}
	if spec.NetworkMode != sandbox.ModeNode || len(spec.PortMappings) != 0 {
		t.Errorf("hostNetwork spec: %+v", spec)
	}
}

func TestDNSOptionSyntax(t *testing.T) {
	for _, ok := range []string{"ndots:5", "edns0", "timeout:2", "attempts:3", "single-request-reopen", "use-vc", "no-aaaa"} {
		if err := checkDNSOption(ok); err != nil {
			t.Errorf("%q rejected: %v", ok, err)
		}
	}
	for _, bad := range []string{"", ":5", "ndots:", "nd ots", "ndots:5 x", "a;b", "x:\t"} {
		if err := checkDNSOption(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
