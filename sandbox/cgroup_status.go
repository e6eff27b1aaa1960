package sandbox

import "peapod/cgroups"

// CgroupControllersUnavailable lists the cgroup controllers that this
// daemon's pods cannot use, each with the reason: not mounted or not
// offered on this host, or (rootless) not delegated to the user for the
// default cgroup parent. Verbose Status shows it.
func (m *Manager) CgroupControllersUnavailable() map[string]string {
	parent := m.cfg.DefaultCgroupParent
	if m.cgroups != nil && m.cgroups.Name() != cgroups.DriverCgroupfs {
		// A systemd slice is not a cgroupfs path to check delegation on.
		parent = ""
	}
	return cgroups.Unavailability(parent)
}
