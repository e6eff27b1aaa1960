package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	cgmanager "github.com/opencontainers/cgroups/manager"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runc/libcontainer/system"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"peapod/internal/atomicfile"
)

// ioDrainTimeout bounds how long an exit waits for the last output: a
// process that left a child holding the pipe must not delay the record.
const ioDrainTimeout = 2 * time.Second

const (
	stateFile = "state.json"
	exitFile  = "exit.json"
)

// container is one container of the pod, as the shim runs it.
type container struct {
	id  string
	dir string // <shim dir>/containers/<id>

	spec ContainerSpec
	lc   *libcontainer.Container
	cfg  *configs.Config
	log  *criLog
	pio  *processIO // stdio: stdin pipe or terminal, for attach
	fan  fanout     // attached clients

	// op serialises the lifecycle operations of this container.
	op sync.Mutex

	mu       sync.Mutex
	state    ContainerState
	created  chan struct{} // closed once create returned
	exited   chan struct{} // closed once the exit is recorded
	ioDone   chan struct{} // closed once stdout and stderr reached EOF
	memPaths []string      // cgroup dirs whose OOM-kill counter to read
}

// exitRecord is exit.json.
type exitRecord struct {
	ExitCode   int            `json:"exitCode"`
	Signal     syscall.Signal `json:"signal,omitempty"`
	FinishedAt time.Time      `json:"finishedAt"`
	OOMKilled  bool           `json:"oomKilled"`
}

func (c *container) snapshot() ContainerState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// create makes the container and starts its init, which then waits on the
// exec fifo for start.
func (s *server) create(cs ContainerSpec) (retErr error) {
	ociSpec, err := ociSpec(&cs, s.podCgroup, s.namespaceOf)
	if err != nil {
		return err
	}
	cfg, err := libcontainerConfig(cs.ID, ociSpec, cs.Privileged)
	if err != nil {
		return err
	}
	if dropped := rootlessCgroups(cfg.Cgroups); len(dropped) > 0 {
		s.log.Warn("rootless: cgroup controllers not delegated to this user; their limits are not applied",
			"container", cs.ID, "controllers", dropped)
	}
	c := &container{
		id:      cs.ID,
		dir:     filepath.Join(s.dir, "containers", cs.ID),
		spec:    cs,
		cfg:     cfg,
		created: make(chan struct{}),
		exited:  make(chan struct{}),
		ioDone:  make(chan struct{}),
	}
	defer close(c.created)
	if !s.reserve(c) {
		return fmt.Errorf("%w: %s", ErrExists, cs.ID)
	}
	defer func() {
		if retErr != nil {
			s.forget(c)
		}
	}()

	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("container %s: %w", cs.ID, err)
	}
	defer func() {
		if retErr != nil {
			os.RemoveAll(c.dir)
		}
	}()

	lc, err := libcontainer.Create(s.runcRoot, cs.ID, cfg)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return fmt.Errorf("%w: %s", ErrExists, cs.ID)
		}
		if errors.Is(err, libcontainer.ErrInvalidID) {
			return fmt.Errorf("%w: container id %q", ErrInvalid, cs.ID)
		}
		return fmt.Errorf("create container %s: %w", cs.ID, err)
	}
	c.lc = lc
	defer func() {
		if retErr != nil {
			_ = lc.Destroy()
		}
	}()

	if c.log, err = openCRILog(cs.LogPath); err != nil {
		return fmt.Errorf("container %s: open log: %w", cs.ID, err)
	}
	defer func() {
		if retErr != nil {
			c.log.close()
		}
	}()

	p := &libcontainer.Process{
		Args:             ociSpec.Process.Args,
		Env:              ociSpec.Process.Env,
		Cwd:              ociSpec.Process.Cwd,
		UID:              int(cs.User.UID),
		GID:              int(cs.User.GID),
		AdditionalGroups: intGIDs(cs.User.AdditionalGIDs),
		Init:             true,
	}
	stdio, err := newProcessIO(p, cs.Tty, cs.Stdin)
	if err != nil {
		return fmt.Errorf("container %s: %w", cs.ID, err)
	}
	defer stdio.closeChildEnds()
	pid, err := s.reaper.start(func() (int, error) {
		if err := lc.Start(p); err != nil {
			return 0, err
		}
		return p.Pid()
	}, func(e exit) { go c.onExit(e) })
	if err != nil {
		stdio.closeAll()
		return fmt.Errorf("start init of container %s: %w", cs.ID, err)
	}
	c.pio = stdio
	if st, err := lc.State(); err == nil {
		c.memPaths = oomCounterPaths(st.CgroupPaths)
	}
	c.mu.Lock()
	c.state = ContainerState{ID: cs.ID, Status: StatusCreated, Pid: pid, CreatedAt: time.Now(), LogPath: cs.LogPath}
	st := c.state
	c.mu.Unlock()
	if err := stdio.afterStart(); err != nil {
		_ = lc.Signal(unix.SIGKILL)
		stdio.closeAll()
		return fmt.Errorf("container %s: terminal: %w", cs.ID, err)
	}
	stdio.pump(c.log, &c.fan, c.ioDone)
	if err := writeJSONFile(filepath.Join(c.dir, stateFile), st); err != nil {
		s.log.Warn("persist container state", "container", cs.ID, "err", err)
	}
	return nil
}

// start lets the init exec the container's command.
func (c *container) start() error {
	c.op.Lock()
	defer c.op.Unlock()
	switch c.snapshot().Status {
	case StatusRunning:
		return nil
	case StatusExited:
		return fmt.Errorf("%w: container %s has exited", ErrNotRunning, c.id)
	}
	if err := c.lc.Exec(); err != nil {
		return fmt.Errorf("start container %s: %w", c.id, err)
	}
	c.mu.Lock()
	if c.state.Status == StatusCreated {
		c.state.Status = StatusRunning
		c.state.StartedAt = time.Now()
	}
	st := c.state
	c.mu.Unlock()
	if st.Status == StatusRunning {
		_ = writeJSONFile(filepath.Join(c.dir, stateFile), st)
	}
	return nil
}

// onExit records the init's exit once its output is drained.
func (c *container) onExit(e exit) {
	<-c.created
	select {
	case <-c.ioDone:
	case <-time.After(ioDrainTimeout):
	}
	rec := exitRecord{ExitCode: e.code(), FinishedAt: e.at, OOMKilled: oomKilled(c.memPaths)}
	if e.status.Signaled() {
		rec.Signal = e.status.Signal()
	}
	_ = writeJSONFile(filepath.Join(c.dir, exitFile), rec)
	c.mu.Lock()
	if c.state.StartedAt.IsZero() {
		// Killed before start: the CRI still wants a start time.
		c.state.StartedAt = e.at
	}
	c.state.Status = StatusExited
	c.state.Pid = 0
	c.state.ExitCode = rec.ExitCode
	c.state.Signal = rec.Signal
	c.state.FinishedAt = rec.FinishedAt
	c.state.OOMKilled = rec.OOMKilled
	c.mu.Unlock()
	close(c.exited)
}

// signal sends sig to the init, or with all to every process of the
// container's cgroup. A container that has exited takes no signal and that
// is no error.
func (c *container) signal(sig syscall.Signal, all bool) error {
	if c.snapshot().Status == StatusExited {
		return nil
	}
	var err error
	if all {
		err = c.signalAll(sig)
	} else {
		err = c.lc.Signal(sig)
	}
	if err != nil && (errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, os.ErrProcessDone)) {
		return nil
	}
	return err
}

// signalAll signals every process in the container's cgroup. The cgroup
// is frozen meanwhile so that no process forks past the signal.
func (c *container) signalAll(sig syscall.Signal) error {
	st, err := c.lc.State()
	if err != nil {
		return err
	}
	m, err := cgmanager.NewWithPaths(c.cfg.Cgroups, st.CgroupPaths)
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
	for _, pid := range pids {
		_ = unix.Kill(pid, sig)
	}
	if ferr := m.Freeze(cgroups.Thawed); err == nil {
		err = ferr
	}
	// The init may not be in the cgroup listing yet when it is still in
	// libcontainer's hands; signalling it directly is harmless.
	_ = c.lc.Signal(sig)
	return err
}

// stop sends the stop signal, waits up to timeout for the exit, then kills
// every process of the container.
func (c *container) stop(timeout time.Duration) ContainerState {
	if timeout > 0 {
		sig := c.spec.StopSignal
		if sig == 0 {
			sig = unix.SIGTERM
		}
		_ = c.signal(sig, false)
		select {
		case <-c.exited:
			return c.snapshot()
		case <-time.After(timeout):
		}
	}
	c.kill()
	return c.snapshot()
}

// kill SIGKILLs every process of the container and waits for the exit.
func (c *container) kill() bool {
	for range 3 {
		_ = c.signal(unix.SIGKILL, true)
		select {
		case <-c.exited:
			return true
		case <-time.After(5 * time.Second):
		}
	}
	return false
}

// destroy kills the container and removes everything the shim made for it.
func (c *container) destroy() error {
	c.op.Lock()
	defer c.op.Unlock()
	if c.snapshot().Status != StatusExited && !c.kill() {
		return fmt.Errorf("container %s: processes did not exit after SIGKILL", c.id)
	}
	if err := c.lc.Destroy(); err != nil {
		return fmt.Errorf("destroy container %s: %w", c.id, err)
	}
	c.pio.closeAll()
	c.log.close()
	return os.RemoveAll(c.dir)
}

// initAlive reports whether the container's init runs (not exited, not a
// zombie waiting for the reaper).
func (c *container) initAlive() bool {
	pid := c.snapshot().Pid
	if pid <= 0 {
		return false
	}
	st, err := system.Stat(pid)
	return err == nil && st.State != system.Zombie && st.State != system.Dead
}

// namespaceOf is the path of a namespace of another container of this
// shim (a TARGET namespace).
func (s *server) namespaceOf(kind specs.LinuxNamespaceType, id string) (string, error) {
	c := s.get(id)
	if c == nil {
		return "", fmt.Errorf("%w: target container %s", ErrNotFound, id)
	}
	st := c.snapshot()
	if st.Status == StatusExited || st.Pid == 0 {
		return "", fmt.Errorf("%w: target container %s", ErrNotRunning, id)
	}
	name := map[specs.LinuxNamespaceType]string{specs.NetworkNamespace: "net", specs.MountNamespace: "mnt"}[kind]
	if name == "" {
		name = string(kind)
	}
	return "/proc/" + strconv.Itoa(st.Pid) + "/ns/" + name, nil
}

// oomCounterPaths lists the files that count OOM kills in the container's
// memory cgroup: memory.oom_control on v1, memory.events on v2.
func oomCounterPaths(paths map[string]string) []string {
	if p, ok := paths["memory"]; ok {
		return []string{filepath.Join(p, "memory.oom_control")}
	}
	if p, ok := paths[""]; ok {
		return []string{filepath.Join(p, "memory.events")}
	}
	return nil
}

// oomKilled reads the "oom_kill N" line of the counter files.
func oomKilled(files []string) bool {
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if n, ok := strings.CutPrefix(line, "oom_kill "); ok && strings.TrimSpace(n) != "0" {
				return true
			}
		}
	}
	return false
}

// readState reads a container's records from disk, for a caller whose shim
// is gone.
func readState(dir, id string) (ContainerState, error) {
	if !validID(id) {
		return ContainerState{}, fmt.Errorf("%w: container id %q", ErrInvalid, id)
	}
	cdir := filepath.Join(dir, "containers", id)
	var st ContainerState
	b, err := os.ReadFile(filepath.Join(cdir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("container %s: %s: %w", id, stateFile, err)
	}
	b, err = os.ReadFile(filepath.Join(cdir, exitFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	var rec exitRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return st, fmt.Errorf("container %s: %s: %w", id, exitFile, err)
	}
	st.Status = StatusExited
	st.Pid = 0
	st.ExitCode = rec.ExitCode
	st.Signal = rec.Signal
	st.FinishedAt = rec.FinishedAt
	st.OOMKilled = rec.OOMKilled
	return st, nil
}

// writeJSONFile replaces path atomically (internal/atomicfile).
func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, b, 0o600)
}

func intGIDs(gids []uint32) []int {
	out := make([]int, len(gids))
	for i, g := range gids {
		out[i] = int(g)
	}
	return out
}

// update changes the container's cgroup limits (UpdateContainerResources).
func (c *container) update(r *specs.LinuxResources) error {
	c.op.Lock()
	defer c.op.Unlock()
	cs := c.spec
	cs.Resources = r
	cgPath := cgroupsPath(c.cfg.Cgroups)
	if c.cfg.Cgroups.Systemd { // the systemd driver's "slice:prefix:name"
		cgPath = c.cfg.Cgroups.Parent + ":" + c.cfg.Cgroups.ScopePrefix + ":" + c.cfg.Cgroups.Name
	}
	cg, err := specconv.CreateCgroupConfig(&specconv.CreateOpts{
		CgroupName: c.id,
		Spec: &specs.Spec{Linux: &specs.Linux{
			CgroupsPath: cgPath,
			Resources:   containerResources(&cs),
		}},
		RootlessCgroups:  c.cfg.RootlessCgroups,
		UseSystemdCgroup: c.cfg.Cgroups.Systemd,
	}, specconv.AllowedDevices)
	if err != nil {
		return fmt.Errorf("%w: container %s: resources: %v", ErrInvalid, c.id, err)
	}
	rootlessCgroups(cg) // as at create: same naming, same dropped limits
	cfg := *c.cfg
	cfg.Cgroups = cg
	if err := c.lc.Set(cfg); err != nil {
		return fmt.Errorf("update container %s: %w", c.id, err)
	}
	c.cfg = &cfg
	c.spec.Resources = r
	return nil
}
