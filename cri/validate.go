package cri

import (
	"errors"

	"net"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/netns"
	"peapod/sandbox"
)

// Limits on request fields. They are generous for a kubelet and still stop
// a request from making the daemon write unbounded data to disk.
const (
	maxNameLen        = 253       // pod names are DNS subdomains
	maxUIDLen         = 256       //
	maxHostnameLen    = 64        // HOST_NAME_MAX
	maxMetaTotalBytes = 256 << 10 // Kubernetes' limit for all annotations
	maxMetaKeyLen     = 317       // 253 prefix + "/" + 63 name
	maxDNSServers     = 16
	maxDNSSearches    = 32
	maxDNSSearchChars = 2048
	maxDNSOptions     = 32
	maxSysctlValueLen = 4096
	maxPortMappings   = 1024
)

// specFromRequest validates a RunPodSandbox request and converts it. Every
// error is an InvalidArgument status that names the field.
func specFromRequest(req *runtime.RunPodSandboxRequest) (*sandbox.Spec, error) {
	return specForDriver(req, "cgroupfs")
}

// specForDriver is specFromRequest for a cgroup driver: with systemd the
// cgroup_parent is a slice name.
func specForDriver(req *runtime.RunPodSandboxRequest, cgroupDriver string) (*sandbox.Spec, error) {
	cfg := req.GetConfig()
	if cfg == nil {
		return nil, invalid("config is required")
	}
	md := cfg.GetMetadata()
	if md == nil {
		return nil, invalid("config.metadata is required (name, namespace, uid)")
	}
	if err := checkName("metadata.name", md.GetName(), maxNameLen); err != nil {
		return nil, err
	}
	if err := checkName("metadata.namespace", md.GetNamespace(), maxNameLen); err != nil {
		return nil, err
	}
	if err := checkName("metadata.uid", md.GetUid(), maxUIDLen); err != nil {
		return nil, err
	}
	spec := &sandbox.Spec{
		Name:           md.GetName(),
		Namespace:      md.GetNamespace(),
		UID:            md.GetUid(),
		Attempt:        md.GetAttempt(),
		Hostname:       cfg.GetHostname(),
		LogDirectory:   cfg.GetLogDirectory(),
		Labels:         cfg.GetLabels(),
		Annotations:    cfg.GetAnnotations(),
		RuntimeHandler: req.GetRuntimeHandler(),
		// CRI's zero value for every namespace mode is POD.
		NetworkMode: sandbox.ModePod,
		PIDMode:     sandbox.ModePod,
		IPCMode:     sandbox.ModePod,
	}
	if err := checkHostname(spec.Hostname); err != nil {
		return nil, err
	}
	if err := checkLogDirectory(spec.LogDirectory); err != nil {
		return nil, err
	}
	if err := checkMetadataMap("labels", spec.Labels); err != nil {
		return nil, err
	}
	if err := checkMetadataMap("annotations", spec.Annotations); err != nil {
		return nil, err
	}
	switch spec.RuntimeHandler {
	case "", runtimeName:
	default:
		return nil, invalid("runtime handler %q is not configured; peapod offers \"\" (default) and %q", spec.RuntimeHandler, runtimeName)
	}

	linux := cfg.GetLinux()
	if ns := linux.GetSecurityContext().GetNamespaceOptions(); ns != nil {
		var err error
		if spec.NetworkMode, err = namespaceMode("network", ns.GetNetwork(), false); err != nil {
			return nil, err
		}
		if spec.PIDMode, err = namespaceMode("pid", ns.GetPid(), true); err != nil {
			return nil, err
		}
		if spec.IPCMode, err = namespaceMode("ipc", ns.GetIpc(), false); err != nil {
			return nil, err
		}
		if spec.PIDMode == sandbox.ModeTarget {
			if ns.GetTargetId() == "" {
				return nil, invalid("namespace_options.pid is TARGET but target_id is empty")
			}
			spec.TargetID = ns.GetTargetId()
		}
		if spec.NetworkMode == sandbox.ModeContainer {
			spec.NetworkMode = sandbox.ModePod
		}
		if spec.IPCMode == sandbox.ModeContainer {
			spec.IPCMode = sandbox.ModePod
		}
	}
	cp := linux.GetCgroupParent()
	if err := checkCgroupParent(cp, cgroupDriver); err != nil {
		return nil, err
	}
	spec.CgroupParent = cp

	sysctls, err := checkSysctls(linux.GetSysctls(), spec.NetworkMode == sandbox.ModeNode, spec.IPCMode == sandbox.ModeNode)
	if err != nil {
		return nil, err
	}
	spec.Sysctls = sysctls

	if spec.DNS, err = dnsFromRequest(cfg.GetDnsConfig()); err != nil {
		return nil, err
	}
	if spec.PortMappings, err = portMappings(cfg.GetPortMappings()); err != nil {
		return nil, err
	}
	if spec.NetworkMode == sandbox.ModeNode {
		spec.PortMappings = nil // the pod listens on the host's ports itself
	}

	bw, err := netns.ParseBandwidthAnnotations(spec.Annotations)
	if err != nil {
		return nil, invalid("%v", err)
	}
	if bw.Shaped() && spec.NetworkMode == sandbox.ModeNode {
		return nil, invalid("bandwidth annotations are not supported for host-network pods: there is no pod interface to shape (remove %s/%s or hostNetwork)", netns.IngressBandwidthAnnotation, netns.EgressBandwidthAnnotation)
	}
	spec.Bandwidth = bw
	return spec, nil
}

func hasControl(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return true
		}
	}
	return false
}

// checkName rejects what could escape a path or confuse a log line.
func checkName(field, v string, max int) error {
	switch {
	case v == "":
		return invalid("%s is required", field)
	case len(v) > max:
		return invalid("%s is %d bytes long; at most %d allowed", field, len(v), max)
	case !utf8.ValidString(v) || hasControl(v):
		return invalid("%s %q contains control characters or invalid UTF-8", field, v)
	case strings.ContainsAny(v, "/\\"):
		return invalid("%s %q must not contain a slash", field, v)
	case v == "." || v == "..":
		return invalid("%s must not be %q", field, v)
	}
	return nil
}

func checkHostname(h string) error {
	if h == "" {
		return nil
	}
	if len(h) > maxHostnameLen {
		return invalid("hostname %q is %d bytes long; the kernel allows at most %d", h, len(h), maxHostnameLen)
	}
	for i, r := range h {
		ok := r == '-' || r == '.' || r == '_' || (r >= '0' && r <= '9') || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z')
		if !ok {
			return invalid("hostname %q: character %q at %d is not allowed (use letters, digits, '-' and '.')", h, r, i)
		}
	}
	if strings.HasPrefix(h, "-") || strings.HasPrefix(h, ".") || strings.HasSuffix(h, "-") || strings.HasSuffix(h, ".") {
		return invalid("hostname %q must start and end with a letter or digit", h)
	}
	return nil
}

func checkLogDirectory(d string) error {
	if d == "" {
		return nil
	}
	if hasControl(d) || !utf8.ValidString(d) {
		return invalid("log_directory %q contains control characters", d)
	}
	if !filepath.IsAbs(d) {
		return invalid("log_directory %q must be an absolute path", d)
	}
	for _, part := range strings.Split(d, "/") {
		if part == ".." {
			return invalid("log_directory %q must not contain \"..\"", d)
		}
	}
	return nil
}

func checkMetadataMap(field string, m map[string]string) error {
	total := 0
	for k, v := range m {
		total += len(k) + len(v)
		if k == "" {
			return invalid("%s: empty key", field)
		}
		if len(k) > maxMetaKeyLen {
			return invalid("%s: key %.40q... is %d bytes long; at most %d allowed", field, k, len(k), maxMetaKeyLen)
		}
		if hasControl(k) || !utf8.ValidString(k) || strings.ContainsAny(k, " \t") {
			return invalid("%s: key %q contains whitespace or control characters", field, k)
		}
		if strings.ContainsRune(v, 0) || !utf8.ValidString(v) {
			return invalid("%s: value of %q contains NUL or invalid UTF-8", field, k)
		}
	}
	if total > maxMetaTotalBytes {
		return invalid("%s total %d bytes; at most %d allowed", field, total, maxMetaTotalBytes)
	}
	return nil
}

func namespaceMode(kind string, m runtime.NamespaceMode, targetOK bool) (sandbox.NamespaceMode, error) {
	switch m {
	case runtime.NamespaceMode_POD:
		return sandbox.ModePod, nil
	case runtime.NamespaceMode_CONTAINER:
		return sandbox.ModeContainer, nil
	case runtime.NamespaceMode_NODE:
		return sandbox.ModeNode, nil
	case runtime.NamespaceMode_TARGET:
		if targetOK {
			return sandbox.ModeTarget, nil
		}
		return "", invalid("namespace_options.%s: TARGET is only valid for pid", kind)
	}
	return "", invalid("namespace_options.%s: unknown mode %d", kind, m)
}

func checkCgroupParent(p, cgroupDriver string) error {
	if p == "" {
		return nil
	}
	if cgroupDriver == "systemd" {
		if strings.HasSuffix(p, ".slice") && !strings.Contains(p, "/") && !hasControl(p) {
			return nil // checked by the driver (cgroups.Driver)
		}
		return invalid("cgroup_parent %q is not a systemd slice name such as kubepods-besteffort-pod<uid>.slice; peapod uses the systemd cgroup driver: set the kubelet's cgroupDriver to systemd too", p)
	}
	if strings.HasSuffix(p, ".slice") && !strings.HasPrefix(p, "/") {
		return invalid("cgroup_parent %q is a systemd slice, but peapod uses the cgroupfs driver: set the kubelet's cgroupDriver to cgroupfs", p)
	}
	if !filepath.IsAbs(p) || hasControl(p) {
		return invalid("cgroup_parent %q must be an absolute cgroup path such as /kubepods/besteffort/pod<uid>", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "." {
			return invalid("cgroup_parent %q must not contain %q", p, part)
		}
	}
	return nil
}

// namespacedSysctl says which pod namespace a sysctl belongs to, following
// Kubernetes' list of namespaced sysctls.
func namespacedSysctl(name string) (netns.Kind, bool) {
	switch {
	case strings.HasPrefix(name, "net."):
		return netns.Net, true
	case name == "kernel.sem", strings.HasPrefix(name, "kernel.shm"), strings.HasPrefix(name, "kernel.msg"), strings.HasPrefix(name, "fs.mqueue."):
		return netns.IPC, true
	}
	return "", false
}

var procSys = "/proc/sys"

func checkSysctls(in map[string]string, hostNet, hostIPC bool) (map[string]string, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := map[string]string{}
	for name, value := range in {
		if name == "" || hasControl(name) || strings.ContainsAny(name, " \t") {
			return nil, invalid("sysctl name %q is malformed", name)
		}
		dotted := strings.ReplaceAll(name, "/", ".")
		for _, part := range strings.Split(dotted, ".") {
			if part == "" || part == ".." {
				return nil, invalid("sysctl name %q is malformed", name)
			}
		}
		if strings.Contains(name, "..") {
			return nil, invalid("sysctl name %q is malformed", name)
		}
		kind, ok := namespacedSysctl(dotted)
		if !ok {
			return nil, invalid("sysctl %q is not namespaced: it would change the whole node; only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.* can be set for a pod", name)
		}
		if kind == netns.Net && hostNet {
			return nil, invalid("sysctl %q cannot be set for a host-network pod: it would change the node's network namespace", name)
		}
		if kind == netns.IPC && hostIPC {
			return nil, invalid("sysctl %q cannot be set for a host-IPC pod: it would change the node's IPC namespace", name)
		}
		if len(value) > maxSysctlValueLen || strings.ContainsAny(value, "\x00\n") {
			return nil, invalid("sysctl %s: value %.40q is too long or contains a newline/NUL", name, value)
		}
		if kind == netns.IPC || !interfaceSpecific(dotted) {
			path := sysctlFile(name)
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				return nil, invalid("sysctl %q does not exist on this kernel", name)
			}
		}
		out[name] = value
	}
	return out, nil
}

func sysctlFile(name string) string {
	if strings.Contains(name, "/") {
		return filepath.Join(procSys, name)
	}
	return filepath.Join(procSys, strings.ReplaceAll(name, ".", "/"))
}

// interfaceSpecific sysctls (net.ipv4.conf.eth0.*) name devices that exist
// only inside the pod, so they cannot be checked against the host.
func interfaceSpecific(name string) bool {
	for _, p := range []string{"net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh.", "net.ipv6.neigh."} {
		if strings.HasPrefix(name, p) {
			rest := strings.TrimPrefix(name, p)
			return !strings.HasPrefix(rest, "all.") && !strings.HasPrefix(rest, "default.")
		}
	}
	return false
}

func dnsFromRequest(d *runtime.DNSConfig) (*sandbox.DNSConfig, error) {
	if d == nil {
		return nil, nil
	}
	if len(d.GetServers()) > maxDNSServers {
		return nil, invalid("dns_config: %d servers; at most %d allowed", len(d.GetServers()), maxDNSServers)
	}
	for _, s := range d.GetServers() {
		if net.ParseIP(s) == nil {
			return nil, invalid("dns_config: server %q is not an IP address", s)
		}
	}
	if len(d.GetSearches()) > maxDNSSearches {
		return nil, invalid("dns_config: %d search domains; at most %d allowed", len(d.GetSearches()), maxDNSSearches)
	}
	total := 0
	for _, s := range d.GetSearches() {
		total += len(s) + 1
		if s == "" || len(s) > 253 || hasControl(s) || strings.ContainsAny(s, " \t#;") {
			return nil, invalid("dns_config: search domain %q is not a valid domain", s)
		}
	}
	if total > maxDNSSearchChars {
		return nil, invalid("dns_config: search list is %d characters; at most %d allowed", total, maxDNSSearchChars)
	}
	if len(d.GetOptions()) > maxDNSOptions {
		return nil, invalid("dns_config: %d options; at most %d allowed", len(d.GetOptions()), maxDNSOptions)
	}
	for _, o := range d.GetOptions() {
		if err := checkDNSOption(o); err != nil {
			return nil, err
		}
	}
	return &sandbox.DNSConfig{Servers: d.GetServers(), Searches: d.GetSearches(), Options: d.GetOptions()}, nil
}

// checkDNSOption accepts resolv.conf option syntax: name or name:value.
func checkDNSOption(o string) error {
	name, value, hasValue := strings.Cut(o, ":")
	if name == "" || len(o) > 64 {
		return invalid("dns_config: option %q is malformed (expected name or name:value, e.g. ndots:5)", o)
	}
	for _, r := range name {
		if !(r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')) {
			return invalid("dns_config: option %q is malformed (expected name or name:value, e.g. ndots:5)", o)
		}
	}
	if hasValue {
		if value == "" {
			return invalid("dns_config: option %q has an empty value", o)
		}
		for _, r := range value {
			if r <= ' ' || r == 0x7f {
				return invalid("dns_config: option %q is malformed (no whitespace allowed)", o)
			}
		}
	}
	return nil
}

func portMappings(in []*runtime.PortMapping) ([]netns.PortMapping, error) {
	if len(in) > maxPortMappings {
		return nil, invalid("%d port mappings; at most %d allowed", len(in), maxPortMappings)
	}
	var out []netns.PortMapping
	for _, pm := range in {
		if pm.GetContainerPort() <= 0 || pm.GetContainerPort() > 65535 {
			return nil, invalid("port mapping: container_port %d out of range 1-65535", pm.GetContainerPort())
		}
		if pm.GetHostPort() < 0 || pm.GetHostPort() > 65535 {
			return nil, invalid("port mapping: host_port %d out of range 0-65535", pm.GetHostPort())
		}
		if pm.GetHostIp() != "" && net.ParseIP(pm.GetHostIp()) == nil {
			return nil, invalid("port mapping: host_ip %q is not an IP address", pm.GetHostIp())
		}
		proto := strings.ToLower(pm.GetProtocol().String())
		if pm.GetHostPort() == 0 {
			continue // no host port: nothing to publish
		}
		out = append(out, netns.PortMapping{
			HostPort:      pm.GetHostPort(),
			ContainerPort: pm.GetContainerPort(),
			Protocol:      proto,
			HostIP:        pm.GetHostIp(),
		})
	}
	return out, nil
}
