package cgroups

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/systemd"
)

// The systemd driver. With it a kubelet (cgroupDriver: systemd) names the
// pod's cgroup by its slice, e.g. kubepods-besteffort-pod<uid>.slice, which
// the kubelet has made; systemd expands it to
// /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice.
// peapod asks systemd, over D-Bus, for a transient scope peapod-<id>.scope
// in that slice for the pause (id = sandbox id) and for each container
// (id = container id; the shim's libcontainer creates those with its
// systemd cgroup manager). Limits are set as unit properties, so systemd
// keeps them, and written to the cgroup files. A pod that names no slice
// gets its own slice <default>-<sandbox id>.slice (peapod-<id>.slice in
// peapod.slice), which peapod owns and removes.
//
// Everything else (stats, killing, emptiness) reads the cgroup directories
// that systemd made: they are ordinary paths in the hierarchy.

// scopePrefix names peapod's scopes: peapod-<id>.scope.
const scopePrefix = "peapod"

func scopeUnit(id string) string { return scopePrefix + "-" + id + ".scope" }

// unitNameRE is what systemd accepts in a unit name prefix.
var sliceNameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9:_.\\-]+\.slice$`) })

// SystemdAvailable says whether the systemd driver can work here: systemd
// is the init system and answers on the system D-Bus. The error says what
// is missing and what to do.
func SystemdAvailable() error {
	if inUserNS() {
		return errors.New("cgroup driver systemd: peapod runs in a user namespace (rootless), where the system's " +
			"systemd cannot be asked for units: use --cgroup-driver cgroupfs (the delegated subtree is used then)")
	}
	if !systemd.IsRunningSystemd() {
		return errors.New("cgroup driver systemd: systemd is not the init system of this host " +
			"(/run/systemd/system is missing): use --cgroup-driver cgroupfs (and the kubelet's cgroupDriver: cgroupfs), " +
			"or run peapod on a host booted with systemd")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := sddbus.NewWithContext(ctx)
	if err != nil {
		return fmt.Errorf("cgroup driver systemd: cannot reach systemd on the system D-Bus (%v): "+
			"start dbus (systemctl start dbus) or use --cgroup-driver cgroupfs", err)
	}
	defer conn.Close()
	if _, err := conn.GetManagerProperty("Version"); err != nil {
		return fmt.Errorf("cgroup driver systemd: systemd does not answer on D-Bus (%v): "+
			"check that dbus and systemd are healthy (systemctl is-system-running) or use --cgroup-driver cgroupfs", err)
	}
	return nil
}

type systemdDriver struct {
	defaultSlice string // e.g. peapod.slice
}

func newSystemdDriver(defaultParent string) (Driver, error) {
	slice, err := sliceOfPath(defaultParent)
	if err != nil {
		return nil, err
	}
	if err := SystemdAvailable(); err != nil {
		return nil, err
	}
	return systemdDriver{defaultSlice: slice}, nil
}

// sliceOfPath names the slice of a default cgroupfs parent: /peapod is
// peapod.slice, /peapod-1a2b is peapod-1a2b.slice (in peapod.slice).
func sliceOfPath(p string) (string, error) {
	if err := checkPath(p); err != nil || p == "/" {
		return "", fmt.Errorf("default cgroup parent %q: must be an absolute, clean path below /", p)
	}
	s := strings.ReplaceAll(strings.TrimPrefix(p, "/"), "/", "-") + ".slice"
	if !sliceNameRE().MatchString(s) {
		return "", fmt.Errorf("default cgroup parent %q: %q is not a valid systemd slice name", p, s)
	}
	if _, err := systemd.ExpandSlice(s); err != nil {
		return "", fmt.Errorf("default cgroup parent %q: %w", p, err)
	}
	return s, nil
}

func (systemdDriver) Name() string { return DriverSystemd }

// podSlice is the slice of a default pod.
func (d systemdDriver) podSlice(sandboxID string) string {
	return strings.TrimSuffix(d.defaultSlice, ".slice") + "-" + sandboxID + ".slice"
}

func (d systemdDriver) CreatePodCgroup(cgroupParent, sandboxID string) (PodCgroup, error) {
	p, err := d.PlanPodCgroup(cgroupParent, sandboxID)
	if err != nil {
		return PodCgroup{}, err
	}
	return p, d.MakePodCgroup(p)
}

func (d systemdDriver) PlanPodCgroup(cgroupParent, sandboxID string) (PodCgroup, error) {
	if err := checkSandboxID(sandboxID); err != nil || strings.Contains(sandboxID, "-") {
		return PodCgroup{}, fmt.Errorf("pod cgroup: invalid sandbox id %q", sandboxID)
	}
	p := PodCgroup{Mode: hostMode(), Driver: DriverSystemd}
	switch {
	case cgroupParent == "" || cgroupParent == "/":
		p.Slice = d.podSlice(sandboxID)
		p.CreatedPod = true
	default:
		if err := checkSlice(cgroupParent); err != nil {
			return PodCgroup{}, err
		}
		p.Slice = cgroupParent
	}
	podPath, err := systemd.ExpandSlice(p.Slice)
	if err != nil {
		return PodCgroup{}, fmt.Errorf("%w: %v", ErrInvalidParent, err)
	}
	p.PodPath = podPath
	p.PausePath = filepath.Join(podPath, scopeUnit(sandboxID))
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return PodCgroup{}, err
	}
	existed := false
	for _, root := range roots {
		if exists(filepath.Join(root, p.PodPath)) {
			existed = true
		}
	}
	if !existed {
		// The kubelet makes its pod slices before RunPodSandbox; crictl
		// does not. Made here, the slice is peapod's to remove.
		p.CreatedPod = true
	}
	return p, nil
}

// MakePodCgroup makes the pod's slice if peapod owns it; the pause's
// scope comes with the pause (StartPause).
func (d systemdDriver) MakePodCgroup(p PodCgroup) error {
	if p.CreatedPod {
		m, err := systemdSliceManager(p.Mode, p.Slice, &cgroups.Resources{SkipDevices: true})
		if err != nil {
			return fmt.Errorf("pod slice %s: %w", p.Slice, err)
		}
		if err := m.Apply(-1); err != nil {
			_ = m.Destroy()
			return fmt.Errorf("create pod slice %s: %w", p.Slice, err)
		}
	}
	return nil
}

// checkSlice validates a kubelet's cgroup_parent for the systemd driver.
func checkSlice(parent string) error {
	if !sliceNameRE().MatchString(parent) || strings.Contains(parent, "/") {
		hint := "want a systemd slice name such as kubepods-besteffort-pod<uid>.slice"
		if strings.HasPrefix(parent, "/") {
			hint = "this is a cgroupfs path, but peapod runs with --cgroup-driver systemd: set the kubelet's cgroupDriver to systemd too"
		}
		return fmt.Errorf("%w: cgroup_parent %q: %s", ErrInvalidParent, parent, hint)
	}
	if _, err := systemd.ExpandSlice(parent); err != nil {
		return fmt.Errorf("%w: cgroup_parent %q: %v", ErrInvalidParent, parent, err)
	}
	return nil
}

// parentSlice is the slice that holds slice: a-b-c.slice is in a-b.slice,
// a.slice in the root slice -.slice.
func parentSlice(slice string) string {
	name := strings.TrimSuffix(slice, ".slice")
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		return name[:i] + ".slice"
	}
	return "-.slice"
}

// newSystemdManager is libcontainer's systemd cgroup manager for cg, for
// the host's layout.
func newSystemdManager(mode Mode, cg *cgroups.Cgroup) (cgroups.Manager, error) {
	if mode == ModeV2 {
		return systemd.NewUnifiedManager(cg, "")
	}
	return systemd.NewLegacyManager(cg, nil)
}

// systemdSliceManager manages a pod slice (a slice unit: Name is the
// slice, Parent the slice that holds it).
func systemdSliceManager(mode Mode, slice string, res *cgroups.Resources) (cgroups.Manager, error) {
	parent := parentSlice(slice)
	if parent == "-.slice" {
		parent = ""
	}
	return newSystemdManager(mode, &cgroups.Cgroup{Name: slice, Parent: parent, Resources: res})
}

// systemdScopeManager manages the scope peapod-<id>.scope in slice.
func systemdScopeManager(mode Mode, slice, id string) (cgroups.Manager, error) {
	return newSystemdManager(mode, &cgroups.Cgroup{
		Name: id, ScopePrefix: scopePrefix, Parent: slice,
		Resources: &cgroups.Resources{SkipDevices: true},
	})
}

// pauseID is the sandbox id of a systemd pause cgroup .../peapod-<id>.scope.
func (p PodCgroup) pauseID() string {
	return strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p.PausePath), scopePrefix+"-"), ".scope")
}

// addPauseSystemd starts the pause's scope with pid in it.
func (p PodCgroup) addPauseSystemd(pid int) error {
	m, err := systemdScopeManager(p.Mode, p.Slice, p.pauseID())
	if err != nil {
		return err
	}
	if err := m.Apply(pid); err != nil {
		return fmt.Errorf("start scope %s for pause %d: %w", scopeUnit(p.pauseID()), pid, err)
	}
	return nil
}

// removeSystemd kills what runs in the pause scope and stops it, then
// stops the pod slice if peapod made it and nothing else is in it.
func (p PodCgroup) removeSystemd() error {
	roots, err := hierarchyRoots(p.Mode)
	if err != nil {
		return err
	}
	if err := stopScope(p.Mode, roots, p.Slice, p.pauseID(), p.PausePath); err != nil {
		return err
	}
	if !p.CreatedPod || hasChildCgroups(roots, p.PodPath) {
		return nil // the kubelet's slice, or containers' scopes still there
	}
	sm, err := systemdSliceManager(p.Mode, p.Slice, &cgroups.Resources{SkipDevices: true})
	if err != nil {
		return err
	}
	if err := sm.Destroy(); err != nil {
		return fmt.Errorf("stop pod slice %s: %w", p.Slice, err)
	}
	return nil
}

// stopScope kills what runs in the scope peapod-<id>.scope of slice, whose
// cgroup is cgPath, and stops the scope.
func stopScope(mode Mode, roots map[string]string, slice, id, cgPath string) error {
	if err := killCgroup(mode, roots, cgPath, killBound); err != nil {
		return err
	}
	m, err := systemdScopeManager(mode, slice, id)
	if err != nil {
		return err
	}
	if err := m.Destroy(); err != nil {
		return fmt.Errorf("stop scope %s: %w", scopeUnit(id), err)
	}
	return nil
}

// hasChildCgroups reports whether cgPath has sub-cgroups in any hierarchy.
func hasChildCgroups(roots map[string]string, cgPath string) bool {
	for _, root := range roots {
		entries, err := os.ReadDir(filepath.Join(root, cgPath))
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				return true
			}
		}
	}
	return false
}

func (d systemdDriver) SweepOrphans(keep func(string) bool) ([]string, error) {
	mode := hostMode()
	roots, err := hierarchyRoots(mode)
	if err != nil {
		return nil, fmt.Errorf("sweep cgroups: %w", err)
	}
	parentPath, err := systemd.ExpandSlice(d.defaultSlice)
	if err != nil {
		return nil, err
	}
	prefix := strings.TrimSuffix(d.defaultSlice, ".slice") + "-"
	var ids []string
	for _, root := range roots {
		entries, err := os.ReadDir(filepath.Join(root, parentPath))
		if err != nil {
			continue
		}
		for _, e := range entries {
			id, ok := strings.CutPrefix(e.Name(), prefix)
			if !ok {
				continue
			}
			id, ok = strings.CutSuffix(id, ".slice")
			if ok && e.IsDir() && isSandboxID(id) && !slices.Contains(ids, id) && !keep(id) {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	var removed []string
	var errs []error
	for _, id := range ids {
		slice := d.podSlice(id)
		podPath := filepath.Join(parentPath, slice)
		if err := removeSliceTree(mode, roots, slice, podPath); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, podPath)
	}
	return removed, errors.Join(errs...)
}

// removeSliceTree kills everything in a pod slice, stops its peapod
// scopes and then the slice.
func removeSliceTree(mode Mode, roots map[string]string, slice, podPath string) error {
	if err := killCgroup(mode, roots, podPath, killBound); err != nil {
		return err
	}
	var errs []error
	var scopes []string
	for _, root := range roots {
		entries, _ := os.ReadDir(filepath.Join(root, podPath))
		for _, e := range entries {
			if id, ok := strings.CutPrefix(e.Name(), scopePrefix+"-"); ok && e.IsDir() && strings.HasSuffix(id, ".scope") && !slices.Contains(scopes, id) {
				scopes = append(scopes, id)
			}
		}
	}
	for _, s := range scopes {
		m, err := systemdScopeManager(mode, slice, strings.TrimSuffix(s, ".scope"))
		if err == nil {
			err = m.Destroy()
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	sm, err := systemdSliceManager(mode, slice, &cgroups.Resources{SkipDevices: true})
	if err == nil {
		err = sm.Destroy()
	}
	return errors.Join(append(errs, err)...)
}

func (d systemdDriver) RemoveParentIfEmpty() error {
	mode := hostMode()
	roots, err := hierarchyRoots(mode)
	if err != nil {
		return err
	}
	parentPath, err := systemd.ExpandSlice(d.defaultSlice)
	if err != nil {
		return err
	}
	if hasChildCgroups(roots, parentPath) {
		return nil
	}
	gone := true
	for _, root := range roots {
		if exists(filepath.Join(root, parentPath)) {
			gone = false
		}
	}
	if gone {
		return nil
	}
	m, err := systemdSliceManager(mode, d.defaultSlice, &cgroups.Resources{SkipDevices: true})
	if err != nil {
		return err
	}
	return m.Destroy()
}
