package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/internal/procfs"
	"peapod/shim"
)

// A pod's shim holds its containers' output and records their exits. When
// it dies (kill -9 here; a crash or the OOM killer on a node), its
// containers must not stay CREATED or RUNNING for ever: the daemon reports
// them exited, kills what is left of them and removes their cgroups, and
// the pod takes new containers through a new shim.
func TestContainersOfADeadShimAreSettled(t *testing.T) {
	d, _, _ := containerDaemon(t)
	before := d.snapshot(t)
	cfg := podConfig("deadshim")
	logDir := t.TempDir()
	cfg.LogDirectory = logDir
	pod := d.runPod(t, cfg)
	_, v := d.status(t, pod)

	// With the daemon up: a running and a created container.
	run := d.createContainer(t, pod, cfg, busyboxContainer("runner", "sleep", "3600"))
	d.startContainer(t, run)
	idle := d.createContainer(t, pod, cfg, busyboxContainer("idle", "sleep", "1000"))
	runPid, idlePid := containerPid(t, d, run), containerPid(t, d, idle)
	es := d.subscribeEvents(t)
	killShim(t, v.RuntimeDir)
	// The exit watcher notices at once: no status call is needed first.
	es.expect(run, runtime.ContainerEventType_CONTAINER_STOPPED_EVENT, 10*time.Second)
	st := d.containerStatus(t, run)
	if st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 || st.Reason != "Error" || !strings.Contains(st.Message, "shim") {
		t.Errorf("running container of a killed shim: %v exit %d reason %q message %q, want EXITED 137 Error", st.State, st.ExitCode, st.Reason, st.Message)
	}
	if st := d.containerStatus(t, idle); st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Errorf("created container of a killed shim: %v exit %d, want EXITED 137", st.State, st.ExitCode)
	}
	for name, pid := range map[string]int{"runner": runPid, "idle": idlePid} {
		if procfs.Running(pid) {
			t.Errorf("%s's init %d still runs after its shim died", name, pid)
		}
	}
	for _, id := range []string{run, idle} {
		if dirs := containerCgroupDirs(v.Cgroup.PodPath, id); len(dirs) > 0 {
			t.Errorf("container cgroup left after its shim died: %v", dirs)
		}
	}

	// The pod still takes containers: a new shim runs them.
	again := d.createContainer(t, pod, cfg, busyboxContainer("again", "sh", "-c", "echo again; exit 3"))
	d.startContainer(t, again)
	if st := d.waitExited(t, again, 10*time.Second); st.ExitCode != 3 {
		t.Errorf("container of the new shim: exit %d, want 3", st.ExitCode)
	}
	if b, _ := os.ReadFile(filepath.Join(logDir, "again.log")); !bytes.Contains(b, []byte(" stdout F again")) {
		t.Errorf("container of the new shim logged %q", b)
	}

	// With the daemon down as well: the shim records one exit, then dies
	// with two containers still running. One of them writes to its stdout,
	// whose reader was the shim: it dies of SIGPIPE before the daemon is
	// back, and nobody can tell how it ended.
	run2 := d.createContainer(t, pod, cfg, busyboxContainer("runner2", "sleep", "3600"))
	d.startContainer(t, run2)
	talk := d.createContainer(t, pod, cfg, busyboxContainer("talker", "sh", "-c", "while true; do echo tick; sleep 0.05; done"))
	d.startContainer(t, talk)
	quit := d.createContainer(t, pod, cfg, busyboxContainer("quitter", "sh", "-c", "sleep 1; exit 42"))
	d.startContainer(t, quit)
	run2Pid, talkPid := containerPid(t, d, run2), containerPid(t, d, talk)
	d.kill9()
	killedAt := time.Now()
	time.Sleep(2 * time.Second)
	killShim(t, v.RuntimeDir)
	for deadline := time.Now().Add(5 * time.Second); procfs.Running(talkPid); {
		if time.Now().After(deadline) {
			t.Fatalf("talker %d still runs after its shim (its stdout's reader) died", talkPid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.start()
	st = d.containerStatus(t, quit)
	if st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 42 || time.Unix(0, st.FinishedAt).Before(killedAt) {
		t.Errorf("quitter: %v exit %d finished %v, want EXITED 42 after %v (the shim's record)", st.State, st.ExitCode, time.Unix(0, st.FinishedAt), killedAt)
	}
	st = d.containerStatus(t, run2)
	if st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Errorf("runner2 after the restart: %v exit %d, want EXITED 137", st.State, st.ExitCode)
	}
	st = d.containerStatus(t, talk)
	if st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 255 || st.Reason != "Unknown" {
		t.Errorf("talker after the restart: %v exit %d reason %q, want EXITED 255 Unknown", st.State, st.ExitCode, st.Reason)
	}
	if procfs.Running(run2Pid) {
		t.Errorf("runner2's init %d still runs after the restart", run2Pid)
	}
	for _, id := range []string{run2, talk} {
		if dirs := containerCgroupDirs(v.Cgroup.PodPath, id); len(dirs) > 0 {
			t.Errorf("container cgroup left after the restart: %v", dirs)
		}
	}

	// An exec into a created container whose new shim died in turn: a
	// clear "not running", and the container is settled on the way.
	late := d.createContainer(t, pod, cfg, busyboxContainer("late", "sleep", "1000"))
	killShim(t, v.RuntimeDir)
	_, err := d.RT.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: late, Cmd: []string{"true"}, Timeout: 5})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "shim is gone") {
		t.Errorf("ExecSync into a container of a dead shim: %v, want FailedPrecondition naming the shim", err)
	}
	if st := d.containerStatus(t, late); st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Errorf("created container after a failed exec: %v exit %d, want EXITED 137", st.State, st.ExitCode)
	}

	// Log reopening and resource updates of a running container whose
	// shim just died: "not running", and the limits are recorded as for
	// any exited container.
	for _, call := range []string{"ReopenContainerLog", "UpdateContainerResources"} {
		id := d.createContainer(t, pod, cfg, busyboxContainer(strings.ToLower(call), "sleep", "1000"))
		d.startContainer(t, id)
		killShim(t, v.RuntimeDir)
		var err error
		if call == "ReopenContainerLog" {
			_, err = d.RT.ReopenContainerLog(ctxT(t), &runtime.ReopenContainerLogRequest{ContainerId: id})
			if status.Code(err) != codes.FailedPrecondition {
				t.Errorf("%s on a container of a dead shim: %v, want FailedPrecondition", call, err)
			}
		} else {
			_, err = d.RT.UpdateContainerResources(ctxT(t), &runtime.UpdateContainerResourcesRequest{ContainerId: id,
				Linux: &runtime.LinuxContainerResources{MemoryLimitInBytes: 64 << 20}})
			if err != nil {
				t.Errorf("%s on a container of a dead shim: %v", call, err)
			}
		}
		if st := d.containerStatus(t, id); st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
			t.Errorf("after %s: %v exit %d, want EXITED 137", call, st.State, st.ExitCode)
		}
	}

	d.stopRemove(t, pod)
	assertNoLeaks(t, before, d.snapshot(t))
}

// killShim SIGKILLs the shim serving the sandbox dir and waits until it is
// gone.
func killShim(t testing.TB, sandboxDir string) {
	t.Helper()
	want := "\x00--dir\x00" + filepath.Join(sandboxDir, "shim") + "\x00"
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	pid := 0
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err == nil && bytes.Contains(b, []byte(want)) {
			pid, _ = strconv.Atoi(filepath.Base(filepath.Dir(p)))
			break
		}
	}
	if pid == 0 {
		t.Fatalf("no shim process serves %s", sandboxDir)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Gone once its socket refuses: a killed multi-threaded process shows
	// as a zombie before all its threads, and so its files, are gone.
	for deadline := time.Now().Add(5 * time.Second); ; {
		_, err := shim.Connect(ctxT(t), filepath.Join(sandboxDir, "shim"))
		if !procfs.Running(pid) && shim.Gone(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("shim %d still there after SIGKILL: running %v, connect: %v", pid, procfs.Running(pid), err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// containerCgroupDirs lists the cgroup dirs of container id of a pod, in
// every hierarchy (cgroupfs driver).
func containerCgroupDirs(podPath, id string) []string {
	var out []string
	for _, pat := range []string{"/sys/fs/cgroup/*", "/sys/fs/cgroup"} {
		m, _ := filepath.Glob(filepath.Join(pat, podPath, id))
		out = append(out, m...)
	}
	return out
}

// processesWithArgs lists the pids whose command line is exactly args.
func processesWithArgs(args ...string) []int {
	want := []byte(strings.Join(args, "\x00") + "\x00")
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var out []int
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Equal(b, want) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			out = append(out, pid)
		}
	}
	return out
}
