package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
)

// Remove tears a sandbox down if needed and deletes its files and record.
// Removing an unknown sandbox succeeds. If the CNI DEL keeps failing, the
// sandbox disappears from the API now and its record stays on disk, hidden,
// until the retry loop gets the DEL through.
func (m *Manager) Remove(ctx context.Context, id string) error {
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
		return nil
	}
	rec.State = StateRemoving
	if err := m.persist(e, &rec); err != nil {
		return err
	}
	if err := m.stopPodContainers(context.WithoutCancel(ctx), &rec); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	if err := m.removePodContainers(context.WithoutCancel(ctx), &rec); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	if err := m.teardown(context.WithoutCancel(ctx), e, &rec); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	return m.finishRemove(e, &rec)
}

// finishRemove deletes files and the record once nothing is left but a
// possibly pending CNI DEL.
func (m *Manager) finishRemove(e *entry, rec *Sandbox) error {
	m.mu.Lock()
	e.removed = true
	if m.byKey[rec.Spec.key()] == e {
		delete(m.byKey, rec.Spec.key())
	}
	m.mu.Unlock()
	if rec.NetworkDetachPending {
		return nil // hidden; the retry loop comes back here
	}
	if err := os.RemoveAll(rec.Dir); err != nil {
		return fmt.Errorf("remove sandbox files %s: %w", rec.Dir, err)
	}
	if err := m.store.remove(rec.ID); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.sandboxes, rec.ID)
	m.mu.Unlock()
	m.emit(rec.ID, rec.ID, EventDeleted)
	return nil
}
