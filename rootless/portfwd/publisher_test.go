package portfwd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"peapod/internal/nettest"
	"peapod/netns"
	"peapod/rootless/binder"
)

// pod is a network namespace joined to the host by a veth pair, with a
// TCP echo server and a UDP echo server listening on the pod's IP, as a
// pod sandbox of the embedded CNI network would be.
type pod struct {
	ip       string
	hostVeth string
	tcpPort  int
	udpPort  int
}

func newPod(t *testing.T) *pod {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace and a veth")
	}
	n := os.Getpid()%200 + 20
	p := &pod{
		ip:       fmt.Sprintf("10.213.%d.2", n),
		hostVeth: fmt.Sprintf("pfwh%d", os.Getpid()%100000),
	}
	hostAddr := fmt.Sprintf("10.213.%d.1/30", n)
	podVeth := fmt.Sprintf("pfwp%d", os.Getpid()%100000)

	type listeners struct {
		l  net.Listener
		pc net.PacketConn
	}
	ready := make(chan error, 1)
	var ls listeners
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with us
		host, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ready <- err
			return
		}
		defer host.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare: %w", err)
			return
		}
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: podVeth}, PeerName: p.hostVeth, PeerNamespace: netlink.NsFd(int(host.Fd()))}
		if err := netlink.LinkAdd(veth); err != nil {
			ready <- fmt.Errorf("veth: %w", err)
			return
		}
		for _, name := range []string{"lo", podVeth} {
			link, err := netlink.LinkByName(name)
			if err == nil {
				err = netlink.LinkSetUp(link)
			}
			if err == nil && name == podVeth {
				addr, _ := netlink.ParseAddr(p.ip + "/30")
				err = netlink.AddrAdd(link, addr)
			}
			if err != nil {
				ready <- fmt.Errorf("pod side %s: %w", name, err)
				return
			}
		}
		if ls.l, err = net.Listen("tcp4", p.ip+":0"); err != nil {
			ready <- err
			return
		}
		if ls.pc, err = net.ListenPacket("udp4", p.ip+":0"); err != nil {
			ls.l.Close()
			ready <- err
			return
		}
		ready <- nil
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ls.l.Close()
		ls.pc.Close()
		if link, err := netlink.LinkByName(p.hostVeth); err == nil {
			netlink.LinkDel(link)
		}
		// Nothing may be left behind.
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := netlink.LinkByName(p.hostVeth); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("veth %s left behind", p.hostVeth)
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	link, err := netlink.LinkByName(p.hostVeth)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(hostAddr)
	if err := netlink.AddrAdd(link, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	p.tcpPort = ls.l.Addr().(*net.TCPAddr).Port
	p.udpPort = ls.pc.LocalAddr().(*net.UDPAddr).Port
	go func() {
		for {
			c, err := ls.l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("pod:"))
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := ls.pc.ReadFrom(buf)
			if err != nil {
				return
			}
			ls.pc.WriteTo(append([]byte("pod:"), buf[:n]...), from)
		}
	}()
	return p
}

// TestPublisherRealPod publishes hostPorts of a pod in its own network
// namespace through a real binder, and reaches it from the host's
// 127.0.0.1 as a user of a rootless instance would.
func TestPublisherRealPod(t *testing.T) {
	p := newPod(t)

	parent, child, err := binder.Pair()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- binder.Serve(ctx, parent, nil) }()
	defer func() {
		cancel()
		<-served
		parent.Close()
	}()
	cl, err := binder.New(child)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pub := NewPublisher(cl, Options{})
	defer pub.Close()

	base := runtime.NumGoroutine()
	tcpHost, udpHost := nettest.FreePort(t, "tcp"), nettest.FreePort(t, "udp")
	mappings := []netns.PortMapping{
		{HostPort: tcpHost, ContainerPort: int32(p.tcpPort), Protocol: "tcp"},
		{HostPort: udpHost, ContainerPort: int32(p.udpPort), Protocol: "udp", HostIP: "127.0.0.1"},
	}
	if err := pub.Publish("sb1", p.ip, mappings); err != nil {
		t.Fatal(err)
	}
	if n := len(pub.Published("sb1")); n != 2 {
		t.Fatalf("%d forwarders, want 2", n)
	}
	for _, a := range []string{"127.0.0.1", "[::1]"} {
		addr := strings.Trim(a, "[]")
		got, err := nettest.AskTCP(net.JoinHostPort(addr, strconv.Itoa(int(tcpHost))))
		if err != nil || got != "pod:hi" {
			t.Errorf("hostPort %d/tcp via %s: %q %v", tcpHost, a, got, err)
		}
	}
	u, err := net.Dial("udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(udpHost))))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ask(u, "dns?"); err != nil || got != "pod:dns?" {
		t.Errorf("hostPort %d/udp: %q %v", udpHost, got, err)
	}
	u.Close()

	// A busy host port: the whole publish fails, says which port and
	// why, and leaves none of the sandbox's other ports taken.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	busyPort := int32(busy.Addr().(*net.TCPAddr).Port)
	other := nettest.FreePort(t, "tcp")
	err = pub.Publish("sb2", p.ip, []netns.PortMapping{
		{HostPort: other, ContainerPort: int32(p.tcpPort), Protocol: "tcp"},
		{HostPort: busyPort, ContainerPort: int32(p.tcpPort), Protocol: "tcp", HostIP: "127.0.0.1"},
	})
	busy.Close()
	want := fmt.Sprintf("host port 127.0.0.1:%d/tcp", busyPort)
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), want) {
		t.Errorf("busy port: want EADDRINUSE naming %q, got %v", want, err)
	}
	if l, err := net.Listen("tcp", fmt.Sprintf(":%d", other)); err != nil {
		t.Errorf("port %d of the failed publish still taken: %v", other, err)
	} else {
		l.Close()
	}
	if n := len(pub.Published("sb2")); n != 0 {
		t.Errorf("failed publish left %d forwarders", n)
	}
	if err := pub.Publish("sb3", p.ip, []netns.PortMapping{{HostPort: other, ContainerPort: 1, Protocol: "sctp"}}); !errors.Is(err, ErrProtocol) {
		t.Errorf("sctp: want ErrProtocol, got %v", err)
	}

	// Unpublish frees the ports at once and is idempotent.
	if err := pub.Unpublish("sb1"); err != nil {
		t.Fatal(err)
	}
	if err := pub.Unpublish("sb1"); err != nil {
		t.Fatal(err)
	}
	if _, err := nettest.AskTCP(fmt.Sprintf("127.0.0.1:%d", tcpHost)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after Unpublish: want connection refused, got %v", err)
	}
	if l, err := net.Listen("tcp", fmt.Sprintf(":%d", tcpHost)); err != nil {
		t.Errorf("port %d still taken after Unpublish: %v", tcpHost, err)
	} else {
		l.Close()
	}
	if pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", udpHost)); err != nil {
		t.Errorf("udp port %d still taken after Unpublish: %v", udpHost, err)
	} else {
		pc.Close()
	}
	settleGoroutines(t, base)
}

func TestNoHostSockets(t *testing.T) {
	pub := NewPublisher(NoHostSockets("the daemon was started without a peapod parent"), Options{})
	err := pub.Publish("sb", "10.0.0.2", []netns.PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}})
	if err == nil || !strings.Contains(err.Error(), "host port 8080/tcp: bind tcp :8080: the daemon was started without a peapod parent") {
		t.Fatalf("got %v", err)
	}
	if n := len(pub.Published("sb")); n != 0 {
		t.Fatalf("%d forwarders after a refused publish", n)
	}
	// No hostPorts, nothing to refuse.
	if err := pub.Publish("sb", "10.0.0.2", nil); err != nil {
		t.Fatal(err)
	}
}
