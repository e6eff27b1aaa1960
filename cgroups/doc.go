// Package cgroups gives every pod a cgroup: the "process group" of the Pod
// concept, through which the kernel accounts (and later limits) everything the
// pod runs.
//
// The pod cgroup is the kubelet's cgroup_parent (for example
// /kubepods/burstable/pod<uid>), or <defaultParent>/<sandboxID> when none is
// given. Beneath it the pause process gets a child cgroup named after the
// sandbox, the way containerd places its sandbox container; containers get
// siblings named after their ids. Paths are cgroupfs paths (the cgroupfs
// driver), relative to the root of each hierarchy.
//
// Both layouts are handled: cgroup v1, including the hybrid layout where a
// cgroup2 hierarchy without controllers is mounted at /sys/fs/cgroup/unified
// beside the v1 controllers (the pod exists in every mounted hierarchy), and
// the unified cgroup v2 layout, where controllers are delegated down to the
// pod. Directory creation per controller relies on
// github.com/opencontainers/cgroups.
//
// Two drivers make them, chosen once at start behind the Driver interface
// (driver.go): cgroupfs writes the directories itself; systemd (as the
// kubelet's cgroupDriver: systemd) takes the cgroup_parent as a slice name,
// e.g. kubepods-besteffort-pod<uid>.slice, and asks systemd over D-Bus for
// transient scopes peapod-<id>.scope in it for the pause and (through the
// shim's libcontainer) for each container; a pod without a parent gets a
// slice of its own in peapod.slice (systemd.go). Both leave ordinary paths
// in the hierarchy, so stats and kills do not care which made them.
// PodCgroup.SetResources applies pod-level limits live (resources.go).
//
// A PodCgroup is a plain value that the sandbox store persists as JSON; all
// its methods work from that value alone, after a daemon restart too. The
// kubelet owns the cgroups it creates: peapod removes a pod cgroup only when
// it created it, and always removes the pause cgroup.
//
// Rootless peapod runs as uid 0 of a user namespace over the host's cgroup
// filesystems (delegation.go). It can use a hierarchy only where the host
// delegated a subtree to the user: on v1 a directory chowned to the user in
// that hierarchy (integration/rootless-delegate.sh makes
// /sys/fs/cgroup/<hierarchy>/peapod-<user>), on v2 the service's own cgroup
// with Delegate=yes, which PrepareDelegatedV2 readies (the daemon moves into
// a leaf, controllers are enabled for the pods), or a delegated scope that
// PrepareDelegatedV2At readies (package rootless makes one as a user
// service). Detection is userns.RunningInUserNS, so RootlessKit and
// `unshare` behave the same. Pods get cgroups in the delegated hierarchies only and still run without the
// others; ReadStats leaves the sections of those controllers nil (absent,
// not zero), Unavailability says for each unusable controller why ("not
// delegated to this user: ... is not writable"), and Undelegated tells the
// shim which containers' limits it must drop. As real root none of this
// changes anything.
package cgroups
