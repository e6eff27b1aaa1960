package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"peapod/internal/procfs"
)

func TestContainerOutputIsLoggedInCRIFormat(t *testing.T) {
	p := newPod(t)
	spec := p.spec("echo", false, "sh", "-c", "echo hello; echo oops >&2; printf 'no newline'")
	start := time.Now()
	p.run(spec)
	st := p.wait("echo")
	t.Logf("create+start+exit of a busybox echo: %v", time.Since(start))
	if st.Status != StatusExited || st.ExitCode != 0 || st.OOMKilled {
		t.Fatalf("state = %+v, want exited 0", st)
	}
	if st.StartedAt.IsZero() || st.FinishedAt.Before(st.StartedAt) || st.StartedAt.Before(st.CreatedAt) {
		t.Errorf("timestamps out of order: %+v", st)
	}
	recs := readLog(t, spec.LogPath)
	got := map[string]string{}
	for _, r := range recs {
		got[r.stream+" "+r.tag+" "+r.content] = ""
		if r.ts.Before(start.Add(-time.Second)) || r.ts.After(time.Now()) {
			t.Errorf("record time %v out of range", r.ts)
		}
	}
	for _, want := range []string{"stdout F hello", "stderr F oops", "stdout F no newline"} {
		if _, ok := got[want]; !ok {
			t.Errorf("log lacks %q; records: %+v", want, recs)
		}
	}
	if len(recs) != 3 {
		t.Errorf("got %d records, want 3: %+v", len(recs), recs)
	}
	// The exit is on disk too, for a daemon whose shim is gone.
	disk, err := ReadState(p.shimDir, "echo")
	if err != nil || disk.Status != StatusExited || disk.ExitCode != 0 || !disk.FinishedAt.Equal(st.FinishedAt) {
		t.Errorf("ReadState = %+v, %v; want %+v", disk, err, st)
	}
}

func TestExitCodes(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	p.run(p.spec("three", false, "sh", "-c", "exit 3"))
	p.run(p.spec("killed", false, "sleep", "1000"))
	p.run(p.spec("stubborn", false, "sh", "-c", "trap '' TERM; echo ready > /data/stubborn; while true; do sleep 0.05; done"))

	if st := p.wait("three"); st.ExitCode != 3 || st.Signal != 0 {
		t.Errorf("exit 3: state %+v", st)
	}

	if st, _ := p.client.State(ctx, "killed"); st.Status != StatusRunning || st.Pid <= 0 {
		t.Fatalf("sleep: state %+v, want running", st)
	}
	if err := p.client.Signal(ctx, "killed", syscall.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	if st := p.wait("killed"); st.ExitCode != 137 || st.Signal != syscall.SIGKILL || st.OOMKilled {
		t.Errorf("SIGKILL: state %+v, want 137", st)
	}
	// Signalling an exited container is no error.
	if err := p.client.Signal(ctx, "killed", syscall.SIGTERM, true); err != nil {
		t.Errorf("signal exited container: %v", err)
	}

	waitFile(t, filepath.Join(p.dataDir(), "stubborn"))
	begin := time.Now()
	st, err := p.client.Stop(ctx, "stubborn", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(begin)
	if st.Status != StatusExited || st.ExitCode != 137 {
		t.Errorf("stop of a SIGTERM-ignoring container: %+v, want exited 137", st)
	}
	if took < 300*time.Millisecond || took > 5*time.Second {
		t.Errorf("stop took %v, want the 300ms grace then a kill", took)
	}
	// Stopping again returns the same exit at once.
	if st2, err := p.client.Stop(ctx, "stubborn", time.Second); err != nil || st2.ExitCode != 137 {
		t.Errorf("second stop: %+v, %v", st2, err)
	}
}

func TestLongLineIsSplitIntoPartialRecords(t *testing.T) {
	p := newPod(t)
	// A 40 KiB line of x, then a short one.
	spec := p.spec("long", false, "sh", "-c", "head -c 40960 /dev/zero | tr '\\0' x; echo; echo short")
	p.run(spec)
	if st := p.wait("long"); st.ExitCode != 0 {
		t.Fatalf("state %+v", st)
	}
	recs := readLog(t, spec.LogPath)
	var tags []string
	var line strings.Builder
	for _, r := range recs {
		tags = append(tags, fmt.Sprintf("%s%d", r.tag, len(r.content)))
		line.WriteString(r.content)
		if r.tag == "F" {
			break
		}
	}
	want := []string{"P16384", "P16384", "F8192"}
	if fmt.Sprint(tags) != fmt.Sprint(want) {
		t.Errorf("records of the long line: %v, want %v", tags, want)
	}
	if line.String() != strings.Repeat("x", 40960) {
		t.Errorf("reassembled line is wrong (%d bytes)", line.Len())
	}
	if last := recs[len(recs)-1]; last.tag != "F" || last.content != "short" {
		t.Errorf("last record %+v", last)
	}
}

func TestReopenLogAfterRotation(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	spec := p.spec("ticker", false, "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.02; done")
	p.run(spec)
	waitFor(t, func() bool { return len(readLog(t, spec.LogPath)) >= 3 })

	rotated := spec.LogPath + ".1"
	if err := os.Rename(spec.LogPath, rotated); err != nil {
		t.Fatal(err)
	}
	if err := p.client.ReopenLog(ctx, "ticker"); err != nil {
		t.Fatal(err)
	}
	old := readLog(t, rotated)
	waitFor(t, func() bool {
		_, err := os.Stat(spec.LogPath)
		return err == nil && len(readLog(t, spec.LogPath)) >= 3
	})
	time.Sleep(100 * time.Millisecond)
	if n := len(readLog(t, rotated)); n != len(old) {
		t.Errorf("rotated file grew from %d to %d records after reopen", len(old), n)
	}
	fresh := readLog(t, spec.LogPath)
	if !strings.HasPrefix(fresh[0].content, "tick ") || fresh[0].ts.Before(old[len(old)-1].ts) {
		t.Errorf("new file starts with %+v after %+v", fresh[0], old[len(old)-1])
	}
	if err := p.client.Delete(ctx, "ticker"); err != nil {
		t.Fatal(err)
	}
}

func TestExec(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	p.run(p.spec("box", false, "sleep", "1000"))

	var stdout, stderr bytes.Buffer
	start := time.Now()
	code, err := p.client.Exec(ctx, "box", ExecSpec{
		Args:   []string{"sh", "-c", "echo out $FOO; echo err >&2; exit 5"},
		Env:    []string{"FOO=bar"},
		Stdout: &stdout, Stderr: &stderr,
	})
	t.Logf("exec round trip: %v", time.Since(start))
	if err != nil || code != 5 || stdout.String() != "out bar\n" || stderr.String() != "err\n" {
		t.Errorf("exec = %d, %v, stdout %q, stderr %q; want 5, out bar, err", code, err, stdout.String(), stderr.String())
	}

	// Stdin reaches the process and its EOF ends it.
	stdout.Reset()
	code, err = p.client.Exec(ctx, "box", ExecSpec{
		Args:   []string{"cat"},
		Stdin:  strings.NewReader("through stdin\n"),
		Stdout: &stdout,
	})
	if err != nil || code != 0 || stdout.String() != "through stdin\n" {
		t.Errorf("exec cat = %d, %v, %q", code, err, stdout.String())
	}

	// A terminal.
	stdout.Reset()
	code, err = p.client.Exec(ctx, "box", ExecSpec{Args: []string{"tty"}, Tty: true, Stdout: &stdout})
	if err != nil || code != 0 || !strings.HasPrefix(stdout.String(), "/dev/pts/") {
		t.Errorf("exec tty = %d, %v, %q", code, err, stdout.String())
	}

	// The timeout kills.
	start = time.Now()
	_, err = p.client.Exec(ctx, "box", ExecSpec{Args: []string{"sleep", "30"}, Timeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrExecTimeout) || time.Since(start) > 5*time.Second {
		t.Errorf("exec past its timeout: %v after %v", err, time.Since(start))
	}

	// The process runs in the container: same pid namespace as its init.
	stdout.Reset()
	if _, err := p.client.Exec(ctx, "box", ExecSpec{Args: []string{"cat", "/proc/1/cmdline"}, Stdout: &stdout}); err != nil || !strings.HasPrefix(stdout.String(), "sleep") {
		t.Errorf("exec sees pid 1 = %q, %v", stdout.String(), err)
	}

	if _, err := p.client.Exec(ctx, "nope", ExecSpec{Args: []string{"true"}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("exec in unknown container: %v", err)
	}
	if err := p.client.Signal(ctx, "box", syscall.SIGKILL, true); err != nil {
		t.Fatal(err)
	}
	p.wait("box")
	if _, err := p.client.Exec(ctx, "box", ExecSpec{Args: []string{"true"}}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("exec in exited container: %v", err)
	}
}

func TestTtyContainerLogsAsStdout(t *testing.T) {
	p := newPod(t)
	spec := p.spec("tty", false, "sh", "-c", "tty; echo to-stderr >&2")
	spec.Tty = true
	p.run(spec)
	if st := p.wait("tty"); st.ExitCode != 0 {
		t.Fatalf("state %+v", st)
	}
	recs := readLog(t, spec.LogPath)
	if len(recs) != 2 || !strings.HasPrefix(recs[0].content, "/dev/pts/") || recs[1].content != "to-stderr" {
		t.Fatalf("records %+v", recs)
	}
	for _, r := range recs {
		if r.stream != "stdout" || r.tag != "F" {
			t.Errorf("record %+v: a terminal logs full stdout lines", r)
		}
	}
}

func TestContainersShareNetworkAndPID(t *testing.T) {
	p := newPod(t)
	server := p.spec("server", true, "httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www")
	p.run(server)
	client := p.spec("client", true, "sh", "-c",
		"for i in $(seq 100); do wget -q -O - http://127.0.0.1:8080/ && ps && exit 0; sleep 0.05; done; exit 1")
	p.run(client)
	if st := p.wait("client"); st.ExitCode != 0 {
		t.Fatalf("client could not reach the server over localhost: %+v\n%+v", st, readLog(t, client.LogPath))
	}
	var out strings.Builder
	for _, r := range readLog(t, client.LogPath) {
		out.WriteString(r.content + "\n")
	}
	if !strings.Contains(out.String(), "hello from a") {
		t.Errorf("client output lacks the page: %s", out.String())
	}
	// Sharing the pod's PID namespace, the client sees the server.
	if !strings.Contains(out.String(), "httpd") {
		t.Errorf("client's ps does not show the server's httpd: %s", out.String())
	}
}

func TestOOMKillIsReported(t *testing.T) {
	p := newPod(t)
	spec := p.spec("hog", false, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
	limit := int64(32 << 20)
	spec.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	p.run(spec)
	st := p.wait("hog")
	if !st.OOMKilled || st.ExitCode != 137 {
		t.Fatalf("state %+v, want OOM killed with 137", st)
	}
	if disk, err := ReadState(p.shimDir, "hog"); err != nil || !disk.OOMKilled {
		t.Errorf("exit.json: %+v, %v", disk, err)
	}
	// A container under its limit is not OOM killed.
	ok := p.spec("fits", false, "dd", "if=/dev/zero", "of=/dev/null", "bs=4M", "count=1")
	ok.Resources = spec.Resources
	p.run(ok)
	if st := p.wait("fits"); st.OOMKilled || st.ExitCode != 0 {
		t.Errorf("state %+v, want a clean exit", st)
	}
}

func TestDeleteIsIdempotent(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	p.run(p.spec("victim", false, "sleep", "1000"))
	cg := cgroupDirs(filepath.Join(p.cgroup, "victim"))
	if _, err := os.Stat(cg[0]); err != nil {
		t.Fatalf("container cgroup: %v", err)
	}
	for i := range 2 {
		if err := p.client.Delete(ctx, "victim"); err != nil {
			t.Fatalf("delete #%d: %v", i+1, err)
		}
	}
	if err := p.client.Delete(ctx, "never-existed"); err != nil {
		t.Errorf("delete unknown: %v", err)
	}
	if _, err := p.client.State(ctx, "victim"); !errors.Is(err, ErrNotFound) {
		t.Errorf("state after delete: %v", err)
	}
	for _, d := range cg {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left after delete (%v)", d, err)
		}
	}
	for _, d := range []string{"runc/victim", "containers/victim"} {
		if _, err := os.Stat(filepath.Join(p.shimDir, d)); !os.IsNotExist(err) {
			t.Errorf("%s left after delete", d)
		}
	}
	// The id is free again.
	p.run(p.spec("victim", false, "true"))
	if st := p.wait("victim"); st.ExitCode != 0 {
		t.Errorf("recreated: %+v", st)
	}
}

func TestCreateErrorsLeaveNothing(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	bad := p.spec("bad", false, "true")
	bad.Rootfs = "/nonexistent/rootfs"
	if err := p.client.CreateContainer(ctx, bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("missing rootfs: %v", err)
	}
	bad = p.spec("bad", false, "true")
	bad.Mounts = append(bad.Mounts, Mount{Source: "/nonexistent/volume", Destination: "/v"})
	if err := p.client.CreateContainer(ctx, bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("missing mount source: %v", err)
	}
	bad = p.spec("bad", false, "/bin/no-such-command")
	if err := p.client.CreateContainer(ctx, bad); err == nil {
		// runc checks the command when the init starts.
		t.Errorf("missing command: no error")
	}
	bad = p.spec("bad/slash", false, "true")
	if err := p.client.CreateContainer(ctx, bad); !errors.Is(err, ErrInvalid) {
		t.Errorf("bad id: %v", err)
	}
	if _, err := p.client.State(ctx, "bad"); !errors.Is(err, ErrNotFound) {
		t.Errorf("state of a failed create: %v", err)
	}
	for _, d := range cgroupDirs(filepath.Join(p.cgroup, "bad")) {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("cgroup %s left after failed create", d)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(p.shimDir, "containers"))
	runc, _ := os.ReadDir(filepath.Join(p.shimDir, "runc"))
	if len(entries)+len(runc) != 0 {
		t.Errorf("files left after failed creates: %v %v", entries, runc)
	}

	p.run(p.spec("dup", false, "sleep", "1000"))
	if err := p.client.CreateContainer(ctx, p.spec("dup", false, "true")); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate id: %v", err)
	}
	if st, _ := p.client.State(ctx, "dup"); st.Status != StatusRunning {
		t.Errorf("the first dup suffered: %+v", st)
	}
}

func TestShutdownLeavesNothing(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	p.run(p.spec("one", false, "sleep", "1000"))
	p.run(p.spec("two", true, "sh", "-c", "sleep 1000 & sleep 1000"))
	created := p.spec("three", false, "true") // created, never started
	if err := p.client.CreateContainer(ctx, created); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	t.Logf("shim with 3 containers: %s", memoryKiB(p.client.Pid()))
	states, err := p.client.List(ctx)
	if err != nil || len(states) != 3 {
		t.Fatalf("list: %+v, %v", states, err)
	}
	var pids []int
	for _, st := range states {
		pids = append(pids, st.Pid)
	}
	shimPid := p.client.Pid()

	if err := p.client.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	p.shutdown = true
	for _, pid := range append(pids, shimPid) {
		// Gone, or dead (a zombie, or X while it is being reaped).
		if procfs.Running(pid) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			t.Errorf("process %d survives shutdown: %s", pid, b)
		}
	}
	for _, d := range cgroupDirs(p.cgroup) {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if e.IsDir() {
				t.Errorf("cgroup %s/%s left after shutdown", d, e.Name())
			}
		}
	}
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mi), p.shimDir) {
		t.Errorf("mounts of the shim dir left:\n%s", mi)
	}
	if _, err := os.Stat(p.shimDir); !os.IsNotExist(err) {
		t.Errorf("shim dir left after shutdown (%v)", err)
	}
	if _, err := Connect(ctx, p.shimDir); err == nil {
		t.Errorf("connect after shutdown succeeded")
	}
}

// TestDaemonKillDoesNotDisturbThePod starts the shim from a fake daemon
// process, kills that process with SIGKILL, and finds everything again.
func TestDaemonKillDoesNotDisturbThePod(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	// This pod's shim is replaced by one the fake daemon starts.
	if err := p.client.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	shimDir := filepath.Join(p.dir, "shim2")
	ticker := p.spec("ticker", false, "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done")
	leaver := p.spec("leaver", false, "sh", "-c", "sleep 1; echo bye; exit 7")
	job, _ := json.Marshal(fakeDaemonJob{
		Start: StartOptions{Binary: peapodBin, Helper: lcBin, Dir: shimDir, PodCgroup: p.cgroup},
		Specs: []ContainerSpec{ticker, leaver},
	})
	daemon := exec.Command(os.Args[0], "-test.run=^$")
	daemon.Env = append(os.Environ(), fakeDaemonEnv+"="+string(job))
	out, _ := daemon.StdoutPipe()
	daemon.Stderr = os.Stderr
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := readLine(out)
	if line != "ready" {
		_ = daemon.Process.Kill()
		_ = daemon.Wait()
		t.Fatalf("fake daemon: %q", line)
	}
	if err := daemon.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = daemon.Wait()
	killedAt := time.Now()
	sizeAtKill := fileSize(ticker.LogPath)

	time.Sleep(1500 * time.Millisecond) // leaver exits meanwhile

	c, err := Connect(ctx, shimDir)
	if err != nil {
		t.Fatal(err)
	}
	p.client, p.shimDir = c, shimDir
	st, err := c.State(ctx, "ticker")
	if err != nil || st.Status != StatusRunning {
		t.Errorf("ticker after daemon kill: %+v, %v", st, err)
	}
	if n := fileSize(ticker.LogPath); n <= sizeAtKill {
		t.Errorf("log did not grow while the daemon was down: %d → %d bytes", sizeAtKill, n)
	}
	st, err = c.State(ctx, "leaver")
	if err != nil || st.Status != StatusExited || st.ExitCode != 7 || st.FinishedAt.Before(killedAt) {
		t.Errorf("leaver after daemon kill: %+v, %v; want exit 7 after %v", st, err, killedAt)
	}
	if recs := readLog(t, leaver.LogPath); len(recs) != 1 || recs[0].content != "bye" {
		t.Errorf("leaver log %+v", recs)
	}
	t.Logf("shim with 2 containers: %s", memoryKiB(c.Pid()))
}

const fakeDaemonEnv = "PEAPOD_SHIMTEST_FAKE_DAEMON"

type fakeDaemonJob struct {
	Start StartOptions
	Specs []ContainerSpec
}

// runFakeDaemon is the daemon side of TestDaemonKillDoesNotDisturbThePod:
// it starts a shim and containers, says "ready", and waits to be killed.
func runFakeDaemon() {
	var job fakeDaemonJob
	if err := json.Unmarshal([]byte(os.Getenv(fakeDaemonEnv)), &job); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	ctx := context.Background()
	c, err := Start(ctx, job.Start)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	for _, s := range job.Specs {
		if err := c.CreateContainer(ctx, s); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
		if _, err := c.StartContainer(ctx, s.ID); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	select {}
}

func readLine(r io.Reader) (string, error) {
	var b [1]byte
	var s []byte
	for {
		if _, err := r.Read(b[:]); err != nil {
			return string(s), err
		}
		if b[0] == '\n' {
			return string(s), nil
		}
		s = append(s, b[0])
	}
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return st.Size()
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	waitFor(t, func() bool { _, err := os.Stat(path); return err == nil })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestUserAndOOMScoreAdj(t *testing.T) {
	p := newPod(t)
	spec := p.spec("user", false, "sh", "-c", "id; cat /proc/self/oom_score_adj")
	spec.User = User{UID: 1000, GID: 1001, AdditionalGIDs: []uint32{1002}}
	spec.OOMScoreAdj = 800
	p.run(spec)
	guaranteed := p.spec("guaranteed", false, "cat", "/proc/self/oom_score_adj")
	guaranteed.OOMScoreAdj = -997 // what the kubelet asks for a guaranteed pod
	p.run(guaranteed)
	if st := p.wait("user"); st.ExitCode != 0 {
		t.Fatalf("state %+v", st)
	}
	if st := p.wait("guaranteed"); st.ExitCode != 0 {
		t.Fatalf("state %+v", st)
	}
	recs := readLog(t, spec.LogPath)
	if len(recs) != 2 || !strings.HasPrefix(recs[0].content, "uid=1000 gid=1001 groups=") ||
		!strings.Contains(recs[0].content, "1002") || recs[1].content != "800" {
		t.Errorf("records %+v", recs)
	}
	want := "-997"
	if !hasCapSysResource() || inUserNS() { // rootless: always clamped
		want = strings.TrimSpace(string(must(os.ReadFile("/proc/self/oom_score_adj"))))
	}
	if recs := readLog(t, guaranteed.LogPath); len(recs) != 1 || recs[0].content != want {
		t.Errorf("guaranteed oom_score_adj %+v, want %s", recs, want)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestSeccompProfileIsApplied(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	spec := p.spec("seccomp", false, "sh", "-c", "mkdir /data/denied || echo refused")
	spec.Seccomp = &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64},
		Syscalls: []specs.LinuxSyscall{{
			Names:  []string{"mkdir", "mkdirat"},
			Action: specs.ActErrno,
		}},
	}
	if err := p.client.CreateContainer(ctx, spec); err != nil {
		if strings.Contains(err.Error(), "seccomp not supported") {
			t.Skip("peapod built without libseccomp (install libseccomp-dev)")
		}
		t.Fatal(err)
	}
	if _, err := p.client.StartContainer(ctx, "seccomp"); err != nil {
		t.Fatal(err)
	}
	p.wait("seccomp")
	refused := false
	for _, r := range readLog(t, spec.LogPath) {
		// stdout and stderr are separate pipes: their order varies.
		refused = refused || (r.stream == "stdout" && r.content == "refused")
	}
	if !refused {
		t.Errorf("records %+v, want mkdir refused", readLog(t, spec.LogPath))
	}
	if _, err := os.Stat(filepath.Join(p.dataDir(), "denied")); err == nil {
		t.Errorf("mkdir went through the filter")
	}
}

func TestAttachStreamsStdio(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	spec := p.spec("reader", false, "sh", "-c", "while read l; do echo got $l; echo err $l >&2; done; echo stdin closed")
	spec.Stdin = true
	p.run(spec)
	var stdout, stderr bytes.Buffer
	st, err := p.client.Attach(ctx, "reader", AttachSpec{
		Stdin: strings.NewReader("a\nb\n"), CloseStdin: true,
		Stdout: &stdout, Stderr: &stderr,
	})
	if err != nil || st.Status != StatusExited || st.ExitCode != 0 {
		t.Fatalf("attach = %+v, %v", st, err)
	}
	if stdout.String() != "got a\ngot b\nstdin closed\n" || stderr.String() != "err a\nerr b\n" {
		t.Errorf("stdout %q stderr %q", stdout.String(), stderr.String())
	}
	if recs := readLog(t, spec.LogPath); len(recs) != 5 {
		t.Errorf("log has %d records, want 5 (attach must not steal output): %+v", len(recs), recs)
	}

	tty := p.spec("tty-reader", false, "sh", "-c", "read l; echo tty got $l")
	tty.Tty, tty.Stdin = true, true
	p.run(tty)
	stdout.Reset()
	resize := make(chan TerminalSize, 1)
	resize <- TerminalSize{Width: 100, Height: 40}
	st, err = p.client.Attach(ctx, "tty-reader", AttachSpec{Stdin: strings.NewReader("hello\n"), Stdout: &stdout, Resize: resize})
	if err != nil || st.ExitCode != 0 || !strings.Contains(stdout.String(), "tty got hello") {
		t.Errorf("tty attach = %+v, %v, %q", st, err, stdout.String())
	}
	if _, err := p.client.Attach(ctx, "reader", AttachSpec{}); !errors.Is(err, ErrNotRunning) {
		t.Errorf("attach to an exited container: %v", err)
	}
}

func TestUpdateResources(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	p.run(p.spec("limited", false, "sleep", "1000"))
	limit := int64(48 << 20)
	shares := uint64(512)
	err := p.client.UpdateResources(ctx, "limited", &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: &limit},
		CPU:    &specs.LinuxCPU{Shares: &shares},
	})
	if err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{
		"memory/memory.limit_in_bytes": "50331648",
		"cpu/cpu.shares":               "512",
	} {
		path := filepath.Join("/sys/fs/cgroup", filepath.Dir(file), p.cgroup, "limited", filepath.Base(file))
		if b, err := os.ReadFile(path); err != nil {
			t.Logf("%s: %v (not cgroup v1?)", path, err)
		} else if strings.TrimSpace(string(b)) != want {
			t.Errorf("%s = %s, want %s", path, b, want)
		}
	}
}

// TestConcurrentLifecycles starts, execs into and ends containers at the
// same time: exits reaped while libcontainer starts other processes must
// all be seen, by the right owner.
func TestConcurrentLifecycles(t *testing.T) {
	p := newPod(t)
	ctx := context.Background()
	const n = 8
	errs := make(chan error, 3*n)
	start := time.Now()
	for i := range n {
		go func() {
			id := fmt.Sprintf("c%d", i)
			// Each ends once the test, after its exec, drops a file.
			spec := p.spec(id, i%2 == 0, "sh", "-c", fmt.Sprintf("while [ ! -e /data/end-%d ]; do sleep 0.01; done; exit %d", i, i))
			if err := p.client.CreateContainer(ctx, spec); err != nil {
				errs <- err
				return
			}
			if _, err := p.client.StartContainer(ctx, id); err != nil {
				errs <- err
				return
			}
			var out bytes.Buffer
			code, err := p.client.Exec(ctx, id, ExecSpec{Args: []string{"sh", "-c", fmt.Sprintf("echo %d; exit %d", i, i+10)}, Stdout: &out})
			if err != nil || code != i+10 || out.String() != fmt.Sprintf("%d\n", i) {
				errs <- fmt.Errorf("exec %s: code %d output %q, %v", id, code, out.String(), err)
				return
			}
			if err := os.WriteFile(filepath.Join(p.dataDir(), fmt.Sprintf("end-%d", i)), nil, 0o644); err != nil {
				errs <- err
				return
			}
			st, err := p.client.Wait(ctx, id)
			if err != nil || st.ExitCode != i {
				errs <- fmt.Errorf("wait %s: %+v, %v; want exit %d", id, st, err, i)
				return
			}
			errs <- nil
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d containers created, exec'd into and exited concurrently in %v", n, time.Since(start))
}

func TestSecondShimForTheSameDirIsRefused(t *testing.T) {
	p := newPod(t)
	_, err := Start(context.Background(), StartOptions{Binary: peapodBin, Helper: lcBin, Dir: p.shimDir, PodCgroup: p.cgroup})
	if err == nil || !strings.Contains(err.Error(), "another shim") {
		t.Fatalf("second Start: %v", err)
	}
	if _, err := Connect(context.Background(), p.shimDir); err != nil {
		t.Errorf("the first shim suffered: %v", err)
	}
}
