package sandbox

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"syscall"
	"time"

	"peapod/shim"
)

// A container whose shim is gone (the shim was killed, or the host
// rebooted under a state dir that survives reboots) has nobody holding its
// output, nobody to reap it and nobody to record its exit. The daemon then
// settles it, much as containerd does for a task whose shim died: the exit
// the shim recorded before it died is the answer if there is one;
// otherwise whatever is left of the container is killed and the container
// reported exited, 137 if its init was still running, 255 ("Unknown") if
// nothing was left to tell. A shim started later for the same pod knows
// nothing of these containers, so its "not found" means the same.

// Exit codes and reasons of a settled container.
const (
	orphanKilledCode    = 128 + 9
	orphanUnknownCode   = 255
	orphanKilledMsg     = "the pod's shim died while the container ran; peapod killed what was left of it"
	orphanUnknownMsg    = "the pod's shim is gone and recorded no exit for the container"
	orphanUnknownReason = "Unknown"
)

// connBroken reports whether err says a call's connection broke midway:
// what a call sees when the shim dies under it.
func connBroken(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// shimGone asks whether the shim in dir is gone, after a call to it failed
// midway: the shim's connections and its listening socket close one after
// the other as it dies, so a "maybe" is asked again, three times at most.
func shimGone(ctx context.Context, dir string) bool {
	for i := 0; ; i++ {
		_, err := shim.Connect(ctx, dir)
		if err == nil || ctx.Err() != nil {
			return false
		}
		if shim.Gone(err) {
			return true
		}
		if i == 2 {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// shimLost reports whether err, from a call to sb's shim (or from finding
// it), means that the shim can no longer know the container: the shim is
// gone (the call never reached it, or its connection broke and the shim
// turns out to be gone), or a shim started since answers that it does not
// know it. A gone shim's cached client is dropped, so that the next
// CreateContainer starts a new shim.
func (m *Manager) shimLost(ctx context.Context, sb *Sandbox, err error) bool {
	if err == nil {
		return false
	}
	if shim.Gone(err) || connBroken(err) && shimGone(ctx, filepath.Join(sb.Dir, "shim")) {
		m.dropShimClient(sb.ID)
		return true
	}
	return errors.Is(err, shim.ErrNotFound)
}

func (m *Manager) dropShimClient(sandboxID string) {
	t := m.ctable()
	t.shimMu.Lock()
	delete(t.shims, sandboxID)
	t.shimMu.Unlock()
}

// settleOrphan settles a container of sb whose shim is gone, and returns
// its record.
func (m *Manager) settleOrphan(ce *centry, sb *Sandbox) *Container {
	ce.op.Lock()
	defer ce.op.Unlock()
	return m.settleOrphanLocked(ce, sb)
}

// settleOrphanLocked is settleOrphan for a caller holding ce.op.
func (m *Manager) settleOrphanLocked(ce *centry, sb *Sandbox) *Container {
	c := m.copyRec(ce)
	if ce.removed || c.State != ContainerCreated && c.State != ContainerRunning {
		return c // settled, stopped or removed meanwhile
	}
	dir := filepath.Join(sb.Dir, "shim")
	if st, err := shim.ReadState(dir, c.ID); err == nil && st.Status == shim.StatusExited {
		applyShimState(c, st)
		m.log.Info("container's shim is gone; it had recorded the exit", "container", c.ID, "exitCode", c.ExitCode)
	} else {
		// The init before the cgroup: whether it still ran decides the
		// exit code.
		alive, kerr := shim.KillOrphanInit(dir, c.ID)
		if kerr != nil {
			m.log.Warn("kill the init of a container whose shim is gone", "container", c.ID, "err", kerr)
		}
		c.State, c.Pid, c.FinishedAt = ContainerExited, 0, time.Now()
		if alive {
			c.ExitCode, c.Reason, c.Message = orphanKilledCode, "Error", orphanKilledMsg
		} else {
			c.ExitCode, c.Reason, c.Message = orphanUnknownCode, orphanUnknownReason, orphanUnknownMsg
		}
		m.log.Warn("container's shim is gone", "container", c.ID, "initWasRunning", alive, "exitCode", c.ExitCode)
	}
	m.killOrphanRest(sb, c.ID)
	if err := m.saveContainer(c); err != nil {
		m.log.Warn("record the end of a container whose shim is gone", "container", c.ID, "err", err)
	}
	m.publishContainer(ce, c)
	return c
}

// killOrphanRest kills and removes the container's cgroup, which its shim
// would have destroyed.
func (m *Manager) killOrphanRest(sb *Sandbox, id string) {
	if sb.Cgroup == nil {
		return
	}
	if err := sb.Cgroup.KillContainer(id); err != nil {
		m.log.Warn("kill the cgroup of a container whose shim is gone", "container", id, "err", err)
	}
}

// settleOrphansAtStart settles, once a restarted daemon has loaded its
// records, the created and running containers of pods whose shim is gone.
// It asks each pod's shim once, not each container: a container that a
// live shim does not know is settled by its exit watcher or its next
// status call, as at any other time.
func (m *Manager) settleOrphansAtStart(ctx context.Context) {
	bySandbox := map[string][]*centry{}
	t := m.ctable()
	t.mu.Lock()
	for _, ce := range t.byID {
		if r := ce.rec; r != nil && !ce.removed && (r.State == ContainerCreated || r.State == ContainerRunning) {
			bySandbox[r.SandboxID] = append(bySandbox[r.SandboxID], ce)
		}
	}
	t.mu.Unlock()
	for id, ces := range bySandbox {
		sb, err := m.getAny(id)
		if err != nil {
			continue
		}
		// A shim that is there but did not answer is asked again later.
		if _, err := m.shimFor(ctx, sb, false); !m.shimLost(ctx, sb, err) {
			continue
		}
		for _, ce := range ces {
			m.settleOrphan(ce, sb)
		}
	}
}
