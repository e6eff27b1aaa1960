// Package nettest has the small network probes the tests of hostPorts
// share: a free port, and one question over TCP or UDP.
package nettest

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
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
