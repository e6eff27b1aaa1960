package shim

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"peapod/shim/internal/lcproto"
)

// reaperTestEnv makes the test binary run reaperScenario instead of the
// tests: the reaper waits for every child (wait4(-1)), which the test
// process, whose other tests wait for their own children, cannot have.
const reaperTestEnv = "PEAPOD_SHIMTEST_REAPER"

// TestReaperKeepsExitsOfUnregisteredPids: a process that ends before the
// helper's reply names it (here: before register) still gets its exit
// code, and an exit nobody can claim any more is not kept.
func TestReaperKeepsExitsOfUnregisteredPids(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), reaperTestEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("reaper ok")) {
		t.Fatalf("reaper scenario: %v\n%s", err, out)
	}
}

func reaperScenario() {
	fail := func(f string, a ...any) {
		fmt.Printf(f+"\n", a...)
		os.Exit(1)
	}
	r := newReaper()
	start := func(code int) int {
		p, err := os.StartProcess("/bin/sh", []string{"sh", "-c", "exit " + strconv.Itoa(code)}, &os.ProcAttr{})
		if err != nil {
			fail("start: %v", err)
		}
		pid := p.Pid
		_ = p.Release()
		return pid
	}
	reaped := func(pid int) bool { return unix.Kill(pid, 0) == unix.ESRCH }
	waitReaped := func(pid int) {
		for deadline := time.Now().Add(5 * time.Second); !reaped(pid); {
			if time.Now().After(deadline) {
				fail("pid %d not reaped", pid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	// In a helper's window: kept, and handed over on register.
	r.begin()
	pid := start(7)
	waitReaped(pid)
	got := make(chan exit, 1)
	r.register(pid, func(e exit) { got <- e })
	select {
	case e := <-got:
		if e.code() != 7 {
			fail("exit code %d, want 7", e.code())
		}
	case <-time.After(time.Second):
		fail("the exit of pid %d, reaped before register, was lost", pid)
	}
	// A registered process that ends later is reported too, and takes
	// no signal once reaped.
	p, err := os.StartProcess("/bin/sleep", []string{"sleep", "100"}, &os.ProcAttr{})
	if err != nil {
		fail("start: %v", err)
	}
	pid = p.Pid
	_ = p.Release()
	r.register(pid, func(e exit) { got <- e })
	if !r.signal(pid, unix.SIGKILL) {
		fail("signal of a running registered process failed")
	}
	if e := <-got; e.code() != 128+int(unix.SIGKILL) {
		fail("exit code %d, want %d", e.code(), 128+int(unix.SIGKILL))
	}
	if r.signal(pid, unix.SIGKILL) || r.running(pid) {
		fail("a reaped pid is still signalled")
	}
	r.end()

	// Outside any window an unknown pid is an orphan: dropped.
	pid = start(9)
	waitReaped(pid)
	r.mu.Lock()
	kept := len(r.early)
	r.mu.Unlock()
	if kept != 0 {
		fail("%d orphan exits kept outside a helper's window", kept)
	}
	fmt.Println("reaper ok")
	os.Exit(0)
}

// helpers lists the shim's helper processes (`peapod-lc lc`, or `peapod
// shim lc`), its children.
func helpers(t *testing.T, shimPid int) []string {
	t.Helper()
	var out []string
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		f := strings.Fields(string(b[i+2:]))
		if len(f) < 2 || f[1] != strconv.Itoa(shimPid) {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		if len(args) >= 2 && args[1] == lcproto.Arg || len(args) >= 3 && args[1] == "shim" && args[2] == lcproto.Arg {
			out = append(out, fmt.Sprintf("%d %s (state %s)", pid, strings.Join(args, " "), f[0]))
		}
	}
	return out
}

// TestHelpersDoNotLinger: after each call the helper that served it is
// gone (exited and reaped), and the one started ahead of time ends by
// itself when no call came.
func TestHelpersDoNotLinger(t *testing.T) {
	ctx := context.Background()
	idle := newPod(t)
	p := newPod(t)
	p.run(p.spec("h1", false, "sleep", "1000"))
	// A call returns once the helper replied; the helper's exit and its
	// reaping follow within moments.
	check := func(what string) {
		t.Helper()
		deadline := time.Now().Add(time.Second)
		for {
			hs := helpers(t, p.client.Pid())
			if len(hs) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("after %s, helpers remain: %v", what, hs)
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	check("create and start")
	var out bytes.Buffer
	if code, err := p.client.Exec(ctx, "h1", ExecSpec{Args: []string{"echo", "hi"}, Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("exec: %d %v", code, err)
	}
	check("exec")
	if err := p.client.Signal(ctx, "h1", unix.SIGCONT, true); err != nil {
		t.Fatal(err)
	}
	check("signal all")
	if err := p.client.Delete(ctx, "h1"); err != nil {
		t.Fatal(err)
	}
	check("delete")

	if hs := helpers(t, idle.client.Pid()); len(hs) != 1 {
		t.Errorf("a new shim has helpers %v, want the one spare", hs)
	}
	time.Sleep(spareIdle + time.Second)
	if hs := helpers(t, idle.client.Pid()); len(hs) > 0 {
		t.Errorf("the unused spare helper did not end: %v", hs)
	}
	// And the shim still serves creates without it.
	idle.run(idle.spec("late", false, "sleep", "1000"))
}

// TestStartOfADeadInit: the shim reads the exec fifo itself; an init that
// died before start makes StartContainer fail, not hang, and its exit is
// recorded.
func TestStartOfADeadInit(t *testing.T) {
	ctx := context.Background()
	p := newPod(t)
	if err := p.client.CreateContainer(ctx, p.spec("dead", false, "echo", "never")); err != nil {
		t.Fatal(err)
	}
	// The init only: no kill-all helper.
	if err := p.client.Signal(ctx, "dead", unix.SIGKILL, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := p.client.StartContainer(ctx, "dead"); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("start of a killed init succeeded")
		}
		t.Logf("start: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("start of a killed init hangs")
	}
	st := p.wait("dead")
	if st.Status != StatusExited || st.ExitCode != 128+int(unix.SIGKILL) {
		t.Errorf("state %+v, want exited by SIGKILL", st)
	}
}
