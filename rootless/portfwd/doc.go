// Package portfwd forwards a host socket to a pod in user space: the
// hostPorts of a rootless daemon, whose pods live in a network namespace
// the host cannot route to. The sockets come from the parent in the host's
// namespace (package rootless/binder); the forwarder runs in the daemon,
// which reaches the pod IPs from its own namespace.
//
// TCP: every accepted connection gets its own connection to the target and
// bytes flow both ways (io.Copy between two *net.TCPConn, which the runtime
// turns into splice(2), so the data never enters user space). A side that
// finishes sending is half-closed on the other side (CloseWrite) and the
// other direction goes on until it ends too. A target that refuses is
// passed on as a reset.
//
// UDP: every client address gets a session, a socket connected to the
// target, so the pod sees one peer per client and its replies come back to
// the right client (sent from the host socket with WriteTo). A session
// without traffic either way for the idle timeout is closed.
//
// The pod sees every client as the daemon's address on the pod network
// (the bridge's gateway IP), not the client's own: source addresses are
// not preserved, as with RootlessKit's builtin port driver.
//
// Publisher groups the forwarders of each pod: it is the daemon's
// sandbox.PortPublisher. It takes its sockets from a Binder, the
// binder.Client of a rootless daemon (or Local, NoHostSockets).
//
// Close stops a forwarder, closes its socket (freeing the host port) and
// every connection and session, and returns once all its goroutines are
// gone.
package portfwd
