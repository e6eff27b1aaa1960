// Package shim is the per-pod monitor of peapod and the daemon's client for
// it.
//
// One shim process runs per pod (`<binary> shim --dir DIR --lc LC ...`,
// started by Start, detached in its own session). The binary is the lean
// peapod-shim (shim/peapod-shim: this package, built without cgo, nothing
// of libcontainer nor of the daemon), which peapod embeds (shim/embedded)
// and writes to its state dir with its helper program peapod-lc; a peapod
// built without them runs `peapod shim`, the same code. The shim is the
// parent and child-subreaper of the pod's containers. It holds the
// containers' stdio, writes their output to CRI log files (`RFC3339Nano
// stdout|stderr P|F text`, lines over 16 KiB split into P records),
// records each exit (code, finish time, OOM kill) in
// DIR/containers/<id>/exit.json, and serves exec and attach sessions. The
// daemon may be killed and restarted at any time: the shim and its
// containers carry on, and Connect finds them again.
//
// The shim neither runs nor links runc's libcontainer, as containerd's
// shim does not: each create, exec, kill of all processes, delete and
// update runs in a one-shot helper, the program peapod-lc (`LC lc`,
// package shim/lc; `peapod shim lc` in the whole peapod), which gets the
// request and the process's stdio over a socket, starts the process
// (libcontainer re-executes the helper as `LC init`), replies with its pid
// and exits. The process is re-parented to the shim, which reaps it and
// the helpers. Start needs no helper: the shim reads the init's byte from
// libcontainer's exec fifo itself. Nor does the SIGKILL of a container
// in a PID namespace of its own (its init's takes the namespace), nor the
// delete of one whose cgroups are cgroupfs directories (destroy_linux.go).
// See helper_linux.go and
// reaper_linux.go; deps_test.go keeps libcontainer and the cgroup code out
// of the shim's package graph.
//
// Containers join the sandbox's pinned namespaces (Namespace.Path) and get
// a new mount namespace always. Their cgroup is <PodCgroup>/<id> unless the
// spec names one (cgroupfs paths, relative to each hierarchy's root).
//
// Rootless (the shim and its helpers are uid 0 of a user namespace,
// shim/lc's rootless_linux.go): libcontainer runs with RootlessCgroups and
// bind-mounts device nodes instead of creating them; a container gets its cgroup in the hierarchies
// delegated to the user and none in the others, whose limits are dropped
// with a warning in the shim's log; oom_score_adj is never lowered (that
// needs CAP_SYS_RESOURCE of the host). Non-zero container uids are the
// namespace's, so they map into the user's subordinate range.
//
// Memory (memory_linux.go): no libcontainer and no cgo in the resident
// process, one P, GOGC 50, and a full collection that returns free pages
// to the kernel once the shim is quiet after lifecycle work, when that
// pays.
//
// The protocol between Client and shim is private: length-prefixed JSON
// frames over a unix stream socket in DIR, one connection per call; an exec
// session streams its stdio as further frames on its connection. The shim
// imports no gRPC so that its memory stays small (it counts against the
// pod's budget).
//
// DIR belongs to the shim: it holds the socket (shim.sock), the shim's pid
// and log, libcontainer's state (runc/) and the container records
// (containers/). Shutdown removes it.
package shim
