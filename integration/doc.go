// Package integration drives the real peapod binary end to end: it starts
// private daemons (own socket, root, state dir, bridge and subnet), talks to
// them over CRI gRPC and with crictl, and checks the kernel objects they
// make: namespaces, veths, qdiscs, cgroups, mounts and processes.
//
// The tests need root and a built tree: run them with `make test`, which
// builds bin/peapod, the CNI plugins and crictl first.
package integration
