package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"slices"

	"peapod/netns"
)

// recover reconciles the store with the host after a (re)start.
func (m *Manager) recover(ctx context.Context) error {
	records, ids, err := m.store.loadAll()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, rec := range records {
		known[rec.ID] = true
	}
	// Directories without a readable record: the daemon died before the
	// first save completed. Undo what deterministic names can reach.
	for _, id := range ids {
		if known[id] {
			continue
		}
		m.log.Info("removing leftover of unrecorded sandbox", "sandbox", id)
		m.sweepUnrecorded(id)
		_ = m.store.remove(id)
	}

	for _, rec := range records {
		e := &entry{created: make(chan struct{})}
		close(e.created)
		cp := *rec
		e.rec = &cp
		m.sandboxes[rec.ID] = e
		m.loadContainers(rec.ID)
		switch rec.State {
		case StateCreating:
			m.log.Info("rolling back sandbox interrupted during creation", "sandbox", rec.ID)
			// Its shim may have been started already (with the network).
			if err := m.shutdownShim(ctx, rec); err != nil {
				m.log.Warn("stop the shim of an interrupted sandbox", "sandbox", rec.ID, "err", err)
			}
			if err := m.teardown(ctx, e, rec); err != nil || rec.NetworkDetachPending {
				rec.State = StateNotReady
				rec.Reason = "daemon restarted during creation; cleanup incomplete"
				_ = m.persist(e, rec)
				m.byKey[rec.Spec.key()] = e
				continue
			}
			m.forget(e, rec)
			continue
		case StateStopping:
			m.log.Info("finishing interrupted stop", "sandbox", rec.ID)
			_ = m.stopPodContainers(ctx, rec)
			_ = m.teardown(ctx, e, rec)
			rec.State = StateNotReady
			rec.Reason = "stopped"
			_ = m.persist(e, rec)
		case StateRemoving:
			m.log.Info("finishing interrupted removal", "sandbox", rec.ID)
			_ = m.stopPodContainers(ctx, rec)
			if err := m.removePodContainers(ctx, rec); err != nil {
				m.log.Warn("remove containers of sandbox", "sandbox", rec.ID, "err", err)
			}
			if err := m.teardown(ctx, e, rec); err == nil {
				if err := m.finishRemove(e, rec); err != nil {
					m.log.Error("finish removal", "sandbox", rec.ID, "err", err)
				}
			}
			m.mu.Lock()
			e.removed = true
			m.mu.Unlock()
			continue
		case StateReady:
			if !pauseAlive(rec.Pause) {
				rec.State = StateNotReady
				rec.Reason = "pause process exited while the daemon was down"
				_ = m.persist(e, rec)
			} else {
				p := *rec.Pause
				id := rec.ID
				if err := watchPause(&p, func() { m.onPauseExit(id, p) }); err != nil {
					m.log.Warn("cannot watch pause process", "sandbox", id, "err", err)
				}
				m.republishPorts(rec)
			}
		}
		m.byKey[rec.Spec.key()] = e
	}

	keep := func(id string) bool { _, ok := m.sandboxes[id]; return ok }

	// Runtime dirs of sandboxes we no longer know.
	rtDir := filepath.Join(m.cfg.StateDir, "sandboxes")
	if entries, err := os.ReadDir(rtDir); err == nil {
		for _, de := range entries {
			if !de.IsDir() || keep(de.Name()) || !validID(de.Name()) {
				continue
			}
			m.log.Info("removing orphaned sandbox runtime dir", "sandbox", de.Name())
			m.sweepUnrecorded(de.Name())
		}
	}
	m.sweepOrphanRootfs()
	if removed, err := m.cgroups.SweepOrphans(keep); err != nil {
		m.log.Warn("sweep orphaned cgroups", "err", err)
	} else if len(removed) > 0 {
		m.log.Info("removed orphaned cgroups", "paths", removed)
	}
	if removed, err := netns.SweepOrphanIFBs(m.cfg.InstanceTag, keep); err != nil {
		m.log.Warn("sweep orphaned IFB devices", "err", err)
	} else if len(removed) > 0 {
		m.log.Info("removed orphaned IFB devices", "devices", removed)
	}
	var attached []string
	for id, e := range m.sandboxes {
		if e.rec.Network != nil {
			attached = append(attached, e.rec.Network.ContainerID(id))
		}
	}
	m.recoverSpares(ctx, func(cniID string) bool { return slices.Contains(attached, cniID) })
	if err := m.cfg.Network.GarbageCollect(ctx, attached); err != nil {
		m.log.Warn("CNI garbage collection", "err", err)
	}
	return nil
}

// sweepOrphanRootfs removes container root filesystems that no container
// record names: CreateContainer mounts the rootfs while it writes the
// container's first record, so a daemon that died right then leaves one
// behind (as does one that died in RemoveContainer between the two).
func (m *Manager) sweepOrphanRootfs() {
	if m.cfg.Images == nil {
		return
	}
	ids, err := m.cfg.Images.RootfsIDs()
	if err != nil {
		m.log.Warn("list container root filesystems", "err", err)
		return
	}
	t := m.ctable()
	for _, id := range ids {
		t.mu.Lock()
		_, known := t.byID[id]
		t.mu.Unlock()
		if known {
			continue
		}
		m.log.Info("removing the root filesystem of an unknown container", "container", id)
		if err := m.cfg.Images.RemoveRootfs(id); err != nil {
			m.log.Warn("remove orphaned container rootfs", "container", id, "err", err)
		}
	}
}

// sweepUnrecorded removes what an unrecorded sandbox can have left behind
// under names derived from its id.
func (m *Manager) sweepUnrecorded(id string) {
	dir := m.runtimeDir(id)
	_ = netns.Unpin(filepath.Join(dir, nsDir))
	_ = unmountShm(dir)
	_ = netns.RemoveShaping(netns.ShapingState{IFB: netns.IFBName(m.cfg.InstanceTag, id)})
	if err := os.RemoveAll(dir); err != nil {
		m.log.Warn("remove orphaned sandbox dir", "dir", dir, "err", err)
	}
}
