package lc

import (
	"os"
	"path/filepath"

	"github.com/moby/sys/userns"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"

	pcgroups "peapod/cgroups"
)

// Rootless peapod runs the shim and its helpers as uid 0 in a user namespace. The cgroup
// hierarchies there are the host's and only partly ours: those the host
// delegated to the user are writable, the others are not. Containers then
// get cgroups where they can and run without them elsewhere, and the
// limits of the controllers they cannot have are dropped (logged), as runc
// does for rootless containers. Devices are bind-mounted instead of
// created, which libcontainer decides by itself in a user namespace.

// inUserNS is userns.RunningInUserNS (the tests run in real user
// namespaces: rootless_test.go).
var inUserNS = userns.RunningInUserNS

// rootlessCgroups adapts a container's cgroupfs config in a user
// namespace and returns the controllers whose limits it dropped (nil as
// real root, or with the systemd driver, which delegation covers whole).
//
// libcontainer tolerates a hierarchy it may not create or join
// (permission errors in a rootless config) only for a cgroup named by
// Parent and Name; a Path makes every such error fatal. So the path is
// given as Parent and Name, which name the same cgroup.
func rootlessCgroups(cg *cgroups.Cgroup) []string {
	if cg == nil || !cg.Rootless || cg.Systemd || !inUserNS() {
		return nil
	}
	if cg.Path != "" {
		cg.Parent, cg.Name, cg.Path = filepath.Dir(cg.Path), filepath.Base(cg.Path), ""
	}
	dropped := pcgroups.Undelegated(filepath.Join(cg.Parent, cg.Name))
	if cg.Resources != nil {
		dropped = pcgroups.DropLimits(cg.Resources, dropped)
	}
	return dropped
}

// cgroupsPath is the cgroupfs path of a container's cgroup config,
// however it is named (Path, or Parent and Name).
func cgroupsPath(cg *cgroups.Cgroup) string {
	if cg.Path != "" || cg.Name == "" {
		return cg.Path
	}
	return filepath.Join(cg.Parent, cg.Name)
}

// anyCgroupDir returns a directory of paths (a container's cgroup in each
// hierarchy, as libcontainer's state lists it) that exists: where to list
// the container's processes when the preferred hierarchy was not
// delegated. Controller hierarchies come first: libcontainer joins named
// and hybrid ones on a best-effort basis, so their directory may exist
// without the container's processes in it.
func anyCgroupDir(paths map[string]string) string {
	ok := func(p string) bool {
		_, err := os.Stat(p)
		return p != "" && err == nil
	}
	for _, k := range []string{"pids", "devices", "freezer", "cpuacct", "cpu", "memory", "cpuset", "blkio"} {
		if p := paths[k]; ok(p) {
			return p
		}
	}
	for _, k := range []string{"name=systemd", ""} {
		if p := paths[k]; ok(p) {
			return p
		}
	}
	return ""
}

// execCgroupPaths is the SubCgroupPaths of an exec process: nil (join the
// container's cgroups the ordinary way) except rootless on cgroup v1.
// There libcontainer keeps, among the container's cgroup paths, those of
// named and hybrid hierarchies it joins on a best-effort basis even where
// they could not be created (not delegated); joining an exec through its
// manager stops at the first such missing directory, so the exec would
// miss the hierarchies that come after it. Naming one controller's
// cgroup ("" below it: the container's own) takes libcontainer's other
// path, which writes the exec into every hierarchy, ignoring failures.
func execCgroupPaths(lc *libcontainer.Container) map[string]string {
	cg := lc.Config().Cgroups
	if cg == nil || !cg.Rootless || cg.Systemd || !inUserNS() || cgroups.IsCgroup2UnifiedMode() {
		return nil
	}
	st, err := lc.State()
	if err != nil {
		return nil
	}
	for _, k := range []string{"pids", "cpu", "cpuacct", "memory", "freezer", "devices", "blkio", "cpuset"} {
		if _, ok := st.CgroupPaths[k]; ok {
			return map[string]string{k: ""}
		}
	}
	return nil
}
