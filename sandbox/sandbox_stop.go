package sandbox

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"peapod/netns"
)

// pauseGrace is how long the pause gets to exit on SIGTERM. It exits at
// once; the bound only matters for a wedged process.
const pauseGrace = 2 * time.Second

// Stop stops a sandbox: the pause (and with it the pod's processes), the
// network, the shaping, the pins and the cgroup. The record and files stay
// until Remove. Stopping an unknown or stopped sandbox succeeds.
func (m *Manager) Stop(ctx context.Context, id string) error {
	e, err := m.lookup(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	e.op.Lock()
	defer e.op.Unlock()
	m.mu.Lock()
	if e.removed || e.rec == nil {
		m.mu.Unlock()
		return nil
	}
	rec := *e.rec
	m.mu.Unlock()
	if rec.State == StateCreating {
		return nil // only reachable for an entry whose creation is being rolled back
	}
	if rec.State == StateReady {
		rec.State = StateStopping
		if err := m.persist(e, &rec); err != nil {
			return err
		}
	}
	cerr := m.stopPodContainers(context.WithoutCancel(ctx), &rec)
	terr := errors.Join(cerr, m.teardown(context.WithoutCancel(ctx), e, &rec))
	if rec.State != StateRemoving {
		rec.State = StateNotReady
		if rec.Reason == "" {
			rec.Reason = "stopped"
		}
	}
	if err := m.persist(e, &rec); err != nil {
		return errors.Join(terr, err)
	}
	return terr
}

// teardown undoes every resource a sandbox may have, in order: pause (and
// the pod's processes), network, shaping, pins, shm, cgroup. Each step
// tolerates its resource being absent, so it can run any number of times
// and after a crash at any point. A failed CNI DEL is recorded in rec and
// does not fail the teardown; the retry loop repeats it.
func (m *Manager) teardown(ctx context.Context, e *entry, rec *Sandbox) error {
	var errs []error
	if err := m.unpublishPorts(rec); err != nil {
		errs = append(errs, err)
	}
	if err := stopPause(rec.Pause, pauseGrace); err != nil {
		errs = append(errs, err)
	}

	netnsPath := ""
	if p, ok := rec.Namespaces[netns.Net]; ok && netns.IsPinned(p) {
		netnsPath = p
	}
	if rec.Network != nil {
		m.detachNetworkAt(ctx, e, rec, netnsPath)
	}
	// The IFB is named from the id, so it is removed even if the daemon
	// died before recording it.
	st := netns.ShapingState{IFB: netns.IFBName(m.cfg.InstanceTag, rec.ID)}
	if rec.Shaping != nil {
		st = *rec.Shaping
	}
	if err := netns.RemoveShaping(st); err != nil {
		errs = append(errs, err)
	} else {
		rec.Shaping = nil
	}

	if err := unmountShm(rec.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := netns.Unpin(filepath.Join(rec.Dir, nsDir)); err != nil {
		errs = append(errs, err)
	} else {
		rec.Namespaces = nil
	}
	if rec.Cgroup != nil {
		if err := rec.Cgroup.Remove(); err != nil {
			errs = append(errs, fmt.Errorf("pod cgroup: %w", err))
		}
	}
	if len(errs) == 0 {
		rec.Pause = nil
	}
	if err := m.store.save(rec); err != nil {
		errs = append(errs, err)
	}
	m.publish(e, rec)
	return errors.Join(errs...)
}

// detachNetwork retries a pending CNI DEL without a netns (it is gone).
func (m *Manager) detachNetwork(e *entry, rec *Sandbox) {
	m.detachNetworkAt(context.Background(), e, rec, "")
	if err := m.store.save(rec); err != nil {
		m.log.Error("persist sandbox", "sandbox", rec.ID, "err", err)
	}
	m.publish(e, rec)
}

func (m *Manager) detachNetworkAt(ctx context.Context, e *entry, rec *Sandbox, netnsPath string) {
	dctx, cancel := context.WithTimeout(ctx, m.cfg.NetworkTimeout)
	defer cancel()
	err := m.cfg.Network.Detach(dctx, rec.Network, rec.ID, netnsPath)
	if err != nil {
		m.log.Warn("CNI DEL failed; will retry", "sandbox", rec.ID, "err", err)
		rec.Network.LastDelFail = err.Error()
		rec.NetworkDetachPending = true
		return
	}
	rec.Network = nil
	rec.NetworkDetachPending = false
}
