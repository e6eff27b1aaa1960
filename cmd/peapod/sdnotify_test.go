package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func listenNotify(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func readNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 256)
	n, err := conn.Read(b)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(b[:n])
}

func TestSdNotifyPathAndAbstractSockets(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn := listenNotify(t, path)
	t.Setenv("NOTIFY_SOCKET", path)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	if got := readNotify(t, conn); got != "READY=1" {
		t.Errorf("path socket got %q", got)
	}

	name := "peapod-notify-test-" + filepath.Base(t.TempDir())
	aconn := listenNotify(t, "\x00"+name)
	t.Setenv("NOTIFY_SOCKET", "@"+name)
	if err := sdNotify("STOPPING=1"); err != nil {
		t.Fatal(err)
	}
	if got := readNotify(t, aconn); got != "STOPPING=1" {
		t.Errorf("abstract socket got %q", got)
	}

	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody-listens"))
	if err := sdNotify("READY=1"); err == nil {
		t.Error("a socket nobody listens on gave no error")
	}
}
