package shim

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/userns"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"peapod/internal/usernstest"
)

// peapodBin is the real binary the shim runs as, built once by TestMain:
// the lean peapod-shim that peapod embeds and runs, or with
// PEAPOD_SHIMTEST_WHOLE=1 the whole peapod (`peapod shim`, its fallback).
// lcBin is its helper, peapod-lc, or "" with the whole peapod (which runs
// itself as `peapod shim lc`).
var peapodBin, lcBin string

// rootfs is a busybox root filesystem shared (read-only use) by the tests.
var rootfs string

// cgroupParent is where pods put their cgroups: the hierarchies' roots,
// or in a user namespace a subtree delegated to its root.
var cgroupParent string

func TestMain(m *testing.M) {
	if os.Getenv(fakeDaemonEnv) != "" {
		runFakeDaemon()
		return
	}
	if os.Getenv(reaperTestEnv) != "" {
		reaperScenario()
		return
	}
	if usernstest.InChild() {
		// Re-executed in a user namespace by TestInUserNamespace: the
		// parent built the binary and the rootfs.
		peapodBin, rootfs = os.Getenv(usernsBinEnv), os.Getenv(usernsRootfsEnv)
		lcBin = os.Getenv(usernsLCEnv)
		cgroupParent = os.Getenv(usernsCgroupEnv)
		os.Exit(m.Run())
	}
	if os.Geteuid() != 0 {
		fmt.Println("shim tests need root; skipping")
		os.Exit(0)
	}
	tmp, err := os.MkdirTemp("", "peapod-shimtest-")
	if err != nil {
		panic(err)
	}
	// The binary and the rootfs serve TestInUserNamespace's mapped ids too.
	if err := os.Chmod(tmp, 0o755); err != nil {
		panic(err)
	}
	code := func() int {
		defer os.RemoveAll(tmp)
		if os.Getenv("PEAPOD_SHIMTEST_WHOLE") != "" {
			peapodBin = filepath.Join(tmp, "peapod")
			if err := buildPeapod(peapodBin, "./cmd/peapod", true); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		} else {
			peapodBin, lcBin = filepath.Join(tmp, "peapod-shim"), filepath.Join(tmp, "peapod-lc")
			// As the Makefile builds them: the resident without cgo.
			if err := buildPeapod(peapodBin, "./shim/peapod-shim", false); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			if err := buildPeapod(lcBin, "./shim/peapod-lc", true); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
		}
		rootfs = filepath.Join(tmp, "rootfs")
		if err := makeBusyboxRootfs(rootfs); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// buildPeapod builds pkg (shim/peapod-shim, shim/peapod-lc or cmd/peapod,
// see peapodBin) into out, with cgo or without. Other packages of the
// module change under our feet; a transient compile failure is retried for
// a while.
func buildPeapod(out, pkg string, cgo bool) error {
	var last []byte
	for attempt := range 4 {
		if attempt > 0 {
			time.Sleep(30 * time.Second)
		}
		args := []string{"build", "-o", out}
		if cgo && exec.Command("pkg-config", "--exists", "libseccomp").Run() == nil {
			args = append(args, "-tags", "seccomp") // as the Makefile does
		}
		if os.Getenv("PEAPOD_SHIMTEST_RACE") != "" {
			args = append(args, "-race") // the shim itself under the race detector
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if cgo {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		}
		b, err := cmd.CombinedOutput()
		if err == nil {
			return nil
		}
		last = b
	}
	return fmt.Errorf("build %s: %s", pkg, last)
}

func makeBusyboxRootfs(dir string) error {
	for _, d := range []string{"bin", "etc", "proc", "sys", "dev", "tmp", "www", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	b, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		return fmt.Errorf("need Debian's busybox-static: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin/busybox"), b, 0o755); err != nil {
		return err
	}
	for _, applet := range []string{"sh", "echo", "sleep", "cat", "dd", "head", "tr", "printf",
		"true", "false", "ls", "wc", "yes", "kill", "id", "hostname", "httpd", "wget", "seq",
		"ps", "env", "pwd", "touch", "tail", "tty", "stat", "grep"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "www/index.html"), []byte("hello from a\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "etc/group"), []byte("root:x:0:\n"), 0o644)
}

// pod is a pod-like setup: a holder process with new net, ipc, uts and pid
// namespaces pinned by bind mounts, a pod cgroup path, and a running shim.
type pod struct {
	t        *testing.T
	dir      string // test temp dir
	shimDir  string
	cgroup   string // e.g. /peapod-shimtest-1a2b3c4d
	holder   *exec.Cmd
	pins     map[string]string // kind → pin file
	client   *Client
	logDir   string
	shutdown bool
}

func newPod(t *testing.T) *pod {
	t.Helper()
	p := &pod{t: t, dir: t.TempDir(), pins: map[string]string{}}
	p.shimDir = filepath.Join(p.dir, "shim")
	p.logDir = filepath.Join(p.dir, "logs")
	p.cgroup = cgroupParent + "/peapod-shimtest-" + randHex(4)

	holder := exec.Command("/usr/bin/busybox", "sh", "-c",
		"/usr/bin/busybox ip link set lo up && exec /usr/bin/busybox sleep 1000000")
	holder.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWPID,
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	p.holder = holder
	t.Cleanup(p.cleanup)
	// Wait until lo is up (the holder has exec'd sleep).
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", holder.Process.Pid))
		if strings.Contains(string(b), "sleep") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("holder did not start")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := os.MkdirAll(filepath.Join(p.dir, "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"net", "ipc", "uts", "pid"} {
		pin := filepath.Join(p.dir, "ns", kind)
		if err := os.WriteFile(pin, nil, 0o444); err != nil {
			t.Fatal(err)
		}
		src := fmt.Sprintf("/proc/%d/ns/%s", holder.Process.Pid, kind)
		if err := unix.Mount(src, pin, "", unix.MS_BIND, ""); err != nil {
			t.Fatalf("pin %s: %v", kind, err)
		}
		p.pins[kind] = pin
	}
	c, err := Start(context.Background(), StartOptions{Binary: peapodBin, Helper: lcBin, Dir: p.shimDir, PodCgroup: p.cgroup})
	if err != nil {
		t.Fatal(err)
	}
	p.client = c
	return p
}

// spec is a container of the pod: it joins net, ipc and uts, and gets its
// own pid namespace unless sharePID.
func (p *pod) spec(id string, sharePID bool, args ...string) ContainerSpec {
	ns := []Namespace{
		{Type: specs.NetworkNamespace, Path: p.pins["net"]},
		{Type: specs.IPCNamespace, Path: p.pins["ipc"]},
		{Type: specs.UTSNamespace, Path: p.pins["uts"]},
		{Type: specs.PIDNamespace},
	}
	if sharePID {
		ns[3].Path = p.pins["pid"]
	}
	return ContainerSpec{
		ID:         id,
		Rootfs:     rootfs,
		Args:       args,
		Env:        []string{"PATH=/bin"},
		Namespaces: ns,
		LogPath:    filepath.Join(p.logDir, id+".log"),
		// The shared rootfs stays clean.
		ReadonlyRootfs: true,
		Mounts:         []Mount{{Source: p.dataDir(), Destination: "/data"}},
	}
}

func (p *pod) dataDir() string {
	d := filepath.Join(p.dir, "data")
	_ = os.MkdirAll(d, 0o777)
	return d
}

// run creates and starts a container.
func (p *pod) run(spec ContainerSpec) {
	p.t.Helper()
	ctx := context.Background()
	if err := p.client.CreateContainer(ctx, spec); err != nil {
		p.t.Fatalf("create %s: %v", spec.ID, err)
	}
	st, err := p.client.StartContainer(ctx, spec.ID)
	if err != nil {
		p.t.Fatalf("start %s: %v", spec.ID, err)
	}
	// Start answers with the state it left: running (or, for a quick
	// command, exited already), with its start time.
	if st == nil || st.ID != spec.ID || st.StartedAt.IsZero() || (st.Status != StatusRunning && st.Status != StatusExited) {
		p.t.Fatalf("start %s answered state %+v", spec.ID, st)
	}
}

func (p *pod) wait(id string) ContainerState {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := p.client.Wait(ctx, id)
	if err != nil {
		p.t.Fatalf("wait %s: %v", id, err)
	}
	return st
}

func (p *pod) cleanup() {
	if p.client != nil && !p.shutdown {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := p.client.Shutdown(ctx); err != nil {
			p.t.Errorf("shutdown: %v", err)
		}
		cancel()
	}
	if p.holder != nil {
		_ = p.holder.Process.Kill()
		_ = p.holder.Wait()
	}
	for _, pin := range p.pins {
		_ = unix.Unmount(pin, unix.MNT_DETACH)
	}
	for _, dir := range cgroupDirs(p.cgroup) {
		_ = unix.Rmdir(dir)
	}
}

// cgroupDirs is path in every mounted cgroup hierarchy.
func cgroupDirs(path string) []string {
	var out []string
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
				out = append(out, filepath.Join(fields[4], path))
			}
		}
	}
	return out
}

// readLog returns the records of a CRI log file.
func readLog(t *testing.T, path string) []logRecord {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []logRecord
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line == "" {
			continue
		}
		if !strings.HasSuffix(line, "\n") {
			t.Fatalf("log %s: record without newline: %q", path, line)
		}
		parts := strings.SplitN(strings.TrimSuffix(line, "\n"), " ", 4)
		if len(parts) != 4 {
			t.Fatalf("log %s: bad record %q", path, line)
		}
		ts, err := time.Parse(time.RFC3339Nano, parts[0])
		if err != nil {
			t.Fatalf("log %s: timestamp of %q: %v", path, line, err)
		}
		out = append(out, logRecord{ts, parts[1], parts[2], parts[3]})
	}
	return out
}

type logRecord struct {
	ts      time.Time
	stream  string
	tag     string
	content string
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// memoryKiB describes a process's memory: VmRSS, its anonymous part, and
// PSS (file pages of the peapod binary are shared by every shim and the
// daemon, so PSS is what a pod costs).
func memoryKiB(pid int) string {
	field := func(file, name string) string {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/" + file)
		if err != nil {
			return "?"
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, name+":"); ok {
				return strings.TrimSuffix(strings.TrimSpace(v), " kB")
			}
		}
		return "?"
	}
	return fmt.Sprintf("VmRSS %s KiB (RssAnon %s KiB), Pss %s KiB",
		field("status", "VmRSS"), field("status", "RssAnon"), field("smaps_rollup", "Pss"))
}

// inUserNS reports whether the test runs in a user namespace (rootless),
// as package shim/lc decides it.
var inUserNS = userns.RunningInUserNS

// hasCapSysResource reports whether this process holds CAP_SYS_RESOURCE,
// as the helper checks before it lowers a container's oom_score_adj.
func hasCapSysResource() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_RESOURCE/32].Effective&(1<<(unix.CAP_SYS_RESOURCE%32)) != 0
}
