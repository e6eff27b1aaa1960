// Package binder lets a rootless daemon, which lives in its own network
// namespace, own sockets in the host's network namespace: hostPorts and the
// streaming server's listener.
//
// The user's parent process (in the host namespaces) runs Serve on one end
// of a unix socketpair; the daemon holds the other end as a Client. For each
// request the parent creates and binds a socket (and for TCP puts it in the
// listening state), sends its descriptor over the socket (SCM_RIGHTS) and
// closes its own copy. From then on the daemon alone owns the socket: it
// accepts or reads on it, and closing it frees the host port. A daemon that
// dies therefore releases every port it held, and a restarted daemon asks
// again.
//
// # Protocol
//
// The socketpair is AF_UNIX, SOCK_SEQPACKET: message boundaries are kept, so
// one message is one JSON object and nothing needs framing.
//
//	request  {"id":7,"network":"tcp","addr":"127.0.0.1:8080"}
//	reply    {"id":7}                                       + 1 fd (SCM_RIGHTS)
//	reply    {"id":7,"error":"bind tcp :80: ...","errno":13}  no fd
//
// network is one of tcp, tcp4, tcp6, udp, udp4, udp6. addr is host:port
// with a literal IP or an empty host (all addresses: for tcp and udp both
// IPv4 and IPv6 when the host has IPv6, as net.Listen does); port 0 asks the
// kernel for a free port. errno, when present, is the Linux errno of the
// failed call (EADDRINUSE, EACCES, ...), so the daemon can tell a busy port
// from a refused one. The parent answers requests in order; replies carry
// the request's id, and a reply nobody waits for any more has its fd closed.
// Zero-length messages are never sent (a zero-length read is the peer's
// close).
package binder
