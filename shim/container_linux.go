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
	s   *server

	spec ContainerSpec
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
// exec fifo for start. A helper does libcontainer's part (lcCreate); the
// shim keeps the stdio and the log, and becomes the init's parent when
// the helper exits.
func (s *server) create(cs ContainerSpec) (retErr error) {
	// The helper starts up (exec, Go runtime) while the shim prepares.
	s.reaper.begin()
	defer s.reaper.end()
	h, err := s.acquireHelper()
	if err != nil {
		return err
	}
	called := false
	defer func() {
		if !called {
			h.conn.Close() // the helper ends, idle
		}
	}()
	if err := cs.Validate(); err != nil {
		return err
	}
	// The helper knows no other container: it gets their namespaces as
	// paths.
	hs := cs
	hs.Namespaces = make([]Namespace, len(cs.Namespaces))
	for i, ns := range cs.Namespaces {
		if target, ok := strings.CutPrefix(ns.Path, "container:"); ok && ns.Type != specs.MountNamespace {
			p, err := s.namespaceOf(ns.Type, target)
			if err != nil {
				return err
			}
			ns.Path = p
		}
		hs.Namespaces[i] = ns
	}
	c := &container{
		id:      cs.ID,
		dir:     filepath.Join(s.dir, "containers", cs.ID),
		s:       s,
		spec:    cs,
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

	if c.log, err = openCRILog(cs.LogPath); err != nil {
		return fmt.Errorf("container %s: open log: %w", cs.ID, err)
	}
	defer func() {
		if retErr != nil {
			c.log.close()
		}
	}()

	stdio, child, err := newProcessIO(cs.Tty, cs.Stdin)
	if err != nil {
		return fmt.Errorf("container %s: %w", cs.ID, err)
	}
	pid := 0
	called = true
	rep, err := s.callHelper(h, &lcRequest{Op: lcCreate, ID: cs.ID, Spec: &hs, PodCgroup: s.podCgroup}, child, func(rep *lcReply) {
		if rep.Error == "" && rep.Pid > 0 {
			pid = rep.Pid
			s.reaper.register(pid, func(e exit) { go c.onExit(e) })
		}
	})
	stdio.closeChildEnds()
	if err == nil && pid <= 0 {
		err = fmt.Errorf("helper reported no pid")
	}
	if err != nil {
		stdio.closeAll()
		if pid > 0 {
			s.reaper.signal(pid, unix.SIGKILL)
			_, _ = s.runHelper(&lcRequest{Op: lcDelete, ID: cs.ID}, childStdio{}, nil)
		}
		return err
	}
	c.pio = stdio
	c.memPaths = oomCounterPaths(rep.CgroupPaths)
	c.mu.Lock()
	c.state = ContainerState{ID: cs.ID, Status: StatusCreated, Pid: pid, CreatedAt: time.Now(), LogPath: cs.LogPath}
	st := c.state
	c.mu.Unlock()
	if err := stdio.afterStart(); err != nil {
		s.reaper.signal(pid, unix.SIGKILL)
		stdio.closeAll()
		_, _ = s.runHelper(&lcRequest{Op: lcDelete, ID: cs.ID}, childStdio{}, nil)
		return fmt.Errorf("container %s: terminal: %w", cs.ID, err)
	}
	stdio.pump(c.log, &c.fan, c.ioDone)
	if err := writeJSONFile(filepath.Join(c.dir, stateFile), st); err != nil {
		s.log.Warn("persist container state", "container", cs.ID, "err", err)
	}
	return nil
}

// execFifoName is libcontainer's exec fifo in the container's state dir:
// the init opens it for writing, writes a byte once a reader opened it,
// and then execs the container's command.
const execFifoName = "exec.fifo"

// start lets the init exec the container's command.
func (c *container) start() error {
	c.op.Lock()
	defer c.op.Unlock()
	st := c.snapshot()
	switch st.Status {
	case StatusRunning:
		return nil
	case StatusExited:
		return fmt.Errorf("%w: container %s has exited", ErrNotRunning, c.id)
	}
	if err := c.s.releaseInit(c.id, st.Pid); err != nil {
		return fmt.Errorf("start container %s: %w", c.id, err)
	}
	c.mu.Lock()
	if c.state.Status == StatusCreated {
		c.state.Status = StatusRunning
		c.state.StartedAt = time.Now()
	}
	st = c.state
	c.mu.Unlock()
	if st.Status == StatusRunning {
		_ = writeJSONFile(filepath.Join(c.dir, stateFile), st)
	}
	return nil
}

// releaseInit does what libcontainer's Container.Exec does, in the shim:
// read the init's byte from the exec fifo, then remove the fifo (which
// tells libcontainer the container runs). The fifo is opened non-blocking
// and read through the runtime's poller: no thread waits in open(2). An
// init that died without writing is reported rather than waited for.
func (s *server) releaseInit(id string, pid int) error {
	path := filepath.Join(s.runcRoot, id, execFifoName)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("exec fifo: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var buf [16]byte
	got := false
	var rerr error
	// read returns false, to wait for the poller, while no writer has
	// written: a read then finds no data (EAGAIN) or no writer (0).
	read := func(fd uintptr) bool {
		n, err := unix.Read(int(fd), buf[:])
		switch {
		case n > 0:
			got = true
		case err == unix.EAGAIN || err == unix.EINTR || (err == nil && n == 0):
			return false
		default:
			rerr = err
		}
		return true
	}
	for !got {
		_ = f.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		err := rc.Read(read)
		if rerr != nil {
			return fmt.Errorf("exec fifo: %w", rerr)
		}
		if got {
			break
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("exec fifo: %w", err)
		}
		if s.reaper.running(pid) && pidAlive(pid) {
			continue
		}
		// Dead: it may have started, run and ended since the last
		// look, leaving its byte in the fifo.
		_ = rc.Control(func(fd uintptr) {
			n, _ := unix.Read(int(fd), buf[:])
			got = n > 0
		})
		if !got {
			return errors.New("container process is already dead")
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
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
	st := c.snapshot()
	if st.Status == StatusExited {
		return nil
	}
	if !all || (sig == unix.SIGKILL && c.ownPIDNamespace()) {
		// Through the reaper: never a process that reused the pid. The
		// SIGKILL of the init of a PID namespace is the SIGKILL of all
		// of it: the kernel kills every process in the namespace, and
		// the init's exit comes once they are all gone. No helper then.
		c.s.reaper.signal(st.Pid, sig)
		return nil
	}
	_, err := c.s.runHelper(&lcRequest{Op: lcKillAll, ID: c.id, Signal: int(sig)}, childStdio{}, nil)
	// The init may not be in the cgroup listing yet when it is still in
	// libcontainer's hands; signalling it directly is harmless.
	c.s.reaper.signal(st.Pid, sig)
	if err != nil && (c.snapshot().Status == StatusExited || !c.s.reaper.running(st.Pid)) {
		return nil
	}
	return err
}

// ownPIDNamespace says whether the container's init is the init of a PID
// namespace of its own (the CRI's CONTAINER mode, the default), not one
// of the pod, the node or another container.
func (c *container) ownPIDNamespace() bool {
	for _, ns := range c.spec.Namespaces {
		if ns.Type == specs.PIDNamespace {
			return ns.Path == ""
		}
	}
	return false
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
	if !c.s.destroyQuick(c.id) {
		if _, err := c.s.runHelper(&lcRequest{Op: lcDelete, ID: c.id}, childStdio{}, nil); err != nil {
			return err
		}
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
	return pidAlive(pid)
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

// writeJSONFile replaces path atomically (internal/atomicfile). It does
// not sync: the records live in the runtime state dir, which a reboot
// empties along with the containers, and a shim or daemon that dies still
// leaves the old or the new content, never a torn one. A sync would cost
// every create, start and exit about half a millisecond.
func writeJSONFile(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return atomicfile.Replace(path, b, 0o600)
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
	if _, err := c.s.runHelper(&lcRequest{Op: lcUpdate, ID: c.id, Spec: &cs}, childStdio{}, nil); err != nil {
		return err
	}
	c.spec.Resources = r
	return nil
}
