package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// pauseBin is the pause built the way the Makefile builds it, once per run.
var pauseBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "pause-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pauseBin = filepath.Join(dir, "pause")
	build := exec.Command(goTool(), "build", "-trimpath", "-ldflags", "-s -w", "-o", pauseBin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build pause: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

type pauseProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // valid once exited is closed
}

// startPause runs the pause, in a new PID namespace when newPID, and waits
// until its signal handlers are installed.
func startPause(t *testing.T, newPID bool, extra ...*os.File) *pauseProc {
	t.Helper()
	if os.Geteuid() != 0 && newPID {
		t.Skip("needs root for CLONE_NEWPID")
	}
	cmd := exec.Command(pauseBin)
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if newPID {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pause: %v", err)
	}
	p := &pauseProc{cmd: cmd, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.exited
	})
	waitReady(t, p)
	return p
}

// waitReady polls SigIgn: the pause ignores its fatal-by-default signals
// right after hooking SIGTERM/SIGINT/SIGCHLD, so a full mask means a
// SIGTERM sent now is handled rather than killing the runtime half-started.
func waitReady(t *testing.T, p *pauseProc) {
	t.Helper()
	var want uint64
	for _, s := range fatalByDefault {
		want |= 1 << (uint(s) - 1)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			t.Fatalf("pause exited before it was ready: %v", p.err)
		default:
		}
		if v, ok := statusField(p.cmd.Process.Pid, "SigIgn"); ok {
			mask, _ := strconv.ParseUint(v, 16, 64)
			if mask&want == want {
				return
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("pause did not become ready within 5s")
}

func statusField(pid int, key string) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

func (p *pauseProc) waitExit(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(within):
		t.Fatalf("pause still running %v after the signal", within)
	}
	var ee *exec.ExitError
	if p.err == nil {
		return 0
	}
	if errors.As(p.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			t.Fatalf("pause died by signal %v, want a clean exit", ws.Signal())
		}
		return ee.ExitCode()
	}
	t.Fatalf("wait pause: %v", p.err)
	return -1
}

func (p *pauseProc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func TestPauseIsPID1OfNewPIDNamespace(t *testing.T) {
	p := startPause(t, true)
	nspid, _ := statusField(p.cmd.Process.Pid, "NSpid")
	f := strings.Fields(nspid)
	if len(f) < 2 || f[len(f)-1] != "1" {
		t.Fatalf("NSpid = %q, want the pause to be PID 1 of its namespace", nspid)
	}
	st, err := os.Stat(pauseBin)
	if err != nil {
		t.Fatal(err)
	}
	rss, _ := statusField(p.cmd.Process.Pid, "VmRSS")
	t.Logf("pause binary %d bytes (%.2f MiB), VmRSS %s", st.Size(), float64(st.Size())/(1<<20), rss)
}

func TestPauseExitsZeroOnSIGTERM(t *testing.T) {
	p := startPause(t, true)
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, time.Second); code != 0 {
		t.Fatalf("exit code %d on SIGTERM, want 0", code)
	}
	t.Logf("exited %v after SIGTERM", time.Since(start))
}

func TestPauseExitsZeroOnSIGINT(t *testing.T) {
	p := startPause(t, true)
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, time.Second); code != 0 {
		t.Fatalf("exit code %d on SIGINT, want 0", code)
	}
}

func TestPauseNotPID1ExitsZeroOnSIGTERM(t *testing.T) {
	p := startPause(t, false)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, time.Second); code != 0 {
		t.Fatalf("exit code %d on SIGTERM, want 0", code)
	}
}

// runInPIDNamespace runs a command as a member of pid's PID namespace. The
// forking thread joins the namespace with setns (it then only affects that
// thread's future children) and is thrown away afterwards, so the test
// process itself never changes namespace. The command's parent is the test,
// but whatever it leaves running is re-parented to the namespace's init.
func runInPIDNamespace(t *testing.T, pid int, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread dies with this goroutine
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/pid", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWPID); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- cmd.Start()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("start %s in pid namespace of %d: %v", name, pid, err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
}

// childrenOf scans /proc for processes whose parent is ppid; zombies are
// reported separately.
func childrenOf(ppid int) (live, zombies []int) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(ppid) {
			continue
		}
		if f[0] == "Z" {
			zombies = append(zombies, pid)
		} else {
			live = append(live, pid)
		}
	}
	return live, zombies
}

func TestPauseReapsOrphansInItsPIDNamespace(t *testing.T) {
	p := startPause(t, true)
	pid := p.cmd.Process.Pid
	const orphans = 8
	// The shell backgrounds the sleeps and exits at once: they are orphaned
	// inside the pod's PID namespace and must be adopted by the pause.
	runInPIDNamespace(t, pid, "sh", "-c", fmt.Sprintf(
		"i=0; while [ $i -lt %d ]; do sleep 0.3 & i=$((i+1)); done; exit 0", orphans))

	live, zombies := childrenOf(pid)
	if len(live)+len(zombies) != orphans {
		t.Fatalf("pause has %d children (%v, zombies %v) right after the shell exited, want %d adopted sleeps",
			len(live)+len(zombies), live, zombies, orphans)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		live, zombies = childrenOf(pid)
		if len(live) == 0 && len(zombies) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("children of pause 5s later: live %v, zombies %v; want all reaped", live, zombies)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !p.alive() {
		t.Fatal("pause exited while reaping")
	}
}

func TestPauseAsPID1SurvivesFatalByDefaultSignalsFromInside(t *testing.T) {
	p := startPause(t, true)
	runInPIDNamespace(t, p.cmd.Process.Pid, "sh", "-c",
		"kill -HUP 1; kill -QUIT 1; kill -USR1 1; kill -PIPE 1; kill -ALRM 1; kill -ABRT 1")
	time.Sleep(100 * time.Millisecond)
	if !p.alive() {
		t.Fatalf("pause died from a signal sent inside its namespace: %v", p.err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, time.Second); code != 0 {
		t.Fatalf("exit code %d on SIGTERM, want 0", code)
	}
}

func TestPauseWaitsForReleaseAndRuns(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p := startPause(t, true, r)
	r.Close()
	if _, err := w.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	w.Close() // after the release, EOF must no longer matter
	time.Sleep(100 * time.Millisecond)
	if !p.alive() {
		t.Fatalf("released pause exited: %v", p.err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, time.Second); code != 0 {
		t.Fatalf("exit code %d on SIGTERM, want 0", code)
	}
}

func TestPauseExitsWhenReleasePipeIsClosedUnreleased(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := startPause(t, true, r)
	r.Close()
	w.Close()
	if code := p.waitExit(t, time.Second); code != 1 {
		t.Fatalf("exit code %d when the runtime vanished before release, want 1", code)
	}
}

func TestPauseVersion(t *testing.T) {
	out, err := exec.Command(pauseBin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "pause (peapod) ") {
		t.Fatalf("--version printed %q", out)
	}
}

func TestPauseExitsZeroOnSIGTERMBeforeRelease(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	p := startPause(t, true, r)
	r.Close()
	// The pause is blocked in its read of the release pipe now.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, time.Second); code != 0 {
		t.Fatalf("exit code %d on SIGTERM while waiting for release, want 0", code)
	}
}

// pauseEnv is the environment sandbox/pause_linux.go (startPauseCmd) gives
// the pause; keep the two in step.
var pauseEnv = []string{"GOMAXPROCS=1", "GODEBUG=disablethp=1"}

// Footprint bounds for a released pause started the way peapod starts it.
// Measured on linux/amd64, Go 1.26, over many runs: 3 threads (sometimes 4,
// from a scheduler handoff at startup) and Pss_Anon 400-424 KiB. Before the
// pause dropped os/signal and its release goroutine it had 6-7 threads and
// Pss_Anon 532-556 KiB with GOMAXPROCS=1 (644-712 KiB without).
const (
	maxPauseThreads         = 4
	maxPortablePauseThreads = 7
	maxPausePssAnonKiB      = 480
)

// TestPauseFootprint fails if the pause grows back: it starts the pause in
// new net/uts/ipc/pid namespaces with a release pipe on fd 3 and peapod's
// environment, releases it, lets it settle and reads its thread count and
// proportional anonymous memory. The median over several runs is checked so
// that one run's scheduling luck does not decide.
func TestPauseFootprint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for the pod namespaces")
	}
	const runs = 7
	var threads, anon, pss []int
	for range runs {
		th, an, ps := measureReleasedPause(t)
		threads = append(threads, th)
		anon = append(anon, an)
		pss = append(pss, ps)
	}
	t.Logf("threads %v, Pss_Anon KiB %v, Pss KiB %v", threads, anon, pss)
	maxThreads := maxPauseThreads
	if goruntime.GOARCH != "amd64" && goruntime.GOARCH != "arm64" {
		// signals_portable.go: os/signal keeps its threads (386 measured 6-7).
		maxThreads = maxPortablePauseThreads
	}
	if m := median(threads); m > maxThreads {
		t.Errorf("median thread count %d, want <= %d", m, maxThreads)
	}
	if m := median(anon); m > maxPausePssAnonKiB {
		t.Errorf("median Pss_Anon %d KiB, want <= %d KiB", m, maxPausePssAnonKiB)
	}
}

func measureReleasedPause(t *testing.T) (threads, pssAnon, pss int) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd := exec.Command(pauseBin)
	cmd.Env = pauseEnv
	cmd.ExtraFiles = []*os.File{r}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Cloneflags: syscall.CLONE_NEWNET | syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWPID,
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pause: %v", err)
	}
	r.Close()
	p := &pauseProc{cmd: cmd, exited: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-p.exited
	}()
	waitReady(t, p)
	if _, err := w.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	time.Sleep(300 * time.Millisecond)
	if !p.alive() {
		t.Fatalf("released pause exited: %v", p.err)
	}
	pid := cmd.Process.Pid
	v, _ := statusField(pid, "Threads")
	threads, err = strconv.Atoi(v)
	if err != nil {
		t.Fatalf("Threads %q: %v", v, err)
	}
	pssAnon = smapsRollupKiB(t, pid, "Pss_Anon")
	pss = smapsRollupKiB(t, pid, "Pss")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.waitExit(t, time.Second); code != 0 {
		t.Fatalf("exit code %d on SIGTERM, want 0", code)
	}
	return threads, pssAnon, pss
}

func smapsRollupKiB(t *testing.T, pid int, key string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			f := strings.Fields(v)
			if len(f) == 2 && f[1] == "kB" {
				if n, err := strconv.Atoi(f[0]); err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no %s in smaps_rollup of %d", key, pid)
	return 0
}

func median(v []int) int {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
