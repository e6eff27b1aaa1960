package binder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// maxMsg bounds one protocol message.
const maxMsg = 4096

type request struct {
	ID      uint64 `json:"id"`
	Network string `json:"network"`
	Addr    string `json:"addr"`
}

type response struct {
	ID    uint64 `json:"id"`
	Error string `json:"error,omitempty"`
	Errno int    `json:"errno,omitempty"`
}

// Error is a request the parent refused or could not carry out. It wraps
// the errno of the failed system call when there was one, so
// errors.Is(err, syscall.EADDRINUSE) works across the socket.
type Error struct {
	Msg   string
	Errno syscall.Errno
}

func (e *Error) Error() string { return e.Msg }

func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// Pair returns a new connected SOCK_SEQPACKET socketpair: the parent's end
// for Serve and the daemon's end as a file to hand to the child (for
// example in exec.Cmd.ExtraFiles) and then close. Both are close-on-exec.
func Pair() (parent *net.UnixConn, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("binder socketpair: %w", err)
	}
	pf := os.NewFile(uintptr(fds[0]), "binder")
	child = os.NewFile(uintptr(fds[1]), "binder-daemon")
	c, err := net.FileConn(pf)
	pf.Close()
	if err != nil {
		child.Close()
		return nil, nil, fmt.Errorf("binder socketpair: %w", err)
	}
	return c.(*net.UnixConn), child, nil
}

// Serve answers bind requests on conn until the peer closes its end
// (Serve returns nil), ctx ends (ctx's error) or conn fails. policy, when
// not nil, is asked before each bind; its error is sent back as the
// reply. Serve does not close conn.
func Serve(ctx context.Context, conn *net.UnixConn, policy func(network, addr string) error) error {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, maxMsg)
	oob := make([]byte, unix.CmsgSpace(16*4))
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			closeRights(oob[:oobn]) // the daemon has no business sending fds
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("binder: read request: %w", err)
		}
		if n == 0 {
			return nil
		}
		var req request
		var resp response
		fd := -1
		switch {
		case flags&unix.MSG_TRUNC != 0:
			resp.Error = fmt.Sprintf("binder: request longer than %d bytes", maxMsg)
		case json.Unmarshal(buf[:n], &req) != nil:
			resp.Error = "binder: request is not valid JSON"
		default:
			resp.ID = req.ID
			if policy != nil {
				if err := policy(req.Network, req.Addr); err != nil {
					resp.Error = fmt.Sprintf("bind %s %s: %v", req.Network, req.Addr, err)
					break
				}
			}
			var errno syscall.Errno
			fd, errno, err = bind(req.Network, req.Addr)
			if err != nil {
				resp.Error, resp.Errno = err.Error(), int(errno)
			}
		}
		b, _ := json.Marshal(resp)
		var rights []byte
		if fd >= 0 {
			rights = unix.UnixRights(fd)
		}
		_, _, werr := conn.WriteMsgUnix(b, rights, nil)
		if fd >= 0 {
			unix.Close(fd) // sent or not, the daemon's copy is the only one
		}
		if werr != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(werr, syscall.EPIPE) || errors.Is(werr, syscall.ECONNRESET) {
				return nil
			}
			return fmt.Errorf("binder: send reply: %w", werr)
		}
	}
}

// closeRights closes every descriptor carried in a control message.
func closeRights(oob []byte) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
}

// bind creates, binds and (for TCP) listens on a socket in the calling
// process's network namespace. On failure errno is the failed call's errno
// (or 0 for a bad request).
func bind(network, addr string) (fd int, errno syscall.Errno, err error) {
	fail := func(e syscall.Errno, format string, args ...any) (int, syscall.Errno, error) {
		return -1, e, fmt.Errorf("bind %s %s: %s", network, addr, fmt.Sprintf(format, args...))
	}
	var sotype int
	switch network {
	case "tcp", "tcp4", "tcp6":
		sotype = unix.SOCK_STREAM
	case "udp", "udp4", "udp6":
		sotype = unix.SOCK_DGRAM
	default:
		return fail(0, "unsupported network %q (want tcp, tcp4, tcp6, udp, udp4, udp6)", network)
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return fail(0, "%v", err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return fail(0, "port %q is not a number in 0-65535", portStr)
	}
	want4, want6 := strings.HasSuffix(network, "4"), strings.HasSuffix(network, "6")

	var ip netip.Addr
	dual := false
	if host == "" {
		switch {
		case want4:
			ip = netip.IPv4Unspecified()
		case want6:
			ip = netip.IPv6Unspecified()
		default:
			ip, dual = netip.IPv6Unspecified(), true
		}
	} else {
		ip, err = netip.ParseAddr(host)
		if err != nil || ip.Zone() != "" {
			return fail(0, "host %q is not an IP address", host)
		}
		ip = ip.Unmap()
		if want4 && !ip.Is4() {
			return fail(0, "%s needs an IPv4 address", network)
		}
		if want6 && !ip.Is6() {
			return fail(0, "%s needs an IPv6 address", network)
		}
	}

	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	sock, err := unix.Socket(family, sotype|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil && dual && errors.Is(err, unix.EAFNOSUPPORT) {
		// No IPv6 on this host: all addresses means all IPv4 ones.
		ip, family, dual = netip.IPv4Unspecified(), unix.AF_INET, false
		sock, err = unix.Socket(family, sotype|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	}
	if err != nil {
		return fail(errnoOf(err), "socket: %v", err)
	}
	ok := false
	defer func() {
		if !ok {
			unix.Close(sock)
		}
	}()
	if sotype == unix.SOCK_STREAM {
		// As net.Listen does: a restarted daemon can take its port back
		// while old connections are in TIME_WAIT.
		if err := unix.SetsockoptInt(sock, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return fail(errnoOf(err), "SO_REUSEADDR: %v", err)
		}
	}
	var sa unix.Sockaddr
	if family == unix.AF_INET6 {
		v6only := 1
		if dual {
			v6only = 0
		}
		if err := unix.SetsockoptInt(sock, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, v6only); err != nil {
			return fail(errnoOf(err), "IPV6_V6ONLY: %v", err)
		}
		sa = &unix.SockaddrInet6{Port: int(port), Addr: ip.As16()}
	} else {
		sa = &unix.SockaddrInet4{Port: int(port), Addr: ip.As4()}
	}
	if err := unix.Bind(sock, sa); err != nil {
		e := errnoOf(err)
		switch e {
		case unix.EACCES:
			start := unprivilegedPortStart()
			return fail(e, "permission denied: ports below net.ipv4.ip_unprivileged_port_start (%s) need CAP_NET_BIND_SERVICE on the host; use a port >= %s, or let ordinary users bind it with `sudo sysctl net.ipv4.ip_unprivileged_port_start=%d`", start, start, port)
		case unix.EADDRINUSE:
			return fail(e, "address already in use on the host")
		case unix.EADDRNOTAVAIL:
			return fail(e, "%s is not an address of the host", ip)
		}
		return fail(e, "%v", err)
	}
	if sotype == unix.SOCK_STREAM {
		if err := unix.Listen(sock, 4096); err != nil {
			return fail(errnoOf(err), "listen: %v", err)
		}
	}
	ok = true
	return sock, 0, nil
}

// unprivilegedPortStart reads the sysctl of the caller's network namespace.
func unprivilegedPortStart() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	if err != nil {
		return "1024"
	}
	return strings.TrimSpace(string(b))
}

func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	errors.As(err, &e)
	return e
}
