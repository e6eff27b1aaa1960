package sandbox

import (
	"context"
	"sync"
	"time"

	"peapod/shim"
)

// EventType is a lifecycle step of a container or a sandbox, as CRI's
// GetContainerEvents reports them.
type EventType int

const (
	EventCreated EventType = iota
	EventStarted
	EventStopped
	EventDeleted
)

// Event is one lifecycle step. For a sandbox's own steps ID is the
// sandbox's id (as containerd reports them).
type Event struct {
	ID        string
	SandboxID string
	Type      EventType
	At        time.Time
}

// eventBuffer is how far a subscriber may fall behind before it is cut off;
// it then lists again and subscribes anew, as a kubelet does.
const eventBuffer = 1024

// eventHub fans events out to subscribers without ever blocking the
// lifecycle path that emits them.
type eventHub struct {
	mu   sync.Mutex
	subs map[chan Event]struct{}
}

// Events subscribes to lifecycle events from now on. The channel is closed
// when ctx ends, or when the subscriber fell eventBuffer events behind.
func (m *Manager) Events(ctx context.Context) <-chan Event {
	h := &m.events
	ch := make(chan Event, eventBuffer)
	h.mu.Lock()
	if h.subs == nil {
		h.subs = map[chan Event]struct{}{}
	}
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	context.AfterFunc(ctx, func() { h.drop(ch) })
	return ch
}

func (h *eventHub) drop(ch chan Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[ch]; ok {
		delete(h.subs, ch)
		close(ch)
	}
}

func (m *Manager) emit(sandboxID, id string, types ...EventType) {
	h := &m.events
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, t := range types {
		ev := Event{ID: id, SandboxID: sandboxID, Type: t, At: now}
		for ch := range h.subs {
			select {
			case ch <- ev:
			default: // too far behind: cut it off rather than wait
				delete(h.subs, ch)
				close(ch)
			}
		}
	}
}

// containerTransition emits the events of a container record going from
// state was ("": not announced yet) to after.
func (m *Manager) containerTransition(was ContainerState, after *Container) {
	if after.State == ContainerUnknown || after.State == was {
		return
	}
	var types []EventType
	if was == "" {
		types = append(types, EventCreated)
	}
	switch after.State {
	case ContainerRunning:
		types = append(types, EventStarted)
	case ContainerExited:
		if was == ContainerCreated || was == "" {
			// Never seen running: it ran and ended in between.
			types = append(types, EventStarted)
		}
		types = append(types, EventStopped)
	}
	m.emit(after.SandboxID, after.ID, types...)
}

// watchExit waits, in the background, for a running container to exit by
// itself and records it at once, so that its STOPPED event comes when it
// happens and not at the next status call. It ends with the daemon.
func (m *Manager) watchExit(sb *Sandbox, id string) {
	ctx := m.background()
	go func() {
		client, err := m.shimFor(ctx, sb, false)
		var st shim.ContainerState
		if err == nil {
			st, err = client.Wait(ctx, id)
		}
		if err != nil {
			// The shim died under the wait, or was gone already.
			if ctx.Err() == nil && m.shimLost(ctx, sb, err) {
				if ce, lerr := m.lookupContainer(id); lerr == nil {
					m.settleOrphan(ce, sb)
				}
			}
			return
		}
		ce, err := m.lookupContainer(id)
		if err != nil {
			return
		}
		ce.op.Lock()
		defer ce.op.Unlock()
		c := m.copyRec(ce)
		if ce.removed || c.State == ContainerExited {
			return
		}
		applyShimState(c, st)
		if c.State != ContainerExited {
			return
		}
		if err := m.saveContainer(c); err != nil {
			m.log.Warn("record a container's exit", "container", id, "err", err)
		}
		m.publishContainer(ce, c)
	}()
}

// sandboxTransition emits the events of a sandbox record going from before
// (nil: first published) to after: CREATED and STARTED when it becomes
// ready, STOPPED when it stops being ready. DELETED comes from the removal.
func (m *Manager) sandboxTransition(before, after *Sandbox) {
	wasReady := before != nil && before.State == StateReady
	switch {
	case after.State == StateReady && !wasReady:
		m.emit(after.ID, after.ID, EventCreated, EventStarted)
	case wasReady && after.State != StateReady:
		m.emit(after.ID, after.ID, EventStopped)
	}
}

// watchRunningContainers starts exit watchers for the containers a
// restarted daemon found running.
func (m *Manager) watchRunningContainers() {
	t := m.ctable()
	t.mu.Lock()
	var running []*Container
	for _, ce := range t.byID {
		if ce.rec != nil && ce.rec.State == ContainerRunning {
			c := *ce.rec
			running = append(running, &c)
		}
	}
	t.mu.Unlock()
	for _, c := range running {
		if sb, err := m.getAny(c.SandboxID); err == nil && sb.State == StateReady {
			m.watchExit(sb, c.ID)
		}
	}
}
