// Package rootless runs peapod as an ordinary user.
//
// `peapod serve` started with a non-zero euid becomes rootless by itself.
// Three processes take part:
//
//	peapod serve (parent)   the user's process, in the host namespaces
//	  ├── holder            the embedded pause binary, started in a new
//	  │                     user, mount, network, IPC and UTS namespace
//	  │                     (the rootless node's): it only keeps
//	  │                     those namespaces alive, so pods outlive a daemon
//	  │                     that is killed and restarted
//	  ├── slirp4netns|pasta outbound network for the holder's netns
//	  └── peapod serve      the daemon, joined to the holder's namespaces
//	      (child)           (nsenter-style re-exec); uid 0 there, with full
//	                        capabilities over its own netns
//
// The parent writes the holder's uid/gid maps with newuidmap/newgidmap from
// /etc/subuid and /etc/subgid: inside, uid 0 is the user and uids 1..65536
// are the user's first 65536 subordinate ids. It records the holder (pid and
// start time) under the state dir; a restarted parent finds a live holder and
// joins it instead of creating new namespaces, so running pods stay
// reachable. The holder ends when a daemon stops with no pods left.
//
// The daemon sees itself as root in a user namespace. Code below it detects
// that with userns.RunningInUserNS() (github.com/moby/sys/userns), not with
// this package, so it behaves the same under RootlessKit or `unshare`:
// overlayfs mounts with userxattr, image layers keep owners that map and
// tolerate ones that do not, cgroup writes are best effort outside a
// delegated subtree, and libcontainer runs with RootlessCgroups.
//
// On a cgroup v2 host the parent readies a subtree that systemd delegated
// to the user for the pods' cgroups before the daemon starts (cgroup2.go):
// as a systemd user service, a scope with Delegate=yes around the holder
// and the network helper (peapod-holder-<pid>.scope; pods in <scope>/pods),
// so that systemd can restart the service while pods run; otherwise its
// own cgroup, when delegated, which it leaves for the leaf "supervisor"
// (pods in <own>/pods). The daemon gets that parent as --cgroup-parent
// unless the user chose one.
//
// Sockets in the host's network namespace (hostPorts, the exec/attach
// streaming server) are bound by the parent on the daemon's request and
// passed to it over a unix socket (SCM_RIGHTS, package rootless/binder).
// The daemon then accepts on them and proxies to the pod (package
// rootless/portfwd). The streaming server also listens on the same port of
// the node's own loopback (HostListener), for clients inside the node.
//
// Under RootlessKit there is no parent of ours: the daemon runs in
// RootlessKit's namespaces as they are, and publishes hostPorts and the
// streaming port through RootlessKit's port API (rootlesskit.go).
//
// Paths (see Paths): socket $XDG_RUNTIME_DIR/peapod/peapod.sock, state
// $XDG_RUNTIME_DIR/peapod, root $XDG_DATA_HOME/peapod (~/.local/share/peapod),
// config $XDG_CONFIG_HOME/peapod/peapod.toml.
package rootless
