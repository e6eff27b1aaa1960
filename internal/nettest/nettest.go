// Package nettest has the small network probes the tests of hostPorts
// share: a free port, and one question over TCP or UDP.
package nettest

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// FreePort returns a port that was free on the host's wildcard address a
// moment ago, for network "tcp" or "udp".
func FreePort(t testing.TB, network string) int32 {
	t.Helper()
	if network == "udp" {
		pc, err := net.ListenPacket("udp", ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
		return int32(pc.LocalAddr().(*net.UDPAddr).Port)
	}
	l, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return int32(l.Addr().(*net.TCPAddr).Port)
}

// AskTCP connects to addr, sends "hi", half-closes and returns all the
// answer.
func AskTCP(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("hi")); err != nil {
		return "", err
	}
	_ = c.(*net.TCPConn).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

// AskUDP sends "u?" to addr, up to five times a second apart, and returns
// the first answer.
func AskUDP(addr string) (string, error) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 64)
	for range 5 {
		if _, err := c.Write([]byte("u?")); err != nil {
			return "", err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if n, err := c.Read(buf); err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", fmt.Errorf("no UDP reply from %s", addr)
}

// Echo serves TCP on tcpAddr and UDP on udpAddr ("127.0.0.1:0", ":8080")
// inside the network namespace at nsPath, answering prefix and what it
// got, until the test ends. The sockets are the test's own, opened on a
// thread switched into the namespace, so the namespace needs no tools. It
// returns the ports it listens on.
func Echo(t testing.TB, nsPath, tcpAddr, udpAddr, prefix string) (tcpPort, udpPort int) {
	t.Helper()
	var l net.Listener
	var pc net.PacketConn
	err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
		var err error
		if l, err = net.Listen("tcp4", tcpAddr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", udpAddr)
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", nsPath, err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				_, _ = c.Write(append([]byte(prefix), b...))
			}()
		}
	}()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(append([]byte(prefix), buf[:n]...), from)
		}
	}()
	return l.Addr().(*net.TCPAddr).Port, pc.LocalAddr().(*net.UDPAddr).Port
}
