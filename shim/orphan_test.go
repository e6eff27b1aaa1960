package shim

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"peapod/internal/procfs"
)

func TestGoneTellsANoShimFromOtherErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// A socket file nobody listens on any more: what a killed shim leaves.
	dir := t.TempDir()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, socketName), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := Connect(ctx, dir); !Gone(err) {
		t.Errorf("Connect to a dead shim's socket: %v, Gone = false", err)
	}
	if _, err := Connect(ctx, filepath.Join(dir, "missing")); !Gone(err) {
		t.Errorf("Connect to a missing dir: %v, Gone = false", err)
	}
	for _, err := range []error{ErrNotFound, context.DeadlineExceeded, errors.New("shim x: connection closed")} {
		if Gone(err) {
			t.Errorf("Gone(%v) = true", err)
		}
	}

	// A shim that dies under a call: the call reached it, so it is not
	// Gone, and the broken connection shows (io.EOF, EPIPE or ECONNRESET,
	// depending on when it broke) for the caller to ask again (sandbox's
	// shimLost).
	dying := t.TempDir()
	l2, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dying, socketName), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	go func() {
		if c, err := l2.Accept(); err == nil {
			c.Close()
		}
	}()
	_, err = Connect(ctx, dying)
	broken := errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
	if err == nil || Gone(err) || !broken {
		t.Errorf("Connect to a shim that closes the connection: %v (Gone %v, broken %v)", err, Gone(err), broken)
	}
}

// writeInitState writes what libcontainer records of a container's init.
func writeInitState(t *testing.T, dir, id string, pid int, start uint64) {
	t.Helper()
	cdir := filepath.Join(dir, runcDirName, id)
	if err := os.MkdirAll(cdir, 0o700); err != nil {
		t.Fatal(err)
	}
	b := `{"id":"` + id + `","init_process_pid":` + strconv.Itoa(pid) + `,"init_process_start":` + strconv.FormatUint(start, 10) + `}`
	if err := os.WriteFile(filepath.Join(cdir, "state.json"), []byte(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestKillOrphanInitKillsOnlyTheRecordedProcess(t *testing.T) {
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	pid := cmd.Process.Pid
	start, err := procfs.StartTime(pid)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	// Same pid, another start time: a recycled pid, not the init.
	writeInitState(t, dir, "recycled", pid, start+1)
	if killed, err := KillOrphanInit(dir, "recycled"); killed || err != nil {
		t.Fatalf("KillOrphanInit of a recycled pid = %v, %v", killed, err)
	}
	if killed, err := KillOrphanInit(dir, "never-created"); killed || err != nil {
		t.Fatalf("KillOrphanInit without a state = %v, %v", killed, err)
	}
	if _, err := KillOrphanInit(dir, "../x"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("KillOrphanInit of a bad id: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("sleep ended (%v) though its start time did not match", err)
	case <-time.After(100 * time.Millisecond):
	}

	writeInitState(t, dir, "orphan", pid, start)
	if killed, err := KillOrphanInit(dir, "orphan"); !killed || err != nil {
		t.Fatalf("KillOrphanInit = %v, %v; want it killed", killed, err)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("sleep ended with %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sleep still runs")
	}
	if killed, err := KillOrphanInit(dir, "orphan"); killed || err != nil {
		t.Errorf("second KillOrphanInit = %v, %v", killed, err)
	}
}
