// Package lc is the shim's one-shot libcontainer helper: the program
// peapod-lc (`peapod-lc lc [--idle D]`, or `peapod shim lc` in the whole
// peapod) that the resident shim (package shim) runs for each create,
// exec, kill of all processes, delete and update, and the conversion of
// the shim's ContainerSpec to runtime-spec and libcontainer configs. It is
// the only part of the shim that links libcontainer and the cgroup code;
// the resident shim must not import it (see shim/helper_linux.go).
package lc

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"time"

	"github.com/moby/sys/userns"
	"github.com/opencontainers/cgroups"
	// Device rules of container cgroups need the devices controller code.
	_ "github.com/opencontainers/cgroups/devices"
	cgmanager "github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs/validate"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"peapod/shim"
	"peapod/shim/internal/lcproto"
)

// Arg is the argument that selects the helper (`peapod-lc lc`, `peapod
// shim lc`).
const Arg = lcproto.Arg

// Shorthands for the wire types.
type (
	lcRequest = lcproto.Request[shim.ContainerSpec]
	lcReply   = lcproto.Reply
)

// childStdio is the process's side of its stdio, as the request brings it.
type childStdio struct {
	stdin, stdout, stderr *os.File
	consoleSock           *os.File // tty: receives the pty master
}

// The helper (`peapod-lc lc [--idle D]`): one request on fd 0, a unix
// socket, with the process's stdio as SCM_RIGHTS; the reply on the same
// socket; then exit, leaving any process it started to the shim. See
// shim/helper_linux.go.

// Main is the helper, with its arguments after "lc". It exits the process.
func Main(args []string) {
	// It lives for a few milliseconds: collecting garbage would only
	// slow it down.
	debug.SetGCPercent(-1)
	fs := flag.NewFlagSet("lc", flag.ContinueOnError)
	idle := fs.Duration("idle", 0, "started ahead of time: wait this long for a request, then exit unused")
	if err := fs.Parse(args); err != nil {
		os.Exit(2)
	}
	if *idle > 0 {
		warmCaches()
		pfd := []unix.PollFd{{Fd: 0, Events: unix.POLLIN}}
		deadline := time.Now().Add(*idle)
		for {
			n, err := unix.Poll(pfd, int(time.Until(deadline).Milliseconds()))
			if err == unix.EINTR {
				continue
			}
			if n == 0 && err == nil {
				os.Exit(lcproto.ExitUnused)
			}
			break
		}
	}
	req, files, err := readRequest(0)
	var rep *lcReply
	if err != nil {
		rep = &lcReply{}
		setErr(rep, fmt.Errorf("helper: read request: %w", err))
	} else {
		rep = runRequest(req, files)
	}
	b, _ := json.Marshal(rep)
	for len(b) > 0 {
		n, err := unix.Write(0, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			os.Exit(1)
		}
		b = b[n:]
	}
	// The shim reads to EOF: give it now rather than once this process
	// has torn down its address space.
	_ = unix.Shutdown(0, unix.SHUT_WR)
	os.Exit(0)
}

// warmCaches fills, while a spare helper waits for its request, the
// per-process caches that libcontainer and the cgroup manager otherwise
// fill on the request's path. The costly one is the v1 cgroup mounts,
// found by reading all of /proc/self/mountinfo, whose length grows with
// every pod on the host (its pins, shm and container root filesystems).
// Cgroup hierarchies are mounted at boot, so the cache cannot go stale
// in the few seconds a spare waits.
func warmCaches() {
	_ = userns.RunningInUserNS()
	if cgroups.IsCgroup2UnifiedMode() {
		return
	}
	// Reads (and caches) the cgroup mounts of mountinfo: the v1 manager
	// falls back to them for every hierarchy not mounted where it looks
	// first (the unmounted controllers, the named ones).
	_, _, _ = cgroups.FindCgroupMountpointAndRoot("", "devices")
	_ = warmCreatePath()
}

// warmCreatePath runs, on a made-up container, the pure part of a
// create: the spec's conversion to libcontainer's config, its validation
// and its encoding. It creates nothing. A fresh helper otherwise runs that
// code for the first time on the request's path, faulting its pages in
// and filling the packages' lazy tables while the caller waits. Its error
// says where the made-up container stopped being valid (tests).
func warmCreatePath() error {
	shares, limit := uint64(2), int64(64<<20)
	cs := &shim.ContainerSpec{
		ID:     "peapod-warm",
		Rootfs: "/",
		Args:   []string{"/bin/true"},
		Env:    []string{"HOSTNAME=warm"},
		Mounts: []shim.Mount{{Source: "/etc/hosts", Destination: "/etc/hosts", Readonly: true}},
		Namespaces: []shim.Namespace{
			{Type: specs.NetworkNamespace, Path: "/proc/self/ns/net"},
			{Type: specs.IPCNamespace, Path: "/proc/self/ns/ipc"},
			{Type: specs.UTSNamespace, Path: "/proc/self/ns/uts"},
			{Type: specs.PIDNamespace},
		},
		Resources: &specs.LinuxResources{
			CPU:    &specs.LinuxCPU{Shares: &shares},
			Memory: &specs.LinuxMemory{Limit: &limit},
		},
	}
	s, err := ociSpec(cs, "/peapod-warm", func(specs.LinuxNamespaceType, string) (string, error) {
		return "", errors.New("none")
	})
	if err != nil {
		return err
	}
	cfg, err := libcontainerConfig(cs.ID, s, false)
	if err != nil {
		return err
	}
	if err := validate.Validate(cfg); err != nil {
		return err
	}
	_, err = json.Marshal(cfg)
	return err
}

// errCodes are the codes of the shim's sentinels that a helper's error
// may wrap.
var errCodes = []struct {
	code     string
	sentinel error
}{
	{lcproto.CodeNotFound, shim.ErrNotFound},
	{lcproto.CodeExists, shim.ErrExists},
	{lcproto.CodeInvalid, shim.ErrInvalid},
	{lcproto.CodeNotRunning, shim.ErrNotRunning},
}

// setErr puts err in the reply, with the code of its sentinel: the
// daemon's errors.Is sees through the shim.
func setErr(rep *lcReply, err error) {
	rep.Error = err.Error()
	for _, c := range errCodes {
		if errors.Is(err, c.sentinel) {
			rep.Code = c.code
			break
		}
	}
}

// readRequest reads fd to EOF: the JSON request, and the descriptors that
// came with it.
func readRequest(fd int) (*lcRequest, []*os.File, error) {
	var data []byte
	var files []*os.File
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*8))
	for {
		n, oobn, _, _, err := unix.Recvmsg(fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, nil, err
		}
		if oobn > 0 {
			msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
			if err != nil {
				return nil, nil, err
			}
			for i := range msgs {
				fds, err := unix.ParseUnixRights(&msgs[i])
				if err != nil {
					return nil, nil, err
				}
				for _, fd := range fds {
					files = append(files, os.NewFile(uintptr(fd), "stdio"))
				}
			}
		}
		if n == 0 {
			break
		}
		data = append(data, buf[:n]...)
	}
	var req lcRequest
	if err := json.Unmarshal(data, &req); err != nil {
		return nil, nil, err
	}
	return &req, files, nil
}

func runRequest(req *lcRequest, files []*os.File) *lcReply {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("helper", req.Op, "container", req.ID)
	file := func(i int) *os.File {
		if i < 0 || i >= len(files) {
			return nil
		}
		return files[i]
	}
	stdio := childStdio{stdin: file(req.Stdin), stdout: file(req.Stdout), stderr: file(req.Stderr), consoleSock: file(req.ConsoleSocket)}
	rep := &lcReply{}
	var err error
	switch req.Op {
	case lcproto.Create:
		err = lcCreateContainer(req, stdio, rep, log)
	case lcproto.Exec:
		err = lcExecProcess(req, stdio, rep)
	case lcproto.KillAll:
		err = lcSignalAll(req)
	case lcproto.Delete:
		err = lcDestroy(req)
	case lcproto.Update:
		err = lcUpdateResources(req)
	default:
		err = fmt.Errorf("%w: helper operation %q", shim.ErrInvalid, req.Op)
	}
	if err != nil {
		setErr(rep, err)
	}
	return rep
}

// setStdio gives p the process's side of its stdio.
func setStdio(p *libcontainer.Process, stdio childStdio) {
	if stdio.consoleSock != nil {
		p.ConsoleSocket = stdio.consoleSock
		return
	}
	// An untyped nil *os.File would not be nil as an io.Reader.
	if stdio.stdin != nil {
		p.Stdin = stdio.stdin
	}
	if stdio.stdout != nil {
		p.Stdout = stdio.stdout
	}
	if stdio.stderr != nil {
		p.Stderr = stdio.stderr
	}
}

// lcCreateContainer creates the container and starts its init, which then
// waits on the exec fifo for the shim's start.
func lcCreateContainer(req *lcRequest, stdio childStdio, rep *lcReply, log *slog.Logger) error {
	cs := req.Spec
	if cs == nil {
		return fmt.Errorf("%w: no spec", shim.ErrInvalid)
	}
	ociSpec, err := ociSpec(cs, req.PodCgroup, func(_ specs.LinuxNamespaceType, id string) (string, error) {
		// The shim resolved those of its running containers.
		return "", fmt.Errorf("%w: target container %s", shim.ErrNotFound, id)
	})
	if err != nil {
		return err
	}
	cfg, err := libcontainerConfig(cs.ID, ociSpec, cs.Privileged)
	if err != nil {
		return err
	}
	if dropped := rootlessCgroups(cfg.Cgroups); len(dropped) > 0 {
		log.Warn("rootless: cgroup controllers not delegated to this user; their limits are not applied",
			"controllers", dropped)
	}
	lc, err := libcontainer.Create(req.Root, cs.ID, cfg)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return fmt.Errorf("%w: %s", shim.ErrExists, cs.ID)
		}
		if errors.Is(err, libcontainer.ErrInvalidID) {
			return fmt.Errorf("%w: container id %q", shim.ErrInvalid, cs.ID)
		}
		return fmt.Errorf("create container %s: %w", cs.ID, err)
	}
	p := &libcontainer.Process{
		Args:             ociSpec.Process.Args,
		Env:              ociSpec.Process.Env,
		Cwd:              ociSpec.Process.Cwd,
		UID:              int(cs.User.UID),
		GID:              int(cs.User.GID),
		AdditionalGroups: intGIDs(cs.User.AdditionalGIDs),
		Init:             true,
	}
	setStdio(p, stdio)
	if err := lc.Start(p); err != nil {
		_ = lc.Destroy()
		return fmt.Errorf("start init of container %s: %w", cs.ID, err)
	}
	pid, err := p.Pid()
	var st *libcontainer.State
	if err == nil {
		st, err = lc.State()
	}
	if err != nil {
		_ = p.Signal(unix.SIGKILL)
		_ = lc.Destroy()
		return fmt.Errorf("start init of container %s: %w", cs.ID, err)
	}
	rep.Pid, rep.CgroupPaths = pid, st.CgroupPaths
	return nil
}

// lcExecProcess starts a process in the running container.
func lcExecProcess(req *lcRequest, stdio childStdio, rep *lcReply) error {
	pr := req.Process
	if pr == nil || len(pr.Args) == 0 {
		return fmt.Errorf("%w: exec without a command", shim.ErrInvalid)
	}
	lc, err := libcontainer.Load(req.Root, req.ID)
	if err != nil {
		return err
	}
	p := &libcontainer.Process{
		Args:             pr.Args,
		Env:              pr.Env,
		Cwd:              pr.Cwd,
		UID:              pr.UID,
		GID:              pr.GID,
		AdditionalGroups: pr.Groups,
		ConsoleWidth:     pr.ConsoleWidth,
		ConsoleHeight:    pr.ConsoleHeight,
		SubCgroupPaths:   execCgroupPaths(lc),
	}
	setStdio(p, stdio)
	if err := lc.Run(p); err != nil {
		return err
	}
	rep.Pid, err = p.Pid()
	return err
}

// lcSignalAll signals every process in the container's cgroup. The cgroup
// is frozen meanwhile so that no process forks past the signal.
func lcSignalAll(req *lcRequest) error {
	lc, err := libcontainer.Load(req.Root, req.ID)
	if err != nil {
		return err
	}
	st, err := lc.State()
	if err != nil {
		return err
	}
	cfg := lc.Config()
	m, err := cgmanager.NewWithPaths(cfg.Cgroups, st.CgroupPaths)
	if err != nil {
		return err
	}
	if err := m.Freeze(cgroups.Frozen); err != nil {
		// Signal anyway: a missed fork is better than no signal.
		_ = m.Freeze(cgroups.Thawed)
	}
	pids, err := m.GetAllPids()
	if err != nil {
		// Rootless: the hierarchy the manager lists from (devices on
		// v1) may not be delegated; any other of the container's does.
		if dir := anyCgroupDir(st.CgroupPaths); dir != "" {
			pids, err = cgroups.GetAllPids(dir)
		}
	}
	sig := unix.Signal(req.Signal)
	for _, pid := range pids {
		_ = unix.Kill(pid, sig)
	}
	if ferr := m.Freeze(cgroups.Thawed); err == nil {
		err = ferr
	}
	return err
}

// lcDestroy removes the container's cgroups and libcontainer's state. Its
// processes have ended.
func lcDestroy(req *lcRequest) error {
	lc, err := libcontainer.Load(req.Root, req.ID)
	if errors.Is(err, libcontainer.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("destroy container %s: %w", req.ID, err)
	}
	if err := lc.Destroy(); err != nil {
		return fmt.Errorf("destroy container %s: %w", req.ID, err)
	}
	return nil
}

// lcUpdateResources changes the container's cgroup limits.
func lcUpdateResources(req *lcRequest) error {
	if req.Spec == nil {
		return fmt.Errorf("%w: no spec", shim.ErrInvalid)
	}
	lc, err := libcontainer.Load(req.Root, req.ID)
	if err != nil {
		return fmt.Errorf("update container %s: %w", req.ID, err)
	}
	cfg := lc.Config()
	cgPath := cgroupsPath(cfg.Cgroups)
	if cfg.Cgroups.Systemd { // the systemd driver's "slice:prefix:name"
		cgPath = cfg.Cgroups.Parent + ":" + cfg.Cgroups.ScopePrefix + ":" + cfg.Cgroups.Name
	}
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{
		CgroupName: req.ID,
		Spec: &specs.Spec{Linux: &specs.Linux{
			CgroupsPath: cgPath,
			Resources:   containerResources(req.Spec),
		}},
		RootlessCgroups:  cfg.RootlessCgroups,
		UseSystemdCgroup: cfg.Cgroups.Systemd,
	}, specconv.AllowedDevices)
	if err != nil {
		return fmt.Errorf("%w: container %s: resources: %v", shim.ErrInvalid, req.ID, err)
	}
	rootlessCgroups(cg) // as at create: same naming, same dropped limits
	cfg.Cgroups = cg
	if err := lc.Set(cfg); err != nil {
		return fmt.Errorf("update container %s: %w", req.ID, err)
	}
	return nil
}
