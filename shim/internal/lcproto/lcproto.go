// Package lcproto is the protocol between the resident shim (package shim)
// and its one-shot libcontainer helper (package shim/lc): the request, sent
// as JSON on the helper's stdin, a unix socket, with the process's stdio
// riding on it as SCM_RIGHTS, and the reply, sent back on the same socket.
//
// It is a package of its own, importing nothing of either side, so that the
// resident shim shares the helper's wire types without linking the helper
// (libcontainer, cgroups, ...), and the helper, which imports package shim
// for the container spec, creates no import cycle.
package lcproto

// Arg is the argument that selects the helper: `<lc binary> lc` (the
// peapod-lc program) or, in the whole peapod, `peapod shim lc`.
const Arg = "lc"

// Operations of the helper.
const (
	Create  = "create"
	Exec    = "exec"
	KillAll = "kill-all"
	Delete  = "delete"
	Update  = "update"
)

// ExitUnused is the exit status of a helper that was started ahead of time
// and given no work (`--idle`): it did nothing.
const ExitUnused = 3

// Request is a helper's work. Spec is the shim's ContainerSpec (a type
// parameter: this package cannot import package shim).
type Request[Spec any] struct {
	Op   string `json:"op"`
	Root string `json:"root"` // libcontainer's state root
	ID   string `json:"id"`
	// Spec: create (namespace paths of other containers resolved), update
	// (with the new resources).
	Spec      *Spec    `json:"spec,omitempty"`
	PodCgroup string   `json:"podCgroup,omitempty"`
	Process   *Process `json:"process,omitempty"` // exec
	Signal    int      `json:"signal,omitempty"`  // kill-all
	// Stdio: indexes into the descriptors that came with the request, -1
	// none.
	Stdin, Stdout, Stderr, ConsoleSocket int
}

// Process is an exec process.
type Process struct {
	Args          []string `json:"args"`
	Env           []string `json:"env"`
	Cwd           string   `json:"cwd"`
	UID           int      `json:"uid"`
	GID           int      `json:"gid"`
	Groups        []int    `json:"groups,omitempty"`
	ConsoleWidth  uint16   `json:"consoleWidth,omitempty"`
	ConsoleHeight uint16   `json:"consoleHeight,omitempty"`
}

// Reply is a helper's answer.
type Reply struct {
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"` // one of the Code* below
	Pid   int    `json:"pid,omitempty"`
	// CgroupPaths: the container's cgroup in each hierarchy (create).
	CgroupPaths map[string]string `json:"cgroupPaths,omitempty"`
}

// Error codes: each names one of package shim's Err* sentinels, on this
// wire and on the daemon's.
const (
	CodeNotFound   = "notfound"
	CodeExists     = "exists"
	CodeInvalid    = "invalid"
	CodeNotRunning = "notrunning"
	CodeTimeout    = "timeout"
)
