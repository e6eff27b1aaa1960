package sandbox

import (
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
)

// ContainerMount is a host path bind-mounted into a container.
type ContainerMount struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	Readonly      bool   `json:"readonly,omitempty"`
	// Propagation: "private" (default), "rslave" or "rshared".
	Propagation string `json:"propagation,omitempty"`
}

// ContainerDevice is a host device node made available in a container.
type ContainerDevice struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	Permissions   string `json:"permissions,omitempty"` // "rwm"
}

// ContainerSecurity is the validated security context of a container.
type ContainerSecurity struct {
	RunAsUser          *int64  `json:"runAsUser,omitempty"`
	RunAsUsername      string  `json:"runAsUsername,omitempty"`
	RunAsGroup         *int64  `json:"runAsGroup,omitempty"`
	SupplementalGroups []int64 `json:"supplementalGroups,omitempty"`
	// StrictSupplementalGroups leaves out the groups the image's
	// /etc/group gives the user (CRI SupplementalGroupsPolicy Strict).
	StrictSupplementalGroups bool     `json:"strictSupplementalGroups,omitempty"`
	Privileged               bool     `json:"privileged,omitempty"`
	NoNewPrivs               bool     `json:"noNewPrivs,omitempty"`
	ReadonlyRootfs           bool     `json:"readonlyRootfs,omitempty"`
	AddCapabilities          []string `json:"addCapabilities,omitempty"`
	DropCapabilities         []string `json:"dropCapabilities,omitempty"`
	// MaskedPaths/ReadonlyPaths: nil means the runtime's defaults.
	MaskedPaths   []string            `json:"maskedPaths"`
	ReadonlyPaths []string            `json:"readonlyPaths"`
	Seccomp       *specs.LinuxSeccomp `json:"seccomp,omitempty"`
	// SeccompRuntimeDefault asks for peapod's default profile, built for the
	// container's final capabilities.
	SeccompRuntimeDefault bool          `json:"seccompRuntimeDefault,omitempty"`
	PIDMode               NamespaceMode `json:"pidMode,omitempty"`
	TargetID              string        `json:"targetId,omitempty"`
}

// ContainerConfig is a validated CreateContainer request.
type ContainerConfig struct {
	Name        string                `json:"name"`
	Attempt     uint32                `json:"attempt"`
	Image       string                `json:"image"` // as the kubelet gave it: name, digest ref or image id
	Command     []string              `json:"command,omitempty"`
	Args        []string              `json:"args,omitempty"`
	WorkingDir  string                `json:"workingDir,omitempty"`
	Env         []string              `json:"env,omitempty"` // KEY=value
	Mounts      []ContainerMount      `json:"mounts,omitempty"`
	Devices     []ContainerDevice     `json:"devices,omitempty"`
	Labels      map[string]string     `json:"labels,omitempty"`
	Annotations map[string]string     `json:"annotations,omitempty"`
	LogPath     string                `json:"logPath,omitempty"` // relative to the sandbox's log directory
	Stdin       bool                  `json:"stdin,omitempty"`
	StdinOnce   bool                  `json:"stdinOnce,omitempty"`
	Tty         bool                  `json:"tty,omitempty"`
	Resources   *specs.LinuxResources `json:"resources,omitempty"`
	OOMScoreAdj int                   `json:"oomScoreAdj,omitempty"`
	Security    ContainerSecurity     `json:"security"`
}

// ContainerState is where a container is in its life.
type ContainerState string

const (
	ContainerCreated ContainerState = "created"
	ContainerRunning ContainerState = "running"
	ContainerExited  ContainerState = "exited"
	ContainerUnknown ContainerState = "unknown"
)

// Container is the persisted record of one container.
type Container struct {
	ID          string          `json:"id"`
	SandboxID   string          `json:"sandboxId"`
	Config      ContainerConfig `json:"config"`
	ImageID     string          `json:"imageId"`
	ImageRef    string          `json:"imageRef"` // a repo digest when known, else the id
	ImageName   string          `json:"imageName"`
	CreatedAt   time.Time       `json:"createdAt"`
	StartedAt   time.Time       `json:"startedAt,omitzero"`
	FinishedAt  time.Time       `json:"finishedAt,omitzero"`
	State       ContainerState  `json:"state"`
	ExitCode    int32           `json:"exitCode"`
	Reason      string          `json:"reason,omitempty"`
	Message     string          `json:"message,omitempty"`
	LogPath     string          `json:"logPath,omitempty"` // absolute
	Pid         int             `json:"pid,omitempty"`
	Resources   *specs.LinuxResources
	RootfsReady bool `json:"rootfsReady,omitempty"`
	// User is who the container's init runs as, resolved at creation.
	User *ContainerUser `json:"user,omitempty"`
}

// ContainerFilter selects containers in ListContainers.
type ContainerFilter struct {
	ID        string
	SandboxID string
	State     *ContainerState
	Selector  map[string]string
}

// ContainerUser is the resolved identity of a container's processes.
type ContainerUser struct {
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups,omitempty"`
}
