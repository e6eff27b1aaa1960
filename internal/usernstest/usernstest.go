// Package usernstest runs a package's tests the way rootless peapod runs:
// as uid 0 in a user namespace whose ids map to an unprivileged range of
// the host. Real root creates such a namespace without newuidmap, so the
// tests need root; they re-execute the test binary inside it (Go cannot
// unshare a user namespace in a running, multi-threaded process) and fail
// with the child's output if it fails.
//
// It is for tests only.
package usernstest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// HostID is the host uid and gid that uid and gid 0 of the namespace map
// to; ids 0..Size-1 map to HostID..HostID+Size-1, as /etc/subuid gives a
// rootless user its range.
const (
	HostID = 200000
	Size   = 65536
)

// childEnv marks the re-executed test binary.
const childEnv = "PEAPOD_USERNS_TEST_CHILD"

// InChild reports whether this process is the re-executed child.
func InChild() bool { return os.Getenv(childEnv) != "" }

// RequireChild skips a test that only makes sense inside the namespace
// (the parent test runs it there).
func RequireChild(t testing.TB) {
	t.Helper()
	if !InChild() {
		t.Skip("runs inside a user namespace, started by its parent test")
	}
}

// RequireRoot skips when the test cannot create the namespace.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a user namespace with a mapped range")
	}
	if InChild() {
		t.Skip("already inside the user namespace")
	}
}

// Options of Run.
type Options struct {
	// Net also unshares the network namespace (the daemon's own netns).
	Net bool
	// Env is added to the child's environment.
	Env []string
	// Timeout bounds the child (default 3 minutes).
	Timeout time.Duration
	// Args are extra test flags (e.g. "-test.v").
	Args []string
	// Cgroup2Dir, when set, is a cgroup2 directory the child is born
	// in (CLONE_INTO_CGROUP), as a service with a delegated cgroup is.
	Cgroup2Dir string
}

// Run re-executes the test binary inside a new user + mount (+ network)
// namespace as uid 0 mapped to HostID, running the tests that match the
// regexp run, and fails t with the child's output when it fails. The
// binary is copied where the mapped ids can execute it.
func Run(t testing.TB, run string, o Options) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "peapod-usernstest-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, filepath.Base(exe))
	if err := copyFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * time.Minute
	}
	args := append([]string{"-test.run=" + run, "-test.count=1", "-test.timeout=" + o.Timeout.String()}, o.Args...)
	cmd := exec.Command(bin, args...)
	wd, _ := os.Getwd()
	cmd.Dir = wd
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Env = append(cmd.Env, o.Env...)
	flags := uintptr(unix.CLONE_NEWUSER | unix.CLONE_NEWNS)
	if o.Net {
		flags |= unix.CLONE_NEWNET
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  flags,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: HostID, Size: Size}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: HostID, Size: Size}},
		// As newgidmap leaves it: setgroups allowed (containers with
		// supplementary groups need it).
		GidMappingsEnableSetgroups: true,
		// Become the namespace's root before the exec, so that the
		// test binary keeps its capabilities there.
		Credential: &syscall.Credential{Uid: 0, Gid: 0},
		Setsid:     true,
		Pdeathsig:  syscall.SIGKILL,
	}
	if o.Cgroup2Dir != "" {
		fd, err := unix.Open(o.Cgroup2Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = fd
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the test binary in a user namespace: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(o.Timeout + 30*time.Second):
		_ = cmd.Process.Kill()
		err = <-done
		err = fmt.Errorf("timed out: %v", err)
	}
	if err != nil {
		t.Fatalf("tests %s in a user namespace failed: %v\n%s", run, err, out.String())
	}
	if !strings.Contains(out.String(), "PASS") || strings.Contains(out.String(), "no tests to run") {
		t.Fatalf("tests %s in a user namespace ran nothing:\n%s", run, out.String())
	}
	return out.String()
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// Hierarchies lists the mount points of the cgroup v1 hierarchies with
// their options ("cpu", "name=systemd"); empty on a cgroup v2 host.
func Hierarchies() map[string]string {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil
	}
	defer f.Close()
	out := map[string]string{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		fl := strings.Fields(s.Text())
		if len(fl) >= 4 && fl[2] == "cgroup" {
			out[fl[1]] = fl[3]
		}
	}
	return out
}

// Delegate creates the cgroup v1 subtree cgPath in every hierarchy and
// gives it to the namespace's root (host HostID), the way
// integration/rootless-delegate.sh delegates to a user, except in the
// hierarchies whose mount point ends in one of skip (those stay root's:
// "not delegated"). It removes the subtree, with whatever the test left
// in it, when t ends, and reports leftovers below it as errors first.
// It skips t on a cgroup v2 host.
func Delegate(t testing.TB, cgPath string, skip ...string) {
	t.Helper()
	h := Hierarchies()
	if len(h) == 0 {
		t.Skip("no cgroup v1 hierarchy mounted (cgroup v2 host)")
	}
	for mnt, opts := range h {
		dir := filepath.Join(mnt, cgPath)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(strings.Split(opts, ","), "cpuset") {
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				b, err := os.ReadFile(filepath.Join(mnt, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		if slices.Contains(skip, filepath.Base(mnt)) {
			continue
		}
		err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				err = os.Lchown(p, HostID, HostID)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for mnt := range h {
			dir := filepath.Join(mnt, cgPath)
			var dirs []string
			_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				if dirs[i] != dir {
					t.Errorf("leaked cgroup %s", dirs[i])
				}
				killAll(dirs[i])
				for try := 0; try < 100; try++ {
					if err := unix.Rmdir(dirs[i]); err == nil || err == unix.ENOENT {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		}
	})
}

func killAll(dir string) {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, f := range strings.Fields(string(b)) {
		var pid int
		if _, err := fmt.Sscan(f, &pid); err == nil && pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// DelegateV2 creates the cgroup2 directory cgPath under the cgroup2 mount
// mnt and delegates it to the namespace's root the way the kernel
// documents it (the directory, cgroup.procs, cgroup.threads and
// cgroup.subtree_control change owner). It returns the directory and
// removes it, with whatever the test left in it, when t ends.
func DelegateV2(t testing.TB, mnt, cgPath string) string {
	t.Helper()
	dir := filepath.Join(mnt, cgPath)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"} {
		if err := os.Lchown(filepath.Join(dir, f), HostID, HostID); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		var dirs []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			_ = os.WriteFile(filepath.Join(dirs[i], "cgroup.kill"), []byte("1"), 0)
			for try := 0; try < 100; try++ {
				if err := unix.Rmdir(dirs[i]); err == nil || err == unix.ENOENT {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if _, err := os.Stat(dirs[i]); err == nil {
				t.Errorf("cannot remove cgroup %s", dirs[i])
			}
		}
	})
	return dir
}
