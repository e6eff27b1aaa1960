package shim

import (
	"errors"
	"io"
	"syscall"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
)

// Errors a Client call may wrap; test with errors.Is.
var (
	// ErrNotFound: the shim knows no container with that id.
	ErrNotFound = errors.New("container not found")
	// ErrExists: a container with that id exists already.
	ErrExists = errors.New("container already exists")
	// ErrInvalid: the spec or request cannot be run as given.
	ErrInvalid = errors.New("invalid request")
	// ErrNotRunning: the container is not running (exec into an exited or
	// not yet started container).
	ErrNotRunning = errors.New("container is not running")
	// ErrExecTimeout: an exec ran past its timeout and was killed.
	ErrExecTimeout = errors.New("exec timed out")
)

// Status is where a container is in its life.
type Status string

const (
	StatusCreated Status = "created" // init waits for StartContainer
	StatusRunning Status = "running"
	StatusExited  Status = "exited"
)

// ContainerState is what the shim knows about one container.
type ContainerState struct {
	ID         string    `json:"id"`
	Status     Status    `json:"status"`
	Pid        int       `json:"pid,omitempty"` // host pid of the init; 0 once exited
	ExitCode   int       `json:"exitCode"`      // 128+n when killed by signal n
	CreatedAt  time.Time `json:"createdAt"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	// OOMKilled: the kernel's OOM killer killed a process of the
	// container's cgroup.
	OOMKilled bool `json:"oomKilled,omitempty"`
	// Signal is the signal that ended the init, 0 for a normal exit.
	Signal  syscall.Signal `json:"signal,omitempty"`
	LogPath string         `json:"logPath,omitempty"`
}

// Namespace is one namespace a container enters. A kind the spec does not
// list is the host's (the shim's). A new mount namespace is always made.
type Namespace struct {
	Type specs.LinuxNamespaceType `json:"type"` // "network", "ipc", "uts", "pid", "cgroup", "user"
	// Path is a namespace file to join (a sandbox pin), "" for a new
	// namespace, or "container:<id>" for that of another container of this
	// shim (PID namespace mode TARGET).
	Path string `json:"path,omitempty"`
}

// Propagation of a bind mount, in runtime-spec words.
type Propagation string

const (
	PropagationPrivate         Propagation = "rprivate" // CRI PROPAGATION_PRIVATE (default)
	PropagationHostToContainer Propagation = "rslave"   // CRI PROPAGATION_HOST_TO_CONTAINER
	PropagationBidirectional   Propagation = "rshared"  // CRI PROPAGATION_BIDIRECTIONAL
)

// Mount is a recursive bind mount of a host path into the container.
type Mount struct {
	Source      string      `json:"source"`
	Destination string      `json:"destination"`
	Readonly    bool        `json:"readonly,omitempty"`
	Propagation Propagation `json:"propagation,omitempty"`
}

// User is who the container's processes run as. Names are resolved by the
// caller (from the image config and the rootfs' /etc/passwd).
type User struct {
	UID            uint32   `json:"uid"`
	GID            uint32   `json:"gid"`
	AdditionalGIDs []uint32 `json:"additionalGids,omitempty"`
}

// ContainerSpec is a container to create in the pod.
type ContainerSpec struct {
	ID     string   `json:"id"`     // [A-Za-z0-9_+.-]+
	Rootfs string   `json:"rootfs"` // a prepared directory (overlay mount)
	Args   []string `json:"args"`
	Env    []string `json:"env,omitempty"` // PATH is added when missing
	Cwd    string   `json:"cwd,omitempty"` // default /
	User   User     `json:"user"`
	// Hostname is set only when the container has a new UTS namespace;
	// otherwise it shares the sandbox's.
	Hostname   string              `json:"hostname,omitempty"`
	Mounts     []Mount             `json:"mounts,omitempty"`
	Devices    []specs.LinuxDevice `json:"devices,omitempty"`
	Namespaces []Namespace         `json:"namespaces,omitempty"`
	// CgroupPath is the container's cgroupfs path; default
	// <PodCgroup>/<ID>. It must not be in use.
	CgroupPath string                `json:"cgroupPath,omitempty"`
	Resources  *specs.LinuxResources `json:"resources,omitempty"`
	// Capabilities is the full set ("CAP_NET_ADMIN", ...) the process has;
	// nil means DefaultCapabilities. Ignored when Privileged.
	Capabilities []string `json:"capabilities"` // no omitempty: [] (none) differs from nil (defaults)
	// Privileged: all capabilities, all host devices, no masked or
	// read-only paths, writable /sys.
	Privileged     bool `json:"privileged,omitempty"`
	NoNewPrivs     bool `json:"noNewPrivs,omitempty"`
	ReadonlyRootfs bool `json:"readonlyRootfs,omitempty"`
	// MaskedPaths and ReadonlyPaths: nil means the defaults (those of
	// containerd); an empty non-nil list means none.
	MaskedPaths   []string `json:"maskedPaths"`
	ReadonlyPaths []string `json:"readonlyPaths"`
	// Seccomp is applied as given (nil: no filter). It needs a peapod
	// built with the seccomp tag (libseccomp).
	Seccomp *specs.LinuxSeccomp `json:"seccomp,omitempty"`
	// OOMScoreAdj is raised to the shim's own value when the shim may not
	// lower it (no CAP_SYS_RESOURCE).
	OOMScoreAdj int `json:"oomScoreAdj,omitempty"`
	// LogPath is the CRI log file (kubelet's log_directory/log_path); ""
	// discards the output.
	LogPath string `json:"logPath,omitempty"`
	// Tty gives the container a terminal; its output is logged as stdout.
	Tty bool `json:"tty,omitempty"`
	// Stdin keeps a pipe open on the container's stdin (else /dev/null).
	Stdin bool `json:"stdin,omitempty"`
	// StopSignal is what Stop sends first; default SIGTERM.
	StopSignal syscall.Signal `json:"stopSignal,omitempty"`
}

// ExecSpec is a process to run in a running container.
type ExecSpec struct {
	Args []string
	Env  []string // added to (and overriding) the container's environment
	Cwd  string   // default: the container's
	Tty  bool
	// Stdin, when not nil, is copied to the process until EOF; else the
	// process reads /dev/null.
	Stdin  io.Reader
	Stdout io.Writer // nil discards; with Tty all output comes here
	Stderr io.Writer
	// Timeout kills the process (SIGKILL) after this long and makes Exec
	// return ErrExecTimeout; 0 means none.
	Timeout time.Duration
	// Resize, when not nil, carries terminal size changes (Tty only).
	Resize <-chan TerminalSize
}

// TerminalSize is a terminal's size in characters.
type TerminalSize struct {
	Width  uint16 `json:"width"`
	Height uint16 `json:"height"`
}

// DefaultCapabilities is the capability set of a container that asks for
// none in particular: the set Docker and containerd give.
func DefaultCapabilities() []string {
	return []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER",
		"CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID",
		"CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
		"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
	}
}
