package rootless

import (
	"io"
	"net"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
)

// inFreshNetns runs fn on a locked thread in a new network namespace with
// its loopback up, and returns the namespace handle for later use.
func inFreshNetns(t *testing.T, fn func()) vns.NsHandle {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root to create a network namespace")
	}
	done := make(chan vns.NsHandle)
	go func() {
		runtime.LockOSThread() // the thread dies with the namespace
		h, err := vns.New()
		if err != nil {
			t.Error(err)
			done <- vns.None()
			return
		}
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		fn()
		done <- h
	}()
	return <-done
}

// The merged listener serves both sockets, the "host" one (bound in
// another network namespace, as the parent does through the binder) and
// the one on the same port in the caller's own, and closes both.
func TestHostListenerAcceptsOnBoth(t *testing.T) {
	var host net.Listener
	var bindErr error
	ns := inFreshNetns(t, func() { host, bindErr = net.Listen("tcp", "127.0.0.1:0") })
	defer ns.Close()
	if bindErr != nil {
		t.Fatal(bindErr)
	}
	l, err := HostListener(func(string, string) (net.Listener, error) { return host, nil }, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := l.(*multiListener); !ok {
		t.Fatalf("no second socket in this namespace: %T", l)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	ask := func() (string, error) {
		c, err := net.Dial("tcp", host.Addr().String())
		if err != nil {
			return "", err
		}
		defer c.Close()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	if got, err := ask(); got != "hi" {
		t.Errorf("this namespace's socket: %q %v", got, err)
	}
	var got string
	inFreshNetnsJoin(t, ns, func() { got, err = ask() })
	if got != "hi" {
		t.Errorf("the other namespace's socket: %q %v", got, err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if _, err := ask(); err == nil {
		t.Errorf("still listening after Close")
	}
}

// inFreshNetnsJoin runs fn on a locked thread inside ns.
func inFreshNetnsJoin(t *testing.T, ns vns.NsHandle, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // not unlocked: the thread is discarded
		if err := vns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}
