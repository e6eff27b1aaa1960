package sandbox

import (
	"time"

	"peapod/cgroups"
	"peapod/netns"
)

// NamespaceMode says where a kind of namespace of the pod comes from.
type NamespaceMode string

const (
	// ModePod gives the pod its own namespace, shared by its containers.
	ModePod NamespaceMode = "pod"
	// ModeContainer gives each container its own (PID only); for the
	// sandbox itself it behaves like ModePod.
	ModeContainer NamespaceMode = "container"
	// ModeNode shares the host's namespace.
	ModeNode NamespaceMode = "node"
	// ModeTarget shares a target container's namespace (PID only).
	ModeTarget NamespaceMode = "target"
)

// DNSConfig is what the pod's resolv.conf says.
type DNSConfig struct {
	Servers  []string `json:"servers,omitempty"`
	Searches []string `json:"searches,omitempty"`
	Options  []string `json:"options,omitempty"`
}

// Spec is a validated request for a pod sandbox.
type Spec struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace"`
	UID       string `json:"uid"`
	Attempt   uint32 `json:"attempt"`

	Hostname       string              `json:"hostname,omitempty"`
	LogDirectory   string              `json:"logDirectory,omitempty"`
	DNS            *DNSConfig          `json:"dns,omitempty"`
	PortMappings   []netns.PortMapping `json:"portMappings,omitempty"`
	Labels         map[string]string   `json:"labels,omitempty"`
	Annotations    map[string]string   `json:"annotations,omitempty"`
	CgroupParent   string              `json:"cgroupParent,omitempty"`
	Sysctls        map[string]string   `json:"sysctls,omitempty"`
	RuntimeHandler string              `json:"runtimeHandler,omitempty"`

	NetworkMode NamespaceMode `json:"networkMode"`
	PIDMode     NamespaceMode `json:"pidMode"`
	IPCMode     NamespaceMode `json:"ipcMode"`
	TargetID    string        `json:"targetId,omitempty"`

	Bandwidth netns.BandwidthLimits `json:"bandwidth"`
}

// key identifies a sandbox request for idempotency, as the kubelet does.
func (s *Spec) key() string {
	return s.Namespace + "\x00" + s.Name + "\x00" + s.UID + "\x00" + itoa(uint64(s.Attempt))
}

// State is the lifecycle state of a sandbox.
type State string

const (
	StateCreating State = "creating" // record persisted, resources being made
	StateReady    State = "ready"    // pause alive, network attached
	StateStopping State = "stopping" // teardown started
	StateNotReady State = "notready" // stopped, failed, or pause died
	StateRemoving State = "removing" // removal started; record goes last
)

// PauseProcess identifies the pause process without trusting its pid alone.
type PauseProcess struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"startTime"` // clock ticks since boot, /proc/<pid>/stat field 22
}

// Sandbox is the persisted record of one pod sandbox.
type Sandbox struct {
	ID        string    `json:"id"`
	Spec      Spec      `json:"spec"`
	State     State     `json:"state"`
	CreatedAt time.Time `json:"createdAt"`
	Reason    string    `json:"reason,omitempty"` // why NotReady, for verbose status

	Pause      *PauseProcess          `json:"pause,omitempty"`
	Namespaces netns.PinnedNamespaces `json:"namespaces,omitempty"`
	Cgroup     *cgroups.PodCgroup     `json:"cgroup,omitempty"`
	Network    *netns.Attachment      `json:"network,omitempty"`
	Shaping    *netns.ShapingState    `json:"shaping,omitempty"`
	// NetworkDetachPending is set when CNI DEL failed; it is retried in the
	// background and the attachment is kept until it succeeds.
	NetworkDetachPending bool   `json:"networkDetachPending,omitempty"`
	Dir                  string `json:"dir"` // runtime files: pins, resolv.conf, hosts, shm
	// Resources are the pod-level limits of UpdatePodSandboxResources.
	Resources *PodResources `json:"resources,omitempty"`
}

// IP is the primary pod IP, or "".
func (s *Sandbox) IP() string {
	if s.Network == nil || len(s.Network.IPs) == 0 {
		return ""
	}
	return s.Network.IPs[0]
}

// Filter selects sandboxes in List.
type Filter struct {
	ID       string // exact id or unique prefix
	State    *State // ready or notready
	Selector map[string]string
}

func itoa(v uint64) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}
