package netns

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// startInNewNamespaces starts `sleep` in new net, uts and ipc namespaces.
func startInNewNamespaces(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

func TestPinOutlivesTheProcessAndUnpinIsIdempotent(t *testing.T) {
	cmd := startInNewNamespaces(t)
	dir := filepath.Join(t.TempDir(), "ns")
	pins, err := Pin(cmd.Process.Pid, []Kind{Net, UTS, IPC}, dir)
	if err != nil {
		t.Fatal(err)
	}
	for kind, p := range pins {
		if !IsPinned(p) {
			t.Errorf("%s pin %s is not an nsfs mount", kind, p)
		}
		a, _ := Inode(p)
		b, _ := Inode(fmt.Sprintf("/proc/%d/ns/%s", cmd.Process.Pid, kind))
		if a != b || a == 0 {
			t.Errorf("%s pin inode %d, process has %d", kind, a, b)
		}
	}
	netIno, _ := Inode(pins[Net])
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	// The namespace lives on through the pin, and a thread can enter it.
	var links []string
	var inside uint64
	err = Do(map[Kind]string{Net: pins[Net], UTS: pins[UTS]}, func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		for _, i := range ifs {
			links = append(links, i.Name)
		}
		var st unix.Stat_t
		if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
			return err
		}
		inside = st.Ino
		return unix.Sethostname([]byte("pinned-pod"))
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0] != "lo" || inside != netIno {
		t.Errorf("inside the pinned netns: links %v, inode %d (want only lo, inode %d)", links, inside, netIno)
	}
	host, _ := os.Hostname()
	if host == "pinned-pod" {
		t.Fatalf("Do leaked the UTS namespace into the daemon")
	}
	for i := 0; i < 2; i++ {
		if err := Unpin(dir); err != nil {
			t.Fatalf("unpin #%d: %v", i+1, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("pin dir still exists: %v", err)
	}
}

func TestPinFailureLeavesNothing(t *testing.T) {
	cmd := startInNewNamespaces(t)
	dir := filepath.Join(t.TempDir(), "ns")
	// The process has no new pid namespace of its own, but /proc/<pid>/ns/pid
	// exists; a kind that does not exist at all makes the bind fail.
	_, err := Pin(cmd.Process.Pid, []Kind{Net, Kind("nonexistent")}, dir)
	if err == nil {
		t.Fatal("pinning a nonexistent namespace kind succeeded")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("failed Pin left %s behind", dir)
	}
}

func TestDoRejectsProcessWideNamespaces(t *testing.T) {
	err := Do(map[Kind]string{PID: "/proc/self/ns/pid"}, func() error { return nil })
	if err == nil {
		t.Fatal("Do accepted a pid namespace, which a thread cannot enter")
	}
}
