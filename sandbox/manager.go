package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"peapod/cgroups"
	"peapod/image"
	"peapod/internal/atomicfile"
	"peapod/netns"
)

// Config is what the daemon hands the sandbox manager.
type Config struct {
	RootDir  string // persistent: records
	StateDir string // runtime: pins, pod files, shm mounts
	// InstanceTag tells this daemon's host-wide objects (IFB devices) from
	// those of another peapod instance on the same host.
	InstanceTag         string
	DefaultCgroupParent string
	// CgroupDriver is cgroups.DriverCgroupfs (default) or DriverSystemd.
	CgroupDriver string
	PauseBinary  string
	Network      *netns.Network
	// NetworkTimeout bounds one CNI ADD or DEL.
	NetworkTimeout time.Duration
	// RetryInterval is how often failed CNI DELs are retried.
	RetryInterval time.Duration
	// Images is the image store; nil disables containers.
	Images *image.Store
	// ShimBinary is the peapod executable that runs `peapod shim`.
	ShimBinary string
	// Ports publishes hostPorts in user space (rootless); nil when CNI
	// portmap does it (root).
	Ports PortPublisher
	// NetworkSpare keeps a network namespace attached to the embedded
	// network ahead of the next pod (spare.go).
	NetworkSpare bool
	Log          *slog.Logger
}

// Errors the cri package maps to gRPC codes.
var (
	ErrNotFound = errors.New("sandbox not found")
	ErrInvalid  = errors.New("invalid sandbox request")
)

// Manager runs the pod sandboxes of one daemon.
type Manager struct {
	cfg     Config
	cgroups cgroups.Driver
	store   store
	log     *slog.Logger

	mu        sync.Mutex
	sandboxes map[string]*entry // by id
	byKey     map[string]*entry // by (namespace, name, uid, attempt)

	stopRetry chan struct{}
	retryDone chan struct{}

	ctOnce sync.Once
	ct     *containerTable

	events eventHub
	spares spares
	// bg ends with Close: background work such as exit watchers.
	bg       context.Context
	bgCancel context.CancelFunc
}

// entry is one sandbox in memory. op serializes lifecycle operations on this
// sandbox only, so a slow teardown never blocks another pod. rec is replaced,
// never mutated, once published, so readers copy it under Manager.mu.
type entry struct {
	op      sync.Mutex
	rec     *Sandbox
	created chan struct{} // closed when RunPodSandbox finished, either way
	err     error         // RunPodSandbox's error, valid after created
	removed bool
}

// New opens the state store and reconciles it with the host: it finishes
// interrupted teardowns, rolls back half-made sandboxes, marks sandboxes
// whose pause died NotReady, and removes leftovers of unknown sandboxes.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.NetworkTimeout == 0 {
		cfg.NetworkTimeout = 60 * time.Second
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 30 * time.Second
	}
	for _, d := range []string{cfg.RootDir, cfg.StateDir, filepath.Join(cfg.RootDir, "sandboxes"), filepath.Join(cfg.StateDir, "sandboxes")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	cgDriver, err := cgroups.NewDriver(cfg.CgroupDriver, cfg.DefaultCgroupParent)
	if err != nil {
		return nil, err
	}
	m := &Manager{
		cgroups:   cgDriver,
		cfg:       cfg,
		store:     store{dir: filepath.Join(cfg.RootDir, "sandboxes")},
		log:       cfg.Log,
		sandboxes: map[string]*entry{},
		byKey:     map[string]*entry{},
		stopRetry: make(chan struct{}),
		retryDone: make(chan struct{}),
	}
	m.store.syncer = atomicfile.NewSyncer(func(path string, err error) {
		m.log.Error("sync a state record to disk", "path", path, "err", err)
	})
	m.bg, m.bgCancel = context.WithCancel(context.Background())
	if err := m.recover(ctx); err != nil {
		m.bgCancel()
		return nil, err
	}
	m.settleOrphansAtStart(ctx)
	m.watchRunningContainers()
	go m.retryLoop()
	m.refillSpare()
	return m, nil
}

// Close stops background work and syncs the records still queued. Pods
// keep running.
func (m *Manager) Close() {
	m.closeSpares()
	m.bgCancel()
	defer m.store.syncer.Close()
	select {
	case <-m.stopRetry:
	default:
		close(m.stopRetry)
		<-m.retryDone
	}
	// The host's rules of the embedded network go with the last pod
	// attached to it; running pods keep them after the daemon is gone.
	if m.cfg.Network != nil && !m.anyAttached() {
		if err := m.cfg.Network.ReleaseHostRules(); err != nil {
			m.log.Warn("remove the network's host rules", "err", err)
		}
	}
}

// anyAttached says whether some sandbox is (or may still be) attached to
// a network.
func (m *Manager) anyAttached() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.sandboxes {
		if e.rec != nil && !e.removed && (e.rec.Network != nil || e.rec.State == StateCreating) {
			return true
		}
	}
	return false
}

func newID() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

func (m *Manager) runtimeDir(id string) string {
	return filepath.Join(m.cfg.StateDir, "sandboxes", id)
}

// publish stores rec as the sandbox's current record in memory.
func (m *Manager) publish(e *entry, rec *Sandbox) {
	cp := *rec
	m.mu.Lock()
	before := e.rec
	e.rec = &cp
	m.mu.Unlock()
	m.sandboxTransition(before, &cp)
}

// background is a context that ends when the manager closes.
func (m *Manager) background() context.Context { return m.bg }

// persist saves rec and then publishes it.
func (m *Manager) persist(e *entry, rec *Sandbox) error {
	return m.persistWith(e, rec, m.store.save)
}

func (m *Manager) persistWith(e *entry, rec *Sandbox, save func(*Sandbox) error) error {
	if err := save(rec); err != nil {
		return err
	}
	m.publish(e, rec)
	return nil
}

// lookup finds a sandbox by id or unique id prefix.
func (m *Manager) lookup(id string) (*entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.sandboxes[id]; ok {
		return e, nil
	}
	if id == "" {
		return nil, fmt.Errorf("%w: empty id", ErrNotFound)
	}
	var found *entry
	for full, e := range m.sandboxes {
		if strings.HasPrefix(full, id) {
			if found != nil {
				return nil, fmt.Errorf("%w: id prefix %q is ambiguous", ErrNotFound, id)
			}
			found = e
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return found, nil
}

// Get returns a copy of a sandbox's record. Sandboxes still being created
// are not visible.
func (m *Manager) Get(id string) (*Sandbox, error) {
	e, err := m.lookup(id)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if e.rec == nil || e.rec.State == StateCreating || e.removed {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	cp := *e.rec
	return &cp, nil
}

// List returns copies of the records that match f, oldest first.
func (m *Manager) List(f Filter) []*Sandbox {
	m.mu.Lock()
	var out []*Sandbox
	for id, e := range m.sandboxes {
		r := e.rec
		if r == nil || r.State == StateCreating || e.removed {
			continue
		}
		if f.ID != "" && !strings.HasPrefix(id, f.ID) {
			continue
		}
		if f.State != nil && r.PublicState() != *f.State {
			continue
		}
		match := true
		for k, v := range f.Selector {
			if r.Spec.Labels[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		cp := *r
		out = append(out, &cp)
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// PublicState is the CRI view: ready, or notready for everything else.
func (s *Sandbox) PublicState() State {
	if s.State == StateReady {
		return StateReady
	}
	return StateNotReady
}

// onPauseExit marks a ready sandbox NotReady when its pause process dies.
func (m *Manager) onPauseExit(id string, p PauseProcess) {
	m.mu.Lock()
	e := m.sandboxes[id]
	m.mu.Unlock()
	if e == nil {
		return
	}
	e.op.Lock()
	defer e.op.Unlock()
	m.mu.Lock()
	rec := e.rec
	m.mu.Unlock()
	if rec == nil || rec.State != StateReady || rec.Pause == nil || rec.Pause.PID != p.PID || rec.Pause.StartTime != p.StartTime {
		return
	}
	cp := *rec
	cp.State = StateNotReady
	cp.Reason = "pause process exited"
	if err := m.persist(e, &cp); err != nil {
		m.log.Error("record pause exit", "sandbox", id, "err", err)
		m.publish(e, &cp)
	}
	m.log.Warn("pause process exited; sandbox is not ready", "sandbox", id, "pid", p.PID)
}

// retryLoop retries CNI DELs that failed, so a broken plugin delays the
// release of an IP but never blocks stop or removal.
func (m *Manager) retryLoop() {
	defer close(m.retryDone)
	t := time.NewTicker(m.cfg.RetryInterval)
	defer t.Stop()
	for {
		select {
		case <-m.stopRetry:
			return
		case <-t.C:
			m.RetryPendingDetaches()
		}
	}
}

// RetryPendingDetaches retries every recorded failed CNI DEL once.
func (m *Manager) RetryPendingDetaches() {
	m.mu.Lock()
	var pending []*entry
	for _, e := range m.sandboxes {
		if e.rec != nil && e.rec.NetworkDetachPending {
			pending = append(pending, e)
		}
	}
	m.mu.Unlock()
	for _, e := range pending {
		e.op.Lock()
		m.mu.Lock()
		rec := *e.rec
		m.mu.Unlock()
		if rec.NetworkDetachPending {
			m.detachNetwork(e, &rec)
			if rec.State == StateRemoving && !rec.NetworkDetachPending {
				if err := m.finishRemove(e, &rec); err != nil {
					m.log.Error("finish removal", "sandbox", rec.ID, "err", err)
				}
			}
		}
		e.op.Unlock()
	}
}
