package binder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14), missing from x/sys/unix.
const soNetnsCookie = 71

// TestMain doubles as the unprivileged parent of TestPrivilegedPort: with
// BINDER_TEST_SERVE set it serves binds on fd 3 and exits.
func TestMain(m *testing.M) {
	if os.Getenv("BINDER_TEST_SERVE") == "1" {
		f := os.NewFile(3, "binder")
		c, err := net.FileConn(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if err := Serve(context.Background(), c.(*net.UnixConn), nil); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// inFreshNetns runs fn on a locked OS thread that has unshared a new
// network namespace with its loopback up. The thread is never handed back
// to the scheduler: it exits with the goroutine, and the namespace dies
// with it (and with the last socket created in it).
func inFreshNetns(t *testing.T, fn func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread ends with us
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			errc <- fmt.Errorf("loopback up in the fresh netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func netnsCookie(t *testing.T, sc syscall.Conn) uint64 {
	t.Helper()
	rc, err := sc.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v uint64
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		v, gerr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, soNetnsCookie)
	}); err != nil {
		t.Fatal(err)
	}
	if gerr != nil {
		t.Fatalf("SO_NETNS_COOKIE: %v", gerr)
	}
	return v
}

type served struct {
	client *Client
	cancel context.CancelFunc
	done   chan error
}

// serve starts Serve on one end of a fresh pair and a Client on the other.
func serve(t *testing.T, policy func(network, addr string) error) *served {
	t.Helper()
	parent, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := Serve(ctx, parent, policy)
		parent.Close()
		s.done <- err
	}()
	s.client, err = New(child)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return s
}

// stop closes the client's end and checks Serve returns nil for it.
func (s *served) stop(t *testing.T) {
	t.Helper()
	s.client.Close()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("Serve after the daemon closed its end: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the client closed")
	}
	s.cancel()
}

func TestListenLivesInHostNetns(t *testing.T) {
	// Warm up the runtime's poller so it does not count as a leak.
	if l, err := net.Listen("tcp4", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no finalizer may hide a leak
	before := countFDs(t)

	s := serve(t, nil)
	host, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hostCookie := netnsCookie(t, host.(*net.TCPListener))
	host.Close()

	var got net.Listener
	var inside net.Listener // control: a socket made by the thread itself
	err = inFreshNetns(t, func() error {
		var err error
		got, err = s.client.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		inside, err = net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return err
		}
		// From inside the daemon's netns the host's port is not there.
		c, err := net.DialTimeout("tcp4", got.Addr().String(), 2*time.Second)
		if err == nil {
			c.Close()
			return fmt.Errorf("dial %s from the fresh netns worked: the socket is not in the host netns", got.Addr())
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("dial from the fresh netns: want connection refused, got %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inside.Close()

	if c := netnsCookie(t, got.(*net.TCPListener)); c != hostCookie {
		t.Errorf("received socket's netns cookie %d, host's %d", c, hostCookie)
	}
	if c := netnsCookie(t, inside.(*net.TCPListener)); c == hostCookie {
		t.Fatalf("control socket made in the fresh netns has the host's cookie: the test thread did not switch")
	}
	// The control is unreachable from the host, the binder's socket is.
	if c, err := net.DialTimeout("tcp4", inside.Addr().String(), 2*time.Second); err == nil {
		c.Close()
		t.Fatalf("control listener %s of the fresh netns reachable from the host", inside.Addr())
	}
	accepted := make(chan error, 1)
	go func() {
		c, err := got.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		_, err = c.Write([]byte("from the daemon"))
		accepted <- err
	}()
	c, err := net.DialTimeout("tcp4", got.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial the binder's listener from the host: %v", err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "from the daemon" {
		t.Fatalf("read %q, %v", b, err)
	}
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}

	// Closing the daemon's listener frees the host port: the parent kept
	// no copy.
	addr := got.Addr().String()
	got.Close()
	again, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatalf("port %s still taken after the daemon closed its listener: %v", addr, err)
	}
	again.Close()
	inside.Close()

	s.stop(t)
	if after := countFDs(t); after != before {
		t.Errorf("fds: %d before, %d after", before, after)
	}
}

func TestUDPAndDualStack(t *testing.T) {
	s := serve(t, nil)
	defer s.stop(t)

	pc, err := s.client.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := net.Dial("udp4", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	pc.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 16)
	n, from, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("ReadFrom: %q %v", buf[:n], err)
	}
	if _, err := pc.WriteTo([]byte("pong"), from); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "pong" {
		t.Fatalf("reply: %q %v", buf[:n], err)
	}

	// Empty host, plain tcp: every address, IPv4 and IPv6.
	l, err := s.client.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	for _, a := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("[::1]:%d", port)} {
		go func() {
			if c, err := l.Accept(); err == nil {
				c.Close()
			}
		}()
		c, err := net.DialTimeout("tcp", a, 2*time.Second)
		if err != nil {
			t.Errorf("dual-stack listener: dial %s: %v", a, err)
			continue
		}
		c.Close()
	}
}

func TestErrors(t *testing.T) {
	if l, err := net.Listen("tcp4", "127.0.0.1:0"); err == nil {
		l.Close()
	}
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no finalizer may hide a leak
	before := countFDs(t)
	s := serve(t, func(network, addr string) error {
		if strings.HasSuffix(addr, ":7") {
			return errors.New("port 7 is not for you")
		}
		return nil
	})

	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.client.Listen("tcp4", busy.Addr().String())
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("busy port: want EADDRINUSE saying so, got %v", err)
	}
	busy.Close()

	busyU, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.client.ListenPacket("udp4", busyU.LocalAddr().String())
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("busy udp port: want EADDRINUSE, got %v", err)
	}
	busyU.Close()

	for _, tc := range []struct{ network, addr, want string }{
		{"sctp", ":80", "unsupported network"},
		{"tcp6", "127.0.0.1:0", "needs an IPv6 address"},
		{"udp4", "[::1]:0", "needs an IPv4 address"},
		{"tcp", "localhost:0", "not an IP address"},
		{"tcp", "127.0.0.1:99999", "not a number in 0-65535"},
		{"tcp", "127.0.0.1", "missing port"},
		{"tcp", "192.0.2.1:0", "not an address of the host"},
		{"tcp", "127.0.0.1:7", "port 7 is not for you"},
	} {
		var err error
		if strings.HasPrefix(tc.network, "udp") {
			_, err = s.client.ListenPacket(tc.network, tc.addr)
		} else {
			_, err = s.client.Listen(tc.network, tc.addr)
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: want error with %q, got %v", tc.network, tc.addr, tc.want, err)
		}
	}
	if _, err := s.client.Listen("udp", ":0"); err == nil {
		t.Error("Listen(udp) worked")
	}
	if _, err := s.client.ListenPacket("tcp", ":0"); err == nil {
		t.Error("ListenPacket(tcp) worked")
	}
	// After all that, the protocol is still in step.
	l, err := s.client.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen after errors: %v", err)
	}
	l.Close()

	s.stop(t)
	if _, err := s.client.Listen("tcp4", "127.0.0.1:0"); !errors.Is(err, ErrClosed) {
		t.Errorf("Listen after close: want ErrClosed, got %v", err)
	}
	if after := countFDs(t); after != before {
		t.Errorf("fds: %d before, %d after", before, after)
		ents, _ := os.ReadDir("/proc/self/fd")
		for _, e := range ents {
			l, _ := os.Readlink("/proc/self/fd/" + e.Name())
			var fd int
			fmt.Sscan(e.Name(), &fd)
			dom, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
			typ, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
			sa, _ := unix.Getsockname(fd)
			t.Log(e.Name(), l, dom, typ, sa)
		}
	}
}

func TestConcurrentAndParentGone(t *testing.T) {
	parent, child, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, parent, nil) }()
	cl, err := New(child)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	var wg sync.WaitGroup
	ls := make([]net.Listener, 32)
	errs := make([]error, 32)
	for i := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ls[i], errs[i] = cl.Listen("tcp4", "127.0.0.1:0")
		}()
	}
	wg.Wait()
	ports := map[string]bool{}
	for i, l := range ls {
		if errs[i] != nil {
			t.Fatalf("concurrent Listen %d: %v", i, errs[i])
		}
		if ports[l.Addr().String()] {
			t.Errorf("two listeners on %s", l.Addr())
		}
		ports[l.Addr().String()] = true
		l.Close()
	}

	// The parent stops serving: Serve returns ctx's error, and once the
	// parent's end is closed the client notices without being asked.
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Serve after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve ignored its context")
	}
	parent.Close()
	select {
	case <-cl.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client did not notice the parent's end closing")
	}
	if _, err := cl.Listen("tcp4", "127.0.0.1:0"); !errors.Is(err, ErrClosed) {
		t.Errorf("Listen with the parent gone: want ErrClosed, got %v", err)
	}
}

// TestPrivilegedPort runs the parent side as an unprivileged user (nobody,
// no capabilities), as in a real rootless setup, and asks for a port below
// ip_unprivileged_port_start.
func TestPrivilegedPort(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start the unprivileged parent")
	}
	start := unprivilegedPortStart()
	if start == "0" {
		t.Skip("net.ipv4.ip_unprivileged_port_start is 0: every port is unprivileged here")
	}
	// The test binary must be executable by nobody.
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "binder.test")
	data, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	theirs := os.NewFile(uintptr(fds[0]), "parent-end")
	ours := os.NewFile(uintptr(fds[1]), "daemon-end")
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), "BINDER_TEST_SERVE=1")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	theirs.Close()
	cl, err := New(ours)
	if err != nil {
		t.Fatal(err)
	}

	_, err = cl.Listen("tcp4", "127.0.0.1:80")
	want := "permission denied: ports below net.ipv4.ip_unprivileged_port_start (" + start + ")"
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), want) {
		t.Errorf("port 80 as nobody: want EACCES with %q, got %v", want, err)
	}
	// An unprivileged port works for the unprivileged parent.
	l, err := cl.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Errorf("unprivileged port as nobody: %v", err)
	} else {
		l.Close()
	}
	cl.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("unprivileged parent: %v", err)
	}
}
