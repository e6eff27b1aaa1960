package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"peapod/cgroups"
	"peapod/image"
	"peapod/internal/atomicfile"
	"peapod/shim"
)

// Errors for container calls, beyond ErrNotFound and ErrInvalid.
var (
	ErrExists         = errors.New("already exists")
	ErrNotReady       = errors.New("sandbox is not ready")
	ErrNotRunning     = errors.New("container is not running")
	ErrImageNotFound  = errors.New("image not found")
	ErrNoContainerRTS = errors.New("containers are not configured in this daemon")
)

// centry is one container in memory; op serializes its lifecycle calls.
type centry struct {
	op      sync.Mutex
	rec     *Container
	removed bool
	// announced: its CREATED event went out (the record is filled in
	// before it is created for good).
	announced bool
}

type containerTable struct {
	mu     sync.Mutex
	byID   map[string]*centry
	shimMu sync.Mutex
	shims  map[string]*shim.Client // by sandbox id
}

func (m *Manager) ctable() *containerTable {
	m.ctOnce.Do(func() {
		m.ct = &containerTable{byID: map[string]*centry{}, shims: map[string]*shim.Client{}}
	})
	return m.ct
}

func (m *Manager) containerDir(sandboxID string) string {
	return filepath.Join(m.store.dir, sandboxID, "containers")
}

func (m *Manager) saveContainer(c *Container) error {
	return m.writeContainer(c, atomicfile.WriteFile)
}

// A container's first record, written while CreateContainer runs, is not
// synced (saveContainerVolatile): a power loss ends the container, and its
// rootfs is swept at start. The created and started records are synced
// with their directories in the background (saveContainerCommit), as the
// ready record of a sandbox is (store.go).
func (m *Manager) saveContainerVolatile(c *Container) error {
	return m.writeContainer(c, atomicfile.Replace)
}

func (m *Manager) saveContainerCommit(c *Container) error {
	return m.writeContainer(c, func(path string, b []byte, perm os.FileMode) error {
		return atomicfile.ReplaceLater(m.store.syncer, path, b, perm, filepath.Dir(m.containerDir(c.SandboxID)))
	})
}

func (m *Manager) writeContainer(c *Container, write func(string, []byte, os.FileMode) error) error {
	dir := m.containerDir(c.SandboxID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return write(filepath.Join(dir, c.ID+".json"), b, 0o600)
}

func (m *Manager) publishContainer(ce *centry, c *Container) {
	cp := *c
	t := m.ctable()
	t.mu.Lock()
	was := ContainerState("")
	if ce.announced && ce.rec != nil {
		was = ce.rec.State
	}
	ce.announced = ce.announced || cp.State != ContainerUnknown
	ce.rec = &cp
	t.mu.Unlock()
	m.containerTransition(was, &cp)
}

func (m *Manager) loadContainers(sandboxID string) {
	entries, err := os.ReadDir(m.containerDir(sandboxID))
	if err != nil {
		return
	}
	t := m.ctable()
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.containerDir(sandboxID), e.Name()))
		if err != nil {
			continue
		}
		var c Container
		if json.Unmarshal(b, &c) != nil || c.ID == "" {
			continue
		}
		t.byID[c.ID] = &centry{rec: &c, announced: c.State != ContainerUnknown}
	}
}

// shimFor returns the pod's shim, connecting to a running one (after a
// daemon restart) or starting it.
func (m *Manager) shimFor(ctx context.Context, sb *Sandbox, start bool) (*shim.Client, error) {
	t := m.ctable()
	t.shimMu.Lock()
	defer t.shimMu.Unlock()
	if c := t.shims[sb.ID]; c != nil {
		return c, nil
	}
	dir := filepath.Join(sb.Dir, "shim")
	c, err := shim.Connect(ctx, dir)
	if err == nil {
		t.shims[sb.ID] = c
		return c, nil
	}
	if !start {
		return nil, fmt.Errorf("shim of sandbox %s is not running: %w", sb.ID, err)
	}
	if m.cfg.Images == nil {
		return nil, ErrNoContainerRTS
	}
	podCg := ""
	if sb.Cgroup != nil {
		podCg = sb.Cgroup.PodPath
	}
	c, err = shim.Start(ctx, shim.StartOptions{Binary: m.cfg.ShimBinary, Dir: dir, PodCgroup: podCg})
	if err != nil {
		return nil, fmt.Errorf("start the pod's shim: %w", err)
	}
	t.shims[sb.ID] = c
	return c, nil
}

func (m *Manager) lookupContainer(id string) (*centry, error) {
	t := m.ctable()
	t.mu.Lock()
	defer t.mu.Unlock()
	if ce, ok := t.byID[id]; ok && !ce.removed {
		return ce, nil
	}
	if id == "" {
		return nil, fmt.Errorf("%w: empty container id", ErrNotFound)
	}
	var found *centry
	for full, ce := range t.byID {
		if strings.HasPrefix(full, id) && !ce.removed {
			if found != nil {
				return nil, fmt.Errorf("%w: container id prefix %q is ambiguous", ErrNotFound, id)
			}
			found = ce
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%w: container %s", ErrNotFound, id)
	}
	return found, nil
}

// CreateContainer creates a container in a ready sandbox.
func (m *Manager) CreateContainer(ctx context.Context, sandboxID string, cfg ContainerConfig) (id string, err error) {
	if m.cfg.Images == nil {
		return "", ErrNoContainerRTS
	}
	sb, err := m.Get(sandboxID)
	if err != nil {
		return "", err
	}
	if sb.State != StateReady {
		return "", fmt.Errorf("%w: %s is %s; create containers only in a ready sandbox", ErrNotReady, sb.ID, sb.PublicState())
	}
	// The pods have stopped coming one right after another: the spare
	// network attachment is made beside this container (spare.go).
	m.refillSpare()
	t := m.ctable()
	t.mu.Lock()
	for _, ce := range t.byID {
		r := ce.rec
		if r == nil {
			continue // another CreateContainer is filling it in
		}
		if !ce.removed && r.SandboxID == sb.ID && r.Config.Name == cfg.Name && r.Config.Attempt == cfg.Attempt {
			t.mu.Unlock()
			return "", fmt.Errorf("%w: container %q attempt %d in sandbox %s is %s", ErrExists, cfg.Name, cfg.Attempt, sb.ID, r.ID)
		}
	}
	id = newID()
	ce := &centry{}
	t.byID[id] = ce
	ce.op.Lock()
	t.mu.Unlock()
	defer ce.op.Unlock()

	st := newSteps()
	// The init's move into its cgroups, in the shim's helper, is the
	// slowest step; have the kernel's lock for it warm (cgroups/warm.go),
	// until the move is done.
	cgroups.WarmAttachLock()
	defer cgroups.EndWarmAttach()
	img, err := m.cfg.Images.Get(cfg.Image)
	if err != nil {
		m.dropContainer(ce, id)
		if errors.Is(err, image.ErrNotFound) {
			return "", fmt.Errorf("%w: %s: pull it first", ErrImageNotFound, cfg.Image)
		}
		return "", err
	}
	c := &Container{
		ID: id, SandboxID: sb.ID, Config: cfg, ImageID: img.ID, ImageName: cfg.Image,
		ImageRef: img.ID, CreatedAt: time.Now(), State: ContainerUnknown, Resources: cfg.Resources,
	}
	if len(img.RepoDigests) > 0 {
		c.ImageRef = img.RepoDigests[0]
	}
	if sb.Spec.LogDirectory != "" && cfg.LogPath != "" {
		c.LogPath = filepath.Join(sb.Spec.LogDirectory, cfg.LogPath)
	}
	ce.rec = c
	cid := id // the named result is cleared by `return "", err`
	defer func() {
		if err != nil {
			_ = m.cfg.Images.RemoveRootfs(cid)
			_ = os.Remove(filepath.Join(m.containerDir(sb.ID), cid+".json"))
			m.dropContainer(ce, cid)
		}
	}()
	// The first record and the rootfs are written side by side (each
	// syncs); a daemon that dies in between leaves a rootfs without a
	// record, which the sweep at start removes (sweepOrphanRootfs).
	saved := make(chan error, 1)
	go func() { saved <- m.saveContainerVolatile(c) }()
	rootfs, err := m.cfg.Images.MountRootfs(id, img, false)
	if serr := <-saved; serr != nil {
		return "", serr
	}
	if err != nil {
		return "", fmt.Errorf("container rootfs: %w", err)
	}
	st.mark("record+rootfs")
	spec, err := shimSpec(sb, c, img, rootfs)
	if err != nil {
		return "", err
	}
	c.User = &ContainerUser{UID: spec.User.UID, GID: spec.User.GID, Groups: append([]uint32{spec.User.GID}, spec.User.AdditionalGIDs...)}
	if c.LogPath != "" {
		if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o755); err != nil {
			return "", fmt.Errorf("log directory: %w", err)
		}
	}
	st.mark("spec")
	client, err := m.shimFor(ctx, sb, true)
	if err != nil {
		return "", err
	}
	st.mark("shim")
	err = client.CreateContainer(ctx, spec)
	if shim.Gone(err) {
		// The pod's shim died since it was last used (the request never
		// reached it): start another.
		m.dropShimClient(sb.ID)
		if client, err = m.shimFor(ctx, sb, true); err != nil {
			return "", err
		}
		err = client.CreateContainer(ctx, spec)
	}
	if err != nil {
		_ = client.Delete(context.WithoutCancel(ctx), cid)
		if errors.Is(err, shim.ErrInvalid) {
			return "", fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		return "", fmt.Errorf("create container: %w", err)
	}
	st.mark("create")
	c.State = ContainerCreated
	c.RootfsReady = true
	if err := m.saveContainerCommit(c); err != nil {
		return "", err
	}
	st.mark("created")
	st.log(m.log, "CreateContainer steps", id)
	m.publishContainer(ce, c)
	return id, nil
}

func (m *Manager) dropContainer(ce *centry, id string) {
	t := m.ctable()
	t.mu.Lock()
	ce.removed = true
	delete(t.byID, id)
	rec, announced := ce.rec, ce.announced
	t.mu.Unlock()
	if announced {
		m.emit(rec.SandboxID, id, EventDeleted)
	}
}

func (m *Manager) containerAndShim(ctx context.Context, id string) (*centry, *Container, *Sandbox, error) {
	ce, err := m.lookupContainer(id)
	if err != nil {
		return nil, nil, nil, err
	}
	t := m.ctable()
	t.mu.Lock()
	if ce.rec == nil {
		t.mu.Unlock()
		return nil, nil, nil, fmt.Errorf("%w: container %s is still being created", ErrNotFound, id)
	}
	c := *ce.rec
	t.mu.Unlock()
	sb, err := m.getAny(c.SandboxID)
	if err != nil {
		return ce, &c, nil, err
	}
	return ce, &c, sb, nil
}

// getAny returns a sandbox record in any state but removed.
func (m *Manager) getAny(id string) (*Sandbox, error) {
	e, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.rec == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	cp := *e.rec
	return &cp, nil
}

// StartContainer starts a created container.
func (m *Manager) StartContainer(ctx context.Context, id string) error {
	ce, _, sb, err := m.containerAndShim(ctx, id)
	if err != nil {
		return err
	}
	ce.op.Lock()
	defer ce.op.Unlock()
	c := m.copyRec(ce)
	if c.State != ContainerCreated {
		return fmt.Errorf("%w: container %s is %s, not created", ErrInvalid, c.ID, c.State)
	}
	client, err := m.shimFor(ctx, sb, false)
	var st *shim.ContainerState
	if err == nil {
		st, err = client.StartContainer(ctx, c.ID)
	}
	if m.shimLost(ctx, sb, err) {
		m.settleOrphanLocked(ce, sb)
		return fmt.Errorf("start container %s: the pod's shim is gone: %w", c.ID, err)
	}
	if err != nil {
		return fmt.Errorf("start container %s: %w", c.ID, err)
	}
	m.watchExit(sb, c.ID)
	if st == nil {
		// A shim of an older peapod answers start without its state.
		if s, err := client.State(ctx, c.ID); err == nil {
			st = &s
		}
	}
	if st != nil {
		applyShimState(c, *st)
	} else {
		c.State, c.StartedAt = ContainerRunning, time.Now()
	}
	if err := m.saveContainerCommit(c); err != nil {
		return err
	}
	m.publishContainer(ce, c)
	return nil
}

func (m *Manager) copyRec(ce *centry) *Container {
	t := m.ctable()
	t.mu.Lock()
	defer t.mu.Unlock()
	c := *ce.rec
	return &c
}

// applyShimState copies what the shim knows into the record.
func applyShimState(c *Container, st shim.ContainerState) {
	switch st.Status {
	case shim.StatusCreated:
		c.State = ContainerCreated
	case shim.StatusRunning:
		c.State = ContainerRunning
	case shim.StatusExited:
		c.State = ContainerExited
	}
	c.Pid = st.Pid
	if !st.StartedAt.IsZero() {
		c.StartedAt = st.StartedAt
	}
	if c.State == ContainerExited {
		c.FinishedAt = st.FinishedAt
		c.ExitCode = int32(st.ExitCode)
		switch {
		case st.OOMKilled:
			c.Reason = "OOMKilled"
		case st.ExitCode == 0:
			c.Reason = "Completed"
		default:
			c.Reason = "Error"
		}
	}
}

// StopContainer stops a container: its stop signal, then SIGKILL of its
// whole cgroup after timeout. Stopping a stopped container succeeds.
func (m *Manager) StopContainer(ctx context.Context, id string, timeout time.Duration) error {
	ce, _, sb, err := m.containerAndShim(ctx, id)
	if err != nil {
		return err
	}
	ce.op.Lock()
	defer ce.op.Unlock()
	return m.stopContainerLocked(ctx, ce, sb, timeout)
}

func (m *Manager) stopContainerLocked(ctx context.Context, ce *centry, sb *Sandbox, timeout time.Duration) error {
	c := m.copyRec(ce)
	if c.State == ContainerExited {
		return nil
	}
	client, err := m.shimFor(ctx, sb, false)
	var st shim.ContainerState
	if err == nil {
		st, err = client.Stop(ctx, c.ID, timeout)
	}
	if m.shimLost(ctx, sb, err) {
		m.settleOrphanLocked(ce, sb)
		return nil
	}
	if err != nil {
		return fmt.Errorf("stop container %s: %w", c.ID, err)
	}
	applyShimState(c, st)
	if c.State != ContainerExited {
		c.State = ContainerExited
		c.FinishedAt = time.Now()
	}
	if err := m.saveContainer(c); err != nil {
		return err
	}
	m.publishContainer(ce, c)
	return nil
}

// RemoveContainer force-stops and removes a container and its writable
// layer. Removing an unknown container succeeds.
func (m *Manager) RemoveContainer(ctx context.Context, id string) error {
	ce, c, sb, err := m.containerAndShim(ctx, id)
	if errors.Is(err, ErrNotFound) && ce == nil {
		return nil
	}
	if ce == nil {
		return err
	}
	ce.op.Lock()
	defer ce.op.Unlock()
	return m.removeContainerLocked(ctx, ce, c, sb)
}

func (m *Manager) removeContainerLocked(ctx context.Context, ce *centry, c *Container, sb *Sandbox) error {
	if sb != nil {
		client, err := m.shimFor(ctx, sb, false)
		if err == nil {
			err = client.Delete(ctx, c.ID)
		}
		if m.shimLost(ctx, sb, err) {
			// Nobody destroyed the container: kill what is left of it
			// and remove its cgroup before its rootfs goes.
			m.settleOrphanLocked(ce, sb)
			m.killOrphanRest(sb, c.ID)
		} else if err != nil {
			return fmt.Errorf("remove container %s: %w", c.ID, err)
		}
	}
	if m.cfg.Images == nil {
		return ErrNoContainerRTS
	}
	if err := m.cfg.Images.RemoveRootfs(c.ID); err != nil {
		return fmt.Errorf("remove container %s rootfs: %w", c.ID, err)
	}
	if err := os.Remove(filepath.Join(m.containerDir(c.SandboxID), c.ID+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	m.dropContainer(ce, c.ID)
	return nil
}

// ContainerStatus returns the current record, refreshed from the shim.
func (m *Manager) ContainerStatus(ctx context.Context, id string) (*Container, error) {
	ce, c, sb, err := m.containerAndShim(ctx, id)
	if ce == nil {
		return nil, err
	}
	if sb != nil && (c.State == ContainerCreated || c.State == ContainerRunning) {
		client, err := m.shimFor(ctx, sb, false)
		var st shim.ContainerState
		if err == nil {
			st, err = client.State(ctx, c.ID)
		}
		switch {
		case err == nil:
			prev := c.State
			applyShimState(c, st)
			if c.State != prev {
				ce.op.Lock()
				_ = m.saveContainer(c)
				m.publishContainer(ce, c)
				ce.op.Unlock()
			}
		case m.shimLost(ctx, sb, err):
			return m.settleOrphan(ce, sb), nil
		}
	}
	return c, nil
}

// ListContainers returns the containers that match f, refreshed.
func (m *Manager) ListContainers(ctx context.Context, f ContainerFilter) []*Container {
	t := m.ctable()
	t.mu.Lock()
	var ids []string
	for id, ce := range t.byID {
		if ce.removed || ce.rec == nil || ce.rec.State == ContainerUnknown && ce.rec.Pid == 0 && !ce.rec.RootfsReady {
			continue
		}
		r := ce.rec
		if f.ID != "" && !strings.HasPrefix(id, f.ID) {
			continue
		}
		if f.SandboxID != "" && !strings.HasPrefix(r.SandboxID, f.SandboxID) {
			continue
		}
		match := true
		for k, v := range f.Selector {
			if r.Config.Labels[k] != v {
				match = false
			}
		}
		if match {
			ids = append(ids, id)
		}
	}
	t.mu.Unlock()
	var out []*Container
	for _, id := range ids {
		c, err := m.ContainerStatus(ctx, id)
		if err != nil {
			continue
		}
		if f.State != nil && c.State != *f.State {
			continue
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// ExecSync runs a command in a running container and returns its output.
func (m *Manager) ExecSync(ctx context.Context, id string, cmd []string, timeout time.Duration, maxOutput int) (stdout, stderr []byte, exitCode int, err error) {
	var so, se limitedBuffer
	so.max, se.max = maxOutput, maxOutput
	code, err := m.Exec(ctx, id, shim.ExecSpec{Args: cmd, Stdout: &so, Stderr: &se, Timeout: timeout})
	return so.Bytes(), se.Bytes(), code, err
}

// Exec runs a process in a running container with the caller's streams.
func (m *Manager) Exec(ctx context.Context, id string, spec shim.ExecSpec) (int, error) {
	ce, c, sb, err := m.containerAndShim(ctx, id)
	if ce == nil || sb == nil {
		return 0, err
	}
	client, err := m.shimFor(ctx, sb, false)
	if err != nil {
		return 0, fmt.Errorf("%w: %s", ErrNotRunning, c.ID)
	}
	cgroups.WarmExecAttach()
	code, err := client.Exec(ctx, c.ID, spec)
	if m.shimLost(ctx, sb, err) {
		m.settleOrphan(ce, sb)
		return 0, fmt.Errorf("%w: %s: the pod's shim is gone", ErrNotRunning, c.ID)
	}
	if errors.Is(err, shim.ErrNotRunning) {
		return 0, fmt.Errorf("%w: %s", ErrNotRunning, c.ID)
	}
	return code, err
}

// Attach connects streams to a running container's stdio.
func (m *Manager) Attach(ctx context.Context, id string, spec shim.AttachSpec) error {
	ce, c, sb, err := m.containerAndShim(ctx, id)
	if ce == nil || sb == nil {
		return err
	}
	client, err := m.shimFor(ctx, sb, false)
	if err != nil {
		return fmt.Errorf("%w: %s", ErrNotRunning, c.ID)
	}
	spec.CloseStdin = c.Config.StdinOnce
	_, err = client.Attach(ctx, c.ID, spec)
	if m.shimLost(ctx, sb, err) {
		m.settleOrphan(ce, sb)
		return fmt.Errorf("%w: %s: the pod's shim is gone", ErrNotRunning, c.ID)
	}
	return err
}

// ReopenContainerLog makes the shim reopen the container's log file.
func (m *Manager) ReopenContainerLog(ctx context.Context, id string) error {
	ce, c, sb, err := m.containerAndShim(ctx, id)
	if ce == nil || sb == nil {
		return err
	}
	if c.State != ContainerRunning {
		return fmt.Errorf("%w: %s", ErrNotRunning, c.ID)
	}
	client, err := m.shimFor(ctx, sb, false)
	if err == nil {
		err = client.ReopenLog(ctx, c.ID)
	}
	if m.shimLost(ctx, sb, err) {
		m.settleOrphan(ce, sb)
		return fmt.Errorf("%w: %s: the pod's shim is gone", ErrNotRunning, c.ID)
	}
	return err
}

// UpdateContainerResources applies new limits to a live container.
func (m *Manager) UpdateContainerResources(ctx context.Context, id string, r *specs.LinuxResources) error {
	ce, c, sb, err := m.containerAndShim(ctx, id)
	if ce == nil || sb == nil {
		return err
	}
	ce.op.Lock()
	defer ce.op.Unlock()
	if c.State == ContainerRunning || c.State == ContainerCreated {
		client, err := m.shimFor(ctx, sb, false)
		if err == nil {
			err = client.UpdateResources(ctx, c.ID, r)
		}
		switch {
		case m.shimLost(ctx, sb, err):
			// Nothing left to limit: recorded, as for an exited container.
			m.settleOrphanLocked(ce, sb)
		case err != nil:
			return fmt.Errorf("update resources of %s: %w", c.ID, err)
		}
	}
	c = m.copyRec(ce)
	c.Resources = r
	if err := m.saveContainer(c); err != nil {
		return err
	}
	m.publishContainer(ce, c)
	return nil
}

// containersOf lists the container entries of a sandbox.
func (m *Manager) containersOf(sandboxID string) []*centry {
	if m.ct == nil {
		return nil
	}
	t := m.ctable()
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*centry
	for _, ce := range t.byID {
		if !ce.removed && ce.rec != nil && ce.rec.SandboxID == sandboxID {
			out = append(out, ce)
		}
	}
	return out
}

// stopPodContainers kills every container of the sandbox (the kubelet has
// already stopped them gracefully).
func (m *Manager) stopPodContainers(ctx context.Context, sb *Sandbox) error {
	var errs []error
	for _, ce := range m.containersOf(sb.ID) {
		ce.op.Lock()
		if err := m.stopContainerLocked(ctx, ce, sb, 0); err != nil {
			errs = append(errs, err)
		}
		ce.op.Unlock()
	}
	return errors.Join(errs...)
}

// removePodContainers removes every container and then the pod's shim.
func (m *Manager) removePodContainers(ctx context.Context, sb *Sandbox) error {
	var errs []error
	for _, ce := range m.containersOf(sb.ID) {
		ce.op.Lock()
		c := m.copyRec(ce)
		if err := m.removeContainerLocked(ctx, ce, c, sb); err != nil {
			errs = append(errs, err)
		}
		ce.op.Unlock()
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return m.shutdownShim(ctx, sb)
}

// shutdownShim stops the pod's shim, if one runs.
func (m *Manager) shutdownShim(ctx context.Context, sb *Sandbox) error {
	t := m.ctable()
	t.shimMu.Lock()
	client := t.shims[sb.ID]
	delete(t.shims, sb.ID)
	t.shimMu.Unlock()
	if client == nil {
		client, _ = shim.Connect(ctx, filepath.Join(sb.Dir, "shim"))
	}
	if client != nil {
		if err := client.Shutdown(ctx); err != nil {
			return fmt.Errorf("shut down the pod's shim: %w", err)
		}
	}
	return nil
}

// limitedBuffer keeps at most max bytes (0: unlimited) and drops the rest,
// as ExecSync's output limit asks.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if b.max > 0 && b.Len()+len(p) > b.max {
		p = p[:max(0, b.max-b.Len())]
	}
	b.Buffer.Write(p)
	return n, nil
}

var _ io.Writer = (*limitedBuffer)(nil)
