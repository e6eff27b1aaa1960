package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"peapod/internal/atomicfile"
	"peapod/netns"
)

// The spare network attachment.
//
// The CNI ADD is the longest step of RunPodSandbox: two plugin programs
// (bridge, host-local) start, and the bridge makes the veth pair. On the
// embedded default network nothing of it depends on the pod: its plugins
// read no pod name and no capability argument but host ports. So the
// manager keeps one network namespace attached to that network ahead of
// time, and a pod without host ports takes it over instead of making its
// own: its netns pin is bound at the pod's place and the attachment is
// recorded as the pod's, under the container ID it was made with
// (Attachment.CNIID), by which the pod's CNI DEL later removes it.
//
// The next spare is made in the background, when the pods stop coming
// one right after another: with the pod's first CreateContainer (the
// spare's plugins then run beside runc's init, which leaves a CPU
// idle), or once no RunPodSandbox came for spareQuiet. Made right after
// each RunPodSandbox, it would run beside the next one in a burst of
// pods, which then finds no spare ready and attaches its own while the
// spare's plugins compete with it.
//
// Its files live under <state>/spares/<id>: the record (spare.json,
// written before the namespace is made and again with the ADD's result)
// and the pin (ns/net). A daemon that stops deletes its spare (CNI DEL,
// unpin); one that died leaves it to the next start, which deletes every
// spare no sandbox record took over (recoverSpares). A network
// configuration other than the embedded one, or a changed one, gets no
// spare, and a spare made for an older configuration is deleted when a
// pod finds it.

const (
	sparesDir       = "spares"
	spareRecordFile = "spare.json"
	// spareIDPrefix marks the container IDs of spares for the plugins
	// (host-local's files, libcni's cache).
	spareIDPrefix = "peapod-spare-"
	// spareMaxBackoff bounds the wait after a spare could not be made.
	spareMaxBackoff = time.Minute
	// spareNice is the nice value the plugins that make a spare run with.
	spareNice = 10
	// spareQuiet is how long after the last RunPodSandbox a spare is made
	// when no container comes.
	spareQuiet = 300 * time.Millisecond
)

// spareRecord is the file of a spare.
type spareRecord struct {
	ID      string            `json:"id"`
	Network *netns.Attachment `json:"network"`
	// Attached is set once the ADD returned.
	Attached bool `json:"attached,omitempty"`
}

// spareNet is an attached spare, ready for a pod.
type spareNet struct {
	id, dir, netPath string
	att              *netns.Attachment
}

// spares is the manager's spare and the work on it.
type spares struct {
	mu       sync.Mutex
	ready    *spareNet
	making   bool
	closed   bool
	failures int
	notUntil time.Time   // no new attempt before this, after a failure
	quiet    *time.Timer // refillSpareSoon's
	wg       sync.WaitGroup
}

func (m *Manager) sparesRoot() string { return filepath.Join(m.cfg.StateDir, sparesDir) }

// refillSpareSoon makes a spare once no RunPodSandbox came for
// spareQuiet (each call starts the wait again), unless a CreateContainer
// does it first.
func (m *Manager) refillSpareSoon() {
	if !m.cfg.NetworkSpare || m.cfg.Network == nil {
		return
	}
	s := &m.spares
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	if s.quiet == nil {
		s.quiet = time.AfterFunc(spareQuiet, m.refillSpare)
		return
	}
	s.quiet.Reset(spareQuiet)
}

// refillSpare starts making a spare in the background unless one is ready
// or on its way, spares are off, or the manager is closing.
func (m *Manager) refillSpare() {
	if !m.cfg.NetworkSpare || m.cfg.Network == nil {
		return
	}
	s := &m.spares
	s.mu.Lock()
	if s.closed || s.making || s.ready != nil || time.Now().Before(s.notUntil) {
		s.mu.Unlock()
		return
	}
	s.making = true
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		// The plugins run at a lower priority than the pods' work: the
		// spare is made while the pod that took the last one creates its
		// containers, on the CPU that work leaves. They inherit the nice
		// value of the thread that starts them, this one, which is never
		// unlocked and so ends with this goroutine.
		runtime.LockOSThread()
		_ = unix.Setpriority(unix.PRIO_PROCESS, 0, spareNice)
		sp, err := m.makeSpare(m.background())
		s.mu.Lock()
		s.making = false
		switch {
		case err != nil:
			s.failures++
			wait := min(time.Duration(1<<min(s.failures, 6))*time.Second, spareMaxBackoff)
			s.notUntil = time.Now().Add(wait)
			s.mu.Unlock()
			lvl := m.log.Debug
			if s.failures == 1 {
				lvl = m.log.Warn
			}
			lvl("could not make a spare network attachment; pods attach their own", "err", err, "retry_after", wait)
			return
		case sp == nil: // not the embedded network: nothing to keep
		case s.closed:
			s.mu.Unlock()
			m.dropSpare(sp)
			return
		default:
			s.ready = sp
			s.failures = 0
		}
		s.mu.Unlock()
	}()
}

// makeSpare makes and attaches a spare. It returns nil, nil when the
// current network is not the embedded one.
func (m *Manager) makeSpare(ctx context.Context) (sp *spareNet, err error) {
	id := spareIDPrefix + newID()[:24]
	att, err := m.cfg.Network.Prepare(netns.AttachRequest{SandboxID: id})
	if err != nil {
		return nil, err
	}
	if !att.Embedded {
		return nil, nil
	}
	att.CNIID = id
	dir := filepath.Join(m.sparesRoot(), id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spare dir: %w", err)
	}
	defer func() {
		if err != nil {
			_ = netns.Unpin(filepath.Join(dir, nsDir))
			_ = os.RemoveAll(dir)
		}
	}()
	// Recorded before anything is made, so that a daemon that dies during
	// the ADD still deletes what the plugins made.
	if err := writeSpareRecord(dir, &spareRecord{ID: id, Network: att}); err != nil {
		return nil, err
	}
	netPath, err := netns.NewNetNS(filepath.Join(dir, nsDir))
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, m.cfg.NetworkTimeout)
	defer cancel()
	if err := m.cfg.Network.Attach(actx, att, id, netPath); err != nil {
		return nil, err
	}
	if err := writeSpareRecord(dir, &spareRecord{ID: id, Network: att, Attached: true}); err != nil {
		m.detachSpare(context.Background(), id, att, netPath)
		return nil, err
	}
	return &spareNet{id: id, dir: dir, netPath: netPath, att: att}, nil
}

func writeSpareRecord(dir string, r *spareRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	// Not synced: the runtime dir, and the pin with it, does not outlive
	// the boot, and CNI GC at the next start releases what a lost record
	// leaves in the IPAM store.
	if err := atomicfile.Replace(filepath.Join(dir, spareRecordFile), b, 0o600); err != nil {
		return fmt.Errorf("spare record: %w", err)
	}
	return nil
}

// takeSpare gives rec, whose network Prepare filled in, the spare: the
// spare's namespace pinned at rec's place and its attachment as rec's.
// It returns the spare, whose own files the caller drops with
// releaseSpare once rec's record names the attachment; nil if there is no
// spare that fits.
func (m *Manager) takeSpare(rec *Sandbox) *spareNet {
	s := &m.spares
	s.mu.Lock()
	sp := s.ready
	if sp == nil {
		s.mu.Unlock()
		return nil
	}
	if !rec.Network.SpareFits(sp.att) {
		// Kept for the next pod (one with host ports), unless the network
		// is no longer the embedded one: the embedded configuration comes
		// from the daemon's flags and cannot change under a spare.
		stale := !rec.Network.Embedded
		if stale {
			s.ready = nil
		}
		s.mu.Unlock()
		if stale {
			m.log.Info("the network changed: deleting its spare attachment", "spare", sp.id)
			m.inBackground(func() { m.dropSpare(sp) })
		}
		return nil
	}
	s.ready = nil
	s.mu.Unlock()
	netPath, err := netns.AdoptNetNS(sp.netPath, filepath.Join(rec.Dir, nsDir))
	if err != nil {
		m.log.Warn("take the spare network attachment", "spare", sp.id, "err", err)
		m.inBackground(func() { m.dropSpare(sp) })
		return nil
	}
	att := *sp.att
	rec.Network = &att
	rec.Namespaces = netns.PinnedNamespaces{netns.Net: netPath}
	return sp
}

// releaseSpare removes the files of a spare that a sandbox took over.
func (m *Manager) releaseSpare(sp *spareNet) {
	m.inBackground(func() { removeSpareFiles(sp.dir) })
}

// dropSpare deletes a spare nobody took: CNI DEL, then its files.
func (m *Manager) dropSpare(sp *spareNet) {
	m.detachSpare(context.Background(), sp.id, sp.att, sp.netPath)
	removeSpareFiles(sp.dir)
}

// detachSpare runs a spare's CNI DEL; a failure is only logged.
func (m *Manager) detachSpare(ctx context.Context, id string, att *netns.Attachment, netPath string) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.NetworkTimeout)
	defer cancel()
	if err := m.cfg.Network.Detach(ctx, att, id, netPath); err != nil {
		// Its veth goes with its namespace; CNI GC at the next start
		// releases its address.
		m.log.Warn("CNI DEL of the spare network attachment", "spare", id, "err", err)
	}
}

func removeSpareFiles(dir string) {
	_ = netns.Unpin(filepath.Join(dir, nsDir))
	_ = os.RemoveAll(dir)
}

// inBackground runs fn on a goroutine that closeSpares waits for.
func (m *Manager) inBackground(fn func()) {
	m.spares.wg.Add(1)
	go func() {
		defer m.spares.wg.Done()
		fn()
	}()
}

// closeSpares deletes the spare and waits for the work on spares to end.
func (m *Manager) closeSpares() {
	s := &m.spares
	s.mu.Lock()
	s.closed = true
	sp := s.ready
	s.ready = nil
	if s.quiet != nil {
		s.quiet.Stop()
	}
	s.mu.Unlock()
	s.wg.Wait()
	if sp != nil {
		m.dropSpare(sp)
	}
}

// recoverSpares deletes, at start, the spares of an earlier daemon: those
// a sandbox took over (owned) lose only their files; the others are
// detached first.
func (m *Manager) recoverSpares(ctx context.Context, owned func(cniID string) bool) {
	root := m.sparesRoot()
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, de := range ents {
		if !de.IsDir() {
			continue
		}
		dir := filepath.Join(root, de.Name())
		var r spareRecord
		b, err := os.ReadFile(filepath.Join(dir, spareRecordFile))
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err == nil && r.Network != nil && r.ID != "" && !owned(r.ID) {
			netPath := filepath.Join(dir, nsDir, string(netns.Net))
			if !netns.IsPinned(netPath) {
				netPath = ""
			}
			m.log.Info("deleting the spare network attachment of an earlier run", "spare", r.ID)
			m.detachSpare(ctx, r.ID, r.Network, netPath)
		}
		removeSpareFiles(dir)
	}
}
