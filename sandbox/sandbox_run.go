package sandbox

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"peapod/cgroups"
	"peapod/netns"
)

// Run creates a pod sandbox and returns its id. A second Run with the same
// (namespace, name, uid, attempt) while the first is in flight waits for it
// and returns the same id; after it finished, it returns that id at once.
// Creation carries on if ctx is cancelled (a kubelet that timed out retries
// and adopts the result); it is bounded by the network timeout instead.
func (m *Manager) Run(ctx context.Context, spec Spec) (string, error) {
	key := spec.key()
	m.mu.Lock()
	if e, ok := m.byKey[key]; ok && !e.removed {
		m.mu.Unlock()
		select {
		case <-e.created:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		m.mu.Lock()
		id := e.rec.ID
		m.mu.Unlock()
		return id, e.err
	}
	id := newID()
	rec := &Sandbox{
		ID:        id,
		Spec:      spec,
		State:     StateCreating,
		CreatedAt: time.Now(),
		Dir:       m.runtimeDir(id),
	}
	first := *rec
	e := &entry{rec: &first, created: make(chan struct{})}
	m.sandboxes[id] = e
	m.byKey[key] = e
	e.op.Lock()
	m.mu.Unlock()
	defer e.op.Unlock()

	err := m.create(context.WithoutCancel(ctx), e, rec)
	m.refillSpareSoon()
	if err != nil {
		m.log.Warn("run pod sandbox failed; rolled back", "sandbox", id, "pod", spec.Namespace+"/"+spec.Name, "err", err)
		e.err = err
	}
	close(e.created)
	return id, err
}

// create performs the steps of RunPodSandbox in order. Any failure undoes
// everything through the same teardown that Stop and Remove use.
//
// Once the pod's network namespace is pinned, the steps that mostly wait on
// the kernel or on other programs run side by side: the CNI ADD (plugin
// execs) on one side; on the other the pause (born in its cgroup, or moved
// there where that waits for an RCU grace period), the namespaces' own
// settings, /dev/shm and the start of the pod's shim.
func (m *Manager) create(ctx context.Context, e *entry, rec *Sandbox) (err error) {
	st := newSteps()
	defer func() {
		if err == nil {
			st.log(m.log, "RunPodSandbox steps", rec.ID)
			return
		}
		if serr := m.shutdownShim(context.WithoutCancel(ctx), rec); serr != nil {
			m.log.Warn("stop the shim of a failed sandbox", "sandbox", rec.ID, "err", serr)
		}
		if terr := m.teardown(ctx, e, rec); terr != nil || rec.NetworkDetachPending {
			// The undo itself failed: keep the sandbox, NotReady, so that a
			// Stop or Remove (or the retry loop) finishes the job.
			rec.State = StateNotReady
			rec.Reason = fmt.Sprintf("creation failed (%v); cleanup incomplete (%v)", err, terr)
			_ = m.persist(e, rec)
			return
		}
		m.forget(e, rec)
	}()

	// The pod cgroup is checked and named in the first record, and made
	// beside the CNI ADD below (before it, if a plugin wants to see it):
	// a daemon that dies before it is made still removes it at start.
	if err := m.planPodCgroup(rec); err != nil {
		return err
	}
	// Written without a sync until the sandbox is ready (store.go).
	if err := m.store.saveVolatile(rec); err != nil {
		return err
	}
	st.mark("record")

	// The pod's network namespace is made and pinned on its own, before the
	// pause that will hold it: the CNI ADD (the longest step, the plugins'
	// execs) then runs while the pause starts. The attachment is recorded
	// before the ADD, so a daemon that dies during the ADD still runs the
	// DEL. A pod that the spare attachment fits takes it over instead,
	// with its namespace (spare.go); the ADD is done then.
	if err := os.MkdirAll(rec.Dir, 0o711); err != nil {
		return fmt.Errorf("sandbox dir: %w", err)
	}
	netPath := ""
	var spare *spareNet
	if rec.Spec.NetworkMode != ModeNode {
		if err := m.prepareNetwork(rec); err != nil {
			return err
		}
		if spare = m.takeSpare(rec); spare != nil {
			netPath = rec.Namespaces[netns.Net]
		} else {
			p, err := netns.NewNetNS(filepath.Join(rec.Dir, nsDir))
			if err != nil {
				return err
			}
			netPath = p
			rec.Namespaces = netns.PinnedNamespaces{netns.Net: p}
		}
	}
	err = m.persistWith(e, rec, m.store.saveVolatile)
	if spare != nil {
		// The spare's own record and pin go either way: the sandbox's
		// record names the attachment now, or its teardown detaches it.
		m.releaseSpare(spare)
		st.mark("spare")
	} else {
		st.mark("netns")
	}
	if err != nil {
		return err
	}
	cgroupMade := false
	if rec.Network != nil && rec.Network.UsesCgroup() {
		if err := m.makePodCgroup(rec); err != nil {
			return err
		}
		cgroupMade = true
		st.mark("cgroup")
	}

	// Side by side: the CNI ADD and shaping; and the pod cgroup, the
	// pause, the namespaces' own settings, /dev/shm and the pod's shim.
	// Each side writes only its own part of rec (attachNetwork: Network,
	// Shaping); the pause's part is merged here.
	var netErr error
	var pod podStart
	var netTook, podTook time.Duration
	var wg sync.WaitGroup
	wg.Go(func() {
		if netPath != "" {
			netTook = timed(func() { netErr = m.attachNetwork(ctx, e, rec, spare == nil) })
		}
	})
	wg.Go(func() {
		podTook = timed(func() {
			if !cgroupMade {
				if err := m.makePodCgroup(rec); err != nil {
					pod.err = err
					return
				}
			}
			pod = m.startPod(ctx, rec, netPath)
		})
	})
	wg.Wait()
	st.side("(network", netTook)
	st.side("pause)", podTook)
	if pod.pause != nil {
		rec.Pause = pod.pause
	}
	if len(pod.pins) > 0 && rec.Namespaces == nil {
		rec.Namespaces = netns.PinnedNamespaces{}
	}
	for k, p := range pod.pins {
		rec.Namespaces[k] = p
	}
	if pod.release != nil {
		defer pod.release.abort()
	}
	if err := errors.Join(netErr, pod.err); err != nil {
		return err
	}
	st.mark("network+pause")

	if err := m.publishPorts(rec); err != nil {
		return err
	}
	if err := writePodFiles(rec.Dir, hostnameFor(rec), rec.IP(), rec.Spec.DNS); err != nil {
		return err
	}
	st.mark("files")

	rec.State = StateReady
	if err := m.persistWith(e, rec, m.store.saveCommit); err != nil {
		return err
	}
	// Recorded: the pause may go on (it exits if its record never comes).
	if err := pod.release.release(); err != nil {
		return err
	}
	p := *rec.Pause
	if err := watchPause(&p, func() { m.onPauseExit(rec.ID, p) }); err != nil {
		m.log.Warn("cannot watch pause process", "sandbox", rec.ID, "err", err)
	}
	st.mark("ready")
	return nil
}

// planPodCgroup checks the pod's cgroup parent and records in rec the pod
// cgroup that makePodCgroup makes.
func (m *Manager) planPodCgroup(rec *Sandbox) error {
	cg, err := m.cgroups.PlanPodCgroup(rec.Spec.CgroupParent, rec.ID)
	if err != nil {
		if errors.Is(err, cgroups.ErrInvalidParent) {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		return fmt.Errorf("pod cgroup: %w", err)
	}
	rec.Cgroup = &cg
	return nil
}

// makePodCgroup makes the pod cgroup planned in rec. It reads rec but
// writes none of it.
func (m *Manager) makePodCgroup(rec *Sandbox) error {
	if err := m.cgroups.MakePodCgroup(*rec.Cgroup); err != nil {
		return fmt.Errorf("pod cgroup: %w", err)
	}
	return nil
}

// prestartShim starts the pod's shim while the network is being attached,
// so that the first CreateContainer finds it running. A failure here is
// only logged: CreateContainer tries again and reports it.
func (m *Manager) prestartShim(ctx context.Context, rec *Sandbox) {
	if m.cfg.Images == nil {
		return // a daemon without container support has no shims
	}
	if _, err := m.shimFor(ctx, rec, true); err != nil {
		m.log.Warn("start the pod's shim", "sandbox", rec.ID, "err", err)
	}
}

// hostnameFor is the pod's hostname: the requested one, else the node's
// (as containerd does; pod names can be longer than a hostname may be).
// Host-network pods share the node's UTS namespace and so its name.
func hostnameFor(rec *Sandbox) string {
	if rec.Spec.NetworkMode != ModeNode && rec.Spec.Hostname != "" {
		return rec.Spec.Hostname
	}
	h, _ := os.Hostname()
	return h
}

// podNamespaceKinds says which namespaces the pause creates and pins. Not
// the network namespace: create makes and pins that one first
// (netns.NewNetNS), and the pause joins it.
func podNamespaceKinds(spec *Spec) (kinds []netns.Kind, flags uintptr) {
	if spec.NetworkMode != ModeNode {
		// A pod with its own network also has its own hostname.
		kinds = append(kinds, netns.UTS)
		flags |= syscall.CLONE_NEWUTS
	}
	if spec.IPCMode != ModeNode {
		kinds = append(kinds, netns.IPC)
		flags |= syscall.CLONE_NEWIPC
	}
	if spec.PIDMode == ModePod {
		kinds = append(kinds, netns.PID)
		flags |= syscall.CLONE_NEWPID
	}
	return kinds, flags
}

// podStart is what startPod made: the pause (waiting on release until
// its record is on disk: if the daemon dies first, the pause sees EOF and
// exits, so no unrecorded pause can outlive us), the namespaces it pinned,
// and the first error.
type podStart struct {
	release *releasePipe
	pause   *PauseProcess
	pins    netns.PinnedNamespaces
	err     error
}

// startPod starts the pause in the pod's new namespaces (joining the
// pinned network namespace at netPath, if any) and in its cgroup, pins
// them, sets the namespaces up (hostname, sysctls), mounts /dev/shm and
// starts the pod's shim. It reads rec but writes none of it.
func (m *Manager) startPod(ctx context.Context, rec *Sandbox, netPath string) (ps podStart) {
	bornIn, err := rec.Cgroup.StartPause(func(cgfd int) error {
		ps.release, ps.pause, ps.pins, ps.err = m.launchPause(rec, cgfd, netPath)
		return ps.err
	})
	if ps.err != nil {
		return ps
	}
	if err != nil {
		ps.err = fmt.Errorf("pod cgroup: %w", err)
		return ps
	}
	if !bornIn {
		// On cgroup v1 each move waits for an RCU grace period; this runs
		// beside the CNI ADD.
		if err := rec.Cgroup.AddPause(ps.pause.PID); err != nil {
			ps.err = fmt.Errorf("move pause into pod cgroup: %w", err)
			return ps
		}
	}
	// A kubelet creates the pod's first container after this call; keep
	// the kernel's cgroup attach lock warm until that container's init has
	// moved into its cgroups (CreateContainer ends it; cgroups/warm.go).
	// From here on, creating this pod needs no cgroup_mutex, which the
	// first warming write holds while it waits.
	cgroups.WarmAttachLock()
	all := maps.Clone(ps.pins)
	if netPath != "" {
		all[netns.Net] = netPath
	}
	if ps.err = configurePodNamespaces(all, hostnameFor(rec), rec.Spec.Sysctls); ps.err != nil {
		return ps
	}
	if ps.err = mountShm(rec.Dir); ps.err != nil {
		return ps
	}
	m.prestartShim(ctx, rec)
	return ps
}

// launchPause starts the pause in the pod's new namespaces, joining the
// network namespace at netPath (if any), and pins the new ones.
// cgfd ≥ 0 starts it straight in that cgroup.
func (m *Manager) launchPause(rec *Sandbox, cgfd int, netPath string) (*releasePipe, *PauseProcess, netns.PinnedNamespaces, error) {
	kinds, flags := podNamespaceKinds(&rec.Spec)
	release, err := newReleasePipe()
	if err != nil {
		return nil, nil, nil, err
	}
	var cmd *exec.Cmd
	var pause *PauseProcess
	start := func() (err error) {
		cmd, pause, err = startPauseWithPipe(m.cfg.PauseBinary, flags, cgfd, release)
		return err
	}
	if netPath != "" {
		err = netns.InNet(netPath, start)
	} else {
		err = start()
	}
	if err != nil {
		release.abort()
		return nil, nil, nil, err
	}
	go func() { _ = cmd.Wait() }() // reap; exits are seen through the pidfd watch
	pins, err := netns.Pin(pause.PID, kinds, filepath.Join(rec.Dir, nsDir))
	if err != nil {
		release.abort()
		return nil, pause, nil, err
	}
	return release, pause, pins, nil
}

// releasePipe hands the pause its go-ahead.
type releasePipe struct{ r, w *os.File }

func newReleasePipe() (*releasePipe, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pause pipe: %w", err)
	}
	return &releasePipe{r: r, w: w}, nil
}

func (p *releasePipe) release() error {
	_, err := p.w.Write([]byte{1})
	p.abort()
	if err != nil {
		return fmt.Errorf("release pause: %w", err)
	}
	return nil
}

func (p *releasePipe) abort() {
	if p.r != nil {
		p.r.Close()
		p.r = nil
	}
	if p.w != nil {
		p.w.Close()
		p.w = nil
	}
}

func startPauseWithPipe(binary string, flags uintptr, cgfd int, rp *releasePipe) (*exec.Cmd, *PauseProcess, error) {
	cmd, pause, err := startPauseCmd(binary, flags, cgfd, rp.r)
	// The child holds its own copy of the read end.
	rp.r.Close()
	rp.r = nil
	return cmd, pause, err
}

func (m *Manager) prepareNetwork(rec *Sandbox) error {
	cgPath := ""
	if rec.Cgroup != nil {
		cgPath = rec.Cgroup.PodPath
	}
	att, err := m.cfg.Network.Prepare(netns.AttachRequest{
		SandboxID:    rec.ID,
		PodName:      rec.Spec.Name,
		PodNamespace: rec.Spec.Namespace,
		PodUID:       rec.Spec.UID,
		PortMappings: rec.Spec.PortMappings,
		CgroupPath:   cgPath,
		Annotations:  rec.Spec.Annotations,
	})
	if err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	rec.Network = att
	return nil
}

// attachNetwork runs the CNI ADD (unless the attachment is a spare's,
// made already) and shapes the pod's bandwidth.
func (m *Manager) attachNetwork(ctx context.Context, e *entry, rec *Sandbox, add bool) error {
	netnsPath := rec.Namespaces[netns.Net]
	att := rec.Network
	if add {
		actx, cancel := context.WithTimeout(ctx, m.cfg.NetworkTimeout)
		defer cancel()
		if err := m.cfg.Network.Attach(actx, att, rec.ID, netnsPath); err != nil {
			return err
		}
	}
	if !rec.Spec.Bandwidth.Shaped() {
		return nil
	}
	hostVeth, err := netns.HostVethOf(netnsPath, att.IfName)
	if err != nil {
		return fmt.Errorf("bandwidth shaping needs the pod's veth: %w", err)
	}
	ifb := netns.IFBName(m.cfg.InstanceTag, rec.ID)
	st, err := netns.ApplyShaping(hostVeth, ifb, m.ifbAlias(rec.ID), rec.Spec.Bandwidth)
	if err != nil {
		return fmt.Errorf("bandwidth shaping: %w", err)
	}
	rec.Shaping = &st
	return nil
}

func (m *Manager) ifbAlias(id string) string {
	return "peapod:" + m.cfg.InstanceTag + ":" + id
}

// forget drops a rolled-back sandbox entirely.
func (m *Manager) forget(e *entry, rec *Sandbox) {
	if err := m.store.remove(rec.ID); err != nil {
		m.log.Error("remove sandbox record", "sandbox", rec.ID, "err", err)
	}
	_ = os.RemoveAll(rec.Dir)
	m.mu.Lock()
	e.removed = true
	delete(m.sandboxes, rec.ID)
	if m.byKey[rec.Spec.key()] == e {
		delete(m.byKey, rec.Spec.key())
	}
	m.mu.Unlock()
}
