package cgroups

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	libcgroups "github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// newSandboxID makes an id shaped like peapod's (64 hex digits).
func newSandboxID() string { return randHex(32) }

// mountedHierarchies lists the mount points of every cgroup hierarchy, read
// from mountinfo independently of the code under test: the oracle for "a
// directory appears in every hierarchy".
func mountedHierarchies(t *testing.T) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mnts []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// "... mountpoint opts - fstype source superopts"
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fstype := strings.Fields(post)[0]
		if fstype == "cgroup" || fstype == "cgroup2" {
			mnts = append(mnts, strings.Fields(pre)[4])
		}
	}
	if len(mnts) == 0 {
		t.Skip("no cgroup hierarchy mounted")
	}
	slices.Sort(mnts)
	return mnts
}

// testDefaultParent returns a fresh /peapod-cgtest-<rand> and removes it, in
// every hierarchy under mnts, when the test ends.
func testDefaultParent(t *testing.T, mnts []string) string {
	t.Helper()
	parent := "/peapod-cgtest-" + randHex(4)
	t.Cleanup(func() { removeAllCgroups(t, mnts, parent) })
	return parent
}

// newTestPodCgroup creates a pod cgroup and its pause cgroup under a
// fresh test parent (testDefaultParent, whose cleanup removes them).
func newTestPodCgroup(t *testing.T, mnts []string) PodCgroup {
	t.Helper()
	p, err := CreatePodCgroup("", testDefaultParent(t, mnts), newSandboxID())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// removeAllCgroups deletes cgPath and its descendants in every hierarchy,
// killing stragglers, without using the code under test.
func removeAllCgroups(t *testing.T, mnts []string, cgPath string) {
	for _, mnt := range mnts {
		top := filepath.Join(mnt, cgPath)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if b, err := os.ReadFile(filepath.Join(dirs[i], "cgroup.procs")); err == nil {
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			for try := 0; try < 50; try++ {
				if err := unix.Rmdir(dirs[i]); err == nil || errors.Is(err, unix.ENOENT) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if exists(dirs[i]) {
				t.Errorf("cleanup: cannot remove %s", dirs[i])
			}
		}
	}
}

// mkdirEverywhere creates cgPath in every hierarchy, the way a kubelet
// prepares a pod cgroup before RunPodSandbox.
func mkdirEverywhere(t *testing.T, mnts []string, cgPath string) {
	t.Helper()
	for _, mnt := range mnts {
		if err := os.MkdirAll(filepath.Join(mnt, cgPath), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func assertDirs(t *testing.T, mnts []string, cgPath string, want bool) {
	t.Helper()
	for _, mnt := range mnts {
		if got := exists(filepath.Join(mnt, cgPath)); got != want {
			t.Errorf("%s exists=%v, want %v", filepath.Join(mnt, cgPath), got, want)
		}
	}
}

type sleeper struct {
	cmd  *exec.Cmd
	done chan error
}

// startSleeper starts a long sleep that the test reaps; attr may place it
// into a cgroup at birth.
func startSleeper(t *testing.T, attr *syscall.SysProcAttr) *sleeper {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	s := &sleeper{cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait() }()
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	return s
}

func (s *sleeper) assertKilled(t *testing.T) {
	t.Helper()
	select {
	case err := <-s.done:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Errorf("sleep ended with %v, want SIGKILL", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("sleep still running after Remove")
	}
}

// procCgroups returns the lines of /proc/<pid>/cgroup.
func procCgroups(t *testing.T, pid int) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// setLibraryTestMode lets github.com/opencontainers/cgroups read and write
// plain files (it refuses files outside cgroupfs otherwise).
func setLibraryTestMode(t *testing.T) {
	old := libcgroups.TestMode
	libcgroups.TestMode = true
	t.Cleanup(func() { libcgroups.TestMode = old })
}
