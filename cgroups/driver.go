package cgroups

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Names of the cgroup drivers, as the kubelet's cgroupDriver spells them.
const (
	DriverCgroupfs = "cgroupfs"
	DriverSystemd  = "systemd"
)

// Driver is how pod cgroups are made on this host: directly in the cgroup
// filesystem (cgroupfs), or as systemd units over D-Bus (systemd: the pod a
// slice, the pause and each container a scope). It is chosen once, at
// start; everything after creation works from the PodCgroup record, which
// remembers its driver, so the rest of peapod never branches on it.
type Driver interface {
	// Name is DriverCgroupfs or DriverSystemd (what RuntimeConfig reports).
	Name() string
	// CreatePodCgroup makes the pod cgroup for cgroupParent (a cgroupfs
	// path, or a slice name with systemd; empty means the default parent)
	// and the pause cgroup beneath it. An unusable cgroupParent yields an
	// error wrapping ErrInvalidParent. On error nothing that this call
	// created is left behind.
	CreatePodCgroup(cgroupParent, sandboxID string) (PodCgroup, error)
	// PlanPodCgroup is CreatePodCgroup's checks and result without making
	// anything, so that a record can name the cgroup before it exists
	// (Remove does not mind what was never made); MakePodCgroup makes it.
	PlanPodCgroup(cgroupParent, sandboxID string) (PodCgroup, error)
	MakePodCgroup(p PodCgroup) error
	// SweepOrphans removes the pod cgroups under the default parent whose
	// sandbox id keep rejects (leftovers of a crash).
	SweepOrphans(keep func(sandboxID string) bool) ([]string, error)
	// RemoveParentIfEmpty removes the default parent when no pod is left.
	RemoveParentIfEmpty() error
}

// NewDriver returns the named driver. defaultParent is the cgroupfs path of
// the pods that name no parent (/peapod); the systemd driver turns it into
// a slice (peapod.slice). The systemd driver fails here, with what to do,
// when systemd is not the init system or its D-Bus API is not reachable.
func NewDriver(name, defaultParent string) (Driver, error) {
	switch name {
	case "", DriverCgroupfs:
		return cgroupfsDriver{defaultParent: defaultParent}, nil
	case DriverSystemd:
		return newSystemdDriver(defaultParent)
	}
	return nil, fmt.Errorf("unknown cgroup driver %q: use %s or %s", name, DriverCgroupfs, DriverSystemd)
}

// CheckDriver is Check plus what the named driver needs (systemd: PID 1
// and its D-Bus API). No lines means fine.
func CheckDriver(name string) []string {
	out := Check()
	switch name {
	case "", DriverCgroupfs:
	case DriverSystemd:
		if err := SystemdAvailable(); err != nil {
			out = append(out, err.Error())
		}
	default:
		out = append(out, fmt.Sprintf("unknown cgroup driver %q: use %s or %s", name, DriverCgroupfs, DriverSystemd))
	}
	return out
}

type cgroupfsDriver struct{ defaultParent string }

func (cgroupfsDriver) Name() string { return DriverCgroupfs }

func (d cgroupfsDriver) CreatePodCgroup(cgroupParent, sandboxID string) (PodCgroup, error) {
	return CreatePodCgroup(cgroupParent, d.defaultParent, sandboxID)
}

func (d cgroupfsDriver) PlanPodCgroup(cgroupParent, sandboxID string) (PodCgroup, error) {
	return PlanPodCgroup(cgroupParent, d.defaultParent, sandboxID)
}

func (d cgroupfsDriver) MakePodCgroup(p PodCgroup) error { return MakePodCgroup(p, d.defaultParent) }

func (d cgroupfsDriver) SweepOrphans(keep func(string) bool) ([]string, error) {
	return SweepOrphans(d.defaultParent, keep)
}

func (d cgroupfsDriver) RemoveParentIfEmpty() error { return RemoveParentIfEmpty(d.defaultParent) }

// ContainerPath is the cgroup of container id, relative to the hierarchy
// root: <pod>/<id> with cgroupfs, <pod slice>/peapod-<id>.scope with
// systemd. Stats read it.
func (p PodCgroup) ContainerPath(id string) string {
	if p.Driver == DriverSystemd {
		return filepath.Join(p.PodPath, scopeUnit(id))
	}
	return ContainerCgroupPath(p.PodPath, id)
}

// ContainerCgroupsPath is the runtime spec's linux.cgroupsPath for
// container id: the cgroupfs path, or systemd's "slice:prefix:name" form,
// which libcontainer turns into the scope peapod-<id>.scope in the pod's
// slice (IsSystemdCgroupsPath tells them apart).
func (p PodCgroup) ContainerCgroupsPath(id string) string {
	if p.Driver == DriverSystemd {
		return p.Slice + ":" + scopePrefix + ":" + id
	}
	return ContainerCgroupPath(p.PodPath, id)
}

// IsSystemdCgroupsPath reports whether a runtime spec cgroupsPath is in
// systemd's "slice:prefix:name" form (the shim then uses libcontainer's
// systemd cgroup manager).
func IsSystemdCgroupsPath(p string) bool {
	return !strings.HasPrefix(p, "/") && strings.Count(p, ":") == 2
}
