package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// containerDaemon is a daemon with an image registry mirror and the
// busybox test image pulled as "example.test/busybox:1".
func containerDaemon(t *testing.T) (*daemon, *testRegistry, runtime.ImageServiceClient) {
	t.Helper()
	reg := startRegistry(t)
	reg.push(t, "busybox:1", busyboxImage(t, nil))
	d := startDaemon(t, withArgs("--registry-config-dir", reg.HostsDir))
	img := runtime.NewImageServiceClient(d.conn)
	if _, err := img.PullImage(ctxT(t), &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "example.test/busybox:1"}}); err != nil {
		t.Fatalf("pull through the mirror: %v", err)
	}
	return d, reg, img
}

func (d *daemon) createContainer(t testing.TB, pod string, podCfg *runtime.PodSandboxConfig, cfg *runtime.ContainerConfig) string {
	t.Helper()
	resp, err := d.RT.CreateContainer(ctxT(t), &runtime.CreateContainerRequest{PodSandboxId: pod, Config: cfg, SandboxConfig: podCfg})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", cfg.Metadata.Name, err)
	}
	return resp.ContainerId
}

func (d *daemon) startContainer(t testing.TB, id string) {
	t.Helper()
	if _, err := d.RT.StartContainer(ctxT(t), &runtime.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
}

func (d *daemon) containerStatus(t testing.TB, id string) *runtime.ContainerStatus {
	t.Helper()
	resp, err := d.RT.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStatus: %v", err)
	}
	return resp.Status
}

func (d *daemon) waitExited(t testing.TB, id string, within time.Duration) *runtime.ContainerStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := d.containerStatus(t, id)
		if st.State == runtime.ContainerState_CONTAINER_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %v after %v", id, st.State, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func busyboxContainer(name string, cmd ...string) *runtime.ContainerConfig {
	return &runtime.ContainerConfig{
		Metadata: &runtime.ContainerMetadata{Name: name},
		Image:    &runtime.ImageSpec{Image: "example.test/busybox:1"},
		Command:  cmd,
		LogPath:  name + ".log",
		Linux:    &runtime.LinuxContainerConfig{},
	}
}

var criLogLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (P|F) (.*)$`)

func TestContainersOfAPodShareFilesNetworkAndLogs(t *testing.T) {
	d, _, _ := containerDaemon(t)
	shared := t.TempDir()
	logDir := t.TempDir()
	podCfg := podConfig("two")
	podCfg.LogDirectory = logDir
	pod := d.runPod(t, podCfg)

	server := busyboxContainer("server", "sh", "-c", "echo server-up; nc -l -p 7070 > /shared/received; echo done-serving >&2; sleep 3600")
	server.Mounts = []*runtime.Mount{{HostPath: shared, ContainerPath: "/shared"}}
	sid := d.createContainer(t, pod, podCfg, server)
	d.startContainer(t, sid)

	// The message comes from a file, not a pipe: busybox's nc half-closes
	// on its stdin's EOF, so the server (stdin /dev/null) closes its side
	// at once, and a client whose piped message was not written yet saw
	// that EOF first and left without sending it.
	client := busyboxContainer("client", "sh", "-c", "echo from-client > /shared/written; echo over-localhost > /shared/msg; for i in $(seq 100); do nc 127.0.0.1 7070 < /shared/msg && exit 3; sleep 0.1; done; exit 9")
	client.Mounts = []*runtime.Mount{{HostPath: shared, ContainerPath: "/shared"}}
	cid := d.createContainer(t, pod, podCfg, client)
	d.startContainer(t, cid)

	st := d.waitExited(t, cid, 20*time.Second)
	if st.ExitCode != 3 || st.Reason != "Error" || st.FinishedAt <= st.StartedAt || st.StartedAt <= st.CreatedAt {
		t.Errorf("client status: exit %d reason %q created %d started %d finished %d", st.ExitCode, st.Reason, st.CreatedAt, st.StartedAt, st.FinishedAt)
	}
	if b, _ := os.ReadFile(filepath.Join(shared, "written")); strings.TrimSpace(string(b)) != "from-client" {
		t.Errorf("shared dir: %q", b)
	}
	waitFileHolds(t, filepath.Join(shared, "received"), "over-localhost", 10*time.Second)
	// CRI log format.
	time.Sleep(300 * time.Millisecond)
	logb, err := os.ReadFile(filepath.Join(logDir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(logb)), "\n")
	var sawOut, sawErr bool
	for _, l := range lines {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Errorf("log line not in CRI format: %q", l)
			continue
		}
		sawOut = sawOut || (m[2] == "stdout" && m[4] == "server-up")
		sawErr = sawErr || (m[2] == "stderr" && m[4] == "done-serving")
	}
	if !sawOut || !sawErr {
		t.Errorf("log lacks stdout/stderr lines:\n%s", logb)
	}
	// ExecSync: output and exit code.
	resp, err := d.RT.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: sid, Cmd: []string{"sh", "-c", "hostname; echo oops >&2; exit 7"}, Timeout: 10})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if strings.TrimSpace(string(resp.Stdout)) != "two" || strings.TrimSpace(string(resp.Stderr)) != "oops" || resp.ExitCode != 7 {
		t.Errorf("ExecSync: stdout %q stderr %q exit %d", resp.Stdout, resp.Stderr, resp.ExitCode)
	}
	// ListContainers filters.
	list, err := d.RT.ListContainers(ctxT(t), &runtime.ListContainersRequest{Filter: &runtime.ContainerFilter{PodSandboxId: pod, State: &runtime.ContainerStateValue{State: runtime.ContainerState_CONTAINER_RUNNING}}})
	if err != nil || len(list.Containers) != 1 || list.Containers[0].Id != sid {
		t.Errorf("running containers of the pod: %v %v", list.GetContainers(), err)
	}
	d.stopRemove(t, pod)
	if _, err := d.RT.ContainerStatus(ctxT(t), &runtime.ContainerStatusRequest{ContainerId: sid}); status.Code(err) != codes.NotFound {
		t.Errorf("container of a removed pod: %v, want NotFound", err)
	}
}

// TestStopContainerKillsAfterTimeoutWith137 stops a container that ignores
// SIGTERM and has a background process and an exec's orphan: in a PID
// namespace of its own (the kubelet's default: the SIGKILL of its init
// takes the namespace), and in the pod's (every process of its cgroup is
// killed).
func TestStopContainerKillsAfterTimeoutWith137(t *testing.T) {
	d, _, _ := containerDaemon(t)
	for _, mode := range []runtime.NamespaceMode{runtime.NamespaceMode_CONTAINER, runtime.NamespaceMode_POD} {
		t.Run(mode.String(), func(t *testing.T) { stopStubborn(t, d, mode) })
	}
}

func stopStubborn(t *testing.T, d *daemon, pidMode runtime.NamespaceMode) {
	podCfg := podConfig("stubborn-" + strings.ToLower(pidMode.String()))
	pod := d.runPod(t, podCfg)
	ctr := busyboxContainer("ignorer", "sh", "-c", "trap '' TERM; sleep 1357 & while true; do sleep 1; done")
	ctr.Linux.SecurityContext = &runtime.LinuxContainerSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Pid: pidMode}}
	id := d.createContainer(t, pod, podCfg, ctr)
	d.startContainer(t, id)
	// A process an exec left behind, orphaned inside the container.
	if _, err := d.RT.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", "sleep 2468 >/dev/null 2>&1 &"}, Timeout: 10}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	leftovers := func() string {
		out, _ := exec.Command("pgrep", "-af", "^sleep (1357|2468)$").Output()
		return strings.TrimSpace(string(out))
	}
	if leftovers() == "" {
		t.Fatal("the container's background processes are not running")
	}
	start := time.Now()
	if _, err := d.RT.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: id, Timeout: 2}); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	st := d.containerStatus(t, id)
	if st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 {
		t.Errorf("after stop: %v exit %d", st.State, st.ExitCode)
	}
	if took < 1900*time.Millisecond || took > 10*time.Second {
		t.Errorf("stop took %v; want about the 2 s timeout", took)
	}
	if l := leftovers(); l != "" {
		t.Errorf("processes of the stopped container still run:\n%s", l)
	}
	// Stop and remove again: idempotent; unknown ids too.
	for i := 0; i < 2; i++ {
		if _, err := d.RT.StopContainer(ctxT(t), &runtime.StopContainerRequest{ContainerId: id}); err != nil {
			t.Errorf("second stop: %v", err)
		}
	}
	_, v := d.status(t, pod)
	if dirs := containerCgroupDirs(v.Cgroup.PodPath, id); len(dirs) == 0 {
		t.Error("the stopped container's cgroup is gone before RemoveContainer")
	}
	for i := 0; i < 2; i++ {
		if _, err := d.RT.RemoveContainer(ctxT(t), &runtime.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Errorf("remove #%d: %v", i+1, err)
		}
	}
	if dirs := containerCgroupDirs(v.Cgroup.PodPath, id); len(dirs) > 0 {
		t.Errorf("the removed container's cgroup is left: %v", dirs)
	}
	d.stopRemove(t, pod)
}

func TestOOMKilledContainerSaysSo(t *testing.T) {
	d, _, _ := containerDaemon(t)
	podCfg := podConfig("oom")
	pod := d.runPod(t, podCfg)
	c := busyboxContainer("hog", "sh", "-c", "dd if=/dev/zero of=/dev/null bs=128M count=1; x=$(head -c 100000000 /dev/zero | tr '\\0' a); sleep 5")
	c.Linux.Resources = &runtime.LinuxContainerResources{MemoryLimitInBytes: 32 << 20}
	id := d.createContainer(t, pod, podCfg, c)
	d.startContainer(t, id)
	st := d.waitExited(t, id, 30*time.Second)
	if st.Reason != "OOMKilled" || st.ExitCode != 137 {
		t.Errorf("OOM: reason %q exit %d", st.Reason, st.ExitCode)
	}
	d.stopRemove(t, pod)
}

func TestContainerBadInputsAreClearAndLeaveNothing(t *testing.T) {
	d, _, _ := containerDaemon(t)
	podCfg := podConfig("bad-inputs")
	pod := d.runPod(t, podCfg)
	rootfsDirs := func() []string {
		e, _ := os.ReadDir(filepath.Join(d.Root, "images", "containers"))
		var out []string
		for _, x := range e {
			out = append(out, x.Name())
		}
		return out
	}
	before := rootfsDirs()
	cases := map[string]struct {
		sandbox string
		cfg     *runtime.ContainerConfig
		code    codes.Code
	}{
		"unknown image": {pod, func() *runtime.ContainerConfig {
			c := busyboxContainer("a", "true")
			c.Image.Image = "example.test/nope:1"
			return c
		}(), codes.NotFound},
		"unknown sandbox": {strings.Repeat("cd", 32), busyboxContainer("b", "true"), codes.NotFound},
		"missing mount src": {pod, func() *runtime.ContainerConfig {
			c := busyboxContainer("c", "true")
			c.Mounts = []*runtime.Mount{{HostPath: "/no/such/dir", ContainerPath: "/x"}}
			return c
		}(), codes.InvalidArgument},
		"relative mount": {pod, func() *runtime.ContainerConfig {
			c := busyboxContainer("d", "true")
			c.Mounts = []*runtime.Mount{{HostPath: "rel", ContainerPath: "/x"}}
			return c
		}(), codes.InvalidArgument},
		"bad seccomp path": {pod, func() *runtime.ContainerConfig {
			c := busyboxContainer("e", "true")
			c.Linux.SecurityContext = &runtime.LinuxContainerSecurityContext{Seccomp: &runtime.SecurityProfile{ProfileType: runtime.SecurityProfile_Localhost, LocalhostRef: "/no/such/profile.json"}}
			return c
		}(), codes.InvalidArgument},
		"log path traversal": {pod, func() *runtime.ContainerConfig {
			c := busyboxContainer("f", "true")
			c.LogPath = "../../etc/x"
			return c
		}(), codes.InvalidArgument},
	}
	for name, tc := range cases {
		_, err := d.RT.CreateContainer(ctxT(t), &runtime.CreateContainerRequest{PodSandboxId: tc.sandbox, Config: tc.cfg, SandboxConfig: podCfg})
		if status.Code(err) != tc.code {
			t.Errorf("%s: got %v, want %v", name, err, tc.code)
		} else if len(status.Convert(err).Message()) < 10 {
			t.Errorf("%s: unhelpful message %q", name, status.Convert(err).Message())
		}
	}
	list, _ := d.RT.ListContainers(ctxT(t), &runtime.ListContainersRequest{})
	if len(list.GetContainers()) != 0 {
		t.Errorf("failed creates left containers: %v", list.Containers)
	}
	if after := rootfsDirs(); len(after) != len(before) {
		t.Errorf("failed creates left rootfs dirs: %v", after)
	}
	d.stopRemove(t, pod)
}

func TestImagePullStatusRemoveAndByDigest(t *testing.T) {
	reg := startRegistry(t)
	digest := reg.push(t, "tools/box:2", busyboxImage(t, func(c *v1.Config) { c.User = "65534"; c.Entrypoint = []string{"/bin/sh", "-c"} }))
	d := startDaemon(t, withArgs("--registry-config-dir", reg.HostsDir))
	img := runtime.NewImageServiceClient(d.conn)
	pulled, err := img.PullImage(ctxT(t), &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "registry.invalid/tools/box@" + digest}})
	if err != nil {
		t.Fatalf("pull by digest: %v", err)
	}
	st, err := img.ImageStatus(ctxT(t), &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: pulled.ImageRef}})
	if err != nil || st.Image == nil {
		t.Fatalf("ImageStatus: %v %v", st, err)
	}
	if st.Image.Uid.GetValue() != 65534 || st.Image.Size == 0 || len(st.Image.RepoDigests) == 0 {
		t.Errorf("image status: %+v", st.Image)
	}
	fs, err := img.ImageFsInfo(ctxT(t), &runtime.ImageFsInfoRequest{})
	if err != nil || len(fs.ImageFilesystems) == 0 || fs.ImageFilesystems[0].UsedBytes.GetValue() == 0 {
		t.Errorf("ImageFsInfo: %v %v", fs, err)
	}
	for i := 0; i < 2; i++ {
		if _, err := img.RemoveImage(ctxT(t), &runtime.RemoveImageRequest{Image: &runtime.ImageSpec{Image: pulled.ImageRef}}); err != nil {
			t.Errorf("remove #%d: %v", i+1, err)
		}
	}
	st, err = img.ImageStatus(ctxT(t), &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: pulled.ImageRef}})
	if err != nil || st.Image != nil {
		t.Errorf("status of a removed image: %v %v", st.GetImage(), err)
	}
	_, err = img.PullImage(ctxT(t), &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "example.test/does-not-exist:1"}})
	if err == nil {
		t.Errorf("pulling a missing image succeeded")
	}
	_ = fmt.Sprint
}

func TestKill9WithRunningContainersLosesNothing(t *testing.T) {
	d, _, _ := containerDaemon(t)
	s := startSurvivors(t, d, 5, "survive", t.TempDir())
	s.kill9(t)
	d.start()
	s.check(t)
	for _, p := range s.pods {
		d.stopRemove(t, p.pod)
	}
}

// survivors are pods that go through a kill -9 of their daemon: each has
// a container that keeps logging and one that exits while the daemon is
// down.
type survivors struct {
	d        *daemon
	logDir   string
	pods     []survivor
	before   []int64 // ticker log sizes when the daemon was killed
	killedAt time.Time
}

type survivor struct{ pod, ip, ticker, quitter string }

func startSurvivors(t *testing.T, d *daemon, n int, name, logDir string) *survivors {
	t.Helper()
	s := &survivors{d: d, logDir: logDir}
	for i := 0; i < n; i++ {
		cfg := podConfig(fmt.Sprintf("%s-%d", name, i))
		cfg.LogDirectory = filepath.Join(logDir, fmt.Sprint(i))
		pod := d.runPod(t, cfg)
		st, _ := d.status(t, pod)
		tick := d.createContainer(t, pod, cfg, busyboxContainer("ticker", "sh", "-c", "while true; do echo tick; sleep 0.1; done"))
		d.startContainer(t, tick)
		quit := d.createContainer(t, pod, cfg, busyboxContainer("quitter", "sh", "-c", "sleep 2; exit 42"))
		d.startContainer(t, quit)
		s.pods = append(s.pods, survivor{pod, st.GetNetwork().GetIp(), tick, quit})
	}
	return s
}

func (s *survivors) logSize(i int) int64 {
	st, err := os.Stat(filepath.Join(s.logDir, fmt.Sprint(i), "ticker.log"))
	if err != nil {
		return 0
	}
	return st.Size()
}

// kill9 kills the daemon and waits while the quitters exit.
func (s *survivors) kill9(t *testing.T) {
	s.before = nil
	for i := range s.pods {
		s.before = append(s.before, s.logSize(i))
	}
	s.d.kill9()
	s.killedAt = time.Now()
	time.Sleep(3 * time.Second)
}

// check, after the restart: tickers run and their logs grew while the
// daemon was down, quitters report exit 42 and a finish after the kill,
// and the pods are ready with their IPs.
func (s *survivors) check(t *testing.T) {
	t.Helper()
	for i, p := range s.pods {
		if st := s.d.containerStatus(t, p.ticker); st.State != runtime.ContainerState_CONTAINER_RUNNING {
			t.Errorf("pod %d ticker is %v after restart", i, st.State)
		}
		if size := s.logSize(i); size <= s.before[i] {
			t.Errorf("pod %d log did not grow while the daemon was down (%d -> %d)", i, s.before[i], size)
		}
		st := s.d.containerStatus(t, p.quitter)
		if st.State != runtime.ContainerState_CONTAINER_EXITED || st.ExitCode != 42 {
			t.Errorf("pod %d quitter: %v exit %d, want EXITED 42", i, st.State, st.ExitCode)
		}
		if time.Unix(0, st.FinishedAt).Before(s.killedAt) {
			t.Errorf("pod %d quitter finished at %v, before the daemon was killed", i, time.Unix(0, st.FinishedAt))
		}
		if ps, _ := s.d.status(t, p.pod); ps.GetNetwork().GetIp() != p.ip || ps.State != runtime.PodSandboxState_SANDBOX_READY {
			t.Errorf("pod %d after restart: %v ip %s, was %s", i, ps.State, ps.GetNetwork().GetIp(), p.ip)
		}
	}
}

func TestLogReopenAfterRotation(t *testing.T) {
	d, _, _ := containerDaemon(t)
	logDir := t.TempDir()
	cfg := podConfig("rotate")
	cfg.LogDirectory = logDir
	pod := d.runPod(t, cfg)
	id := d.createContainer(t, pod, cfg, busyboxContainer("talker", "sh", "-c", "while true; do echo line; sleep 0.05; done"))
	d.startContainer(t, id)
	time.Sleep(500 * time.Millisecond)
	logPath := filepath.Join(logDir, "talker.log")
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.RT.ReopenContainerLog(ctxT(t), &runtime.ReopenContainerLogRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	old1, _ := os.Stat(logPath + ".1")
	time.Sleep(500 * time.Millisecond)
	old2, _ := os.Stat(logPath + ".1")
	cur, err := os.Stat(logPath)
	if err != nil || cur.Size() == 0 {
		t.Fatalf("new log file: %v", err)
	}
	if old2.Size() != old1.Size() {
		t.Errorf("rotated file still grows: %d -> %d", old1.Size(), old2.Size())
	}
	d.stopRemove(t, pod)
}

func TestCrictlExecWithTTY(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("ttyexec")
	pod := d.runPod(t, cfg)
	id := d.createContainer(t, pod, cfg, busyboxContainer("sleeper", "sleep", "3600"))
	d.startContainer(t, id)
	// crictl wants a terminal on its stdin for -t: script(1) gives it one.
	line := fmt.Sprintf("%s --runtime-endpoint unix://%s exec -it %s sh -c 'tty && echo in-a-tty'", crictlBin, d.Socket, id)
	b, err := exec.Command("script", "-qec", line, "/dev/null").CombinedOutput()
	out := string(b)
	if err != nil || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "in-a-tty") {
		t.Errorf("crictl exec -it: %v\n%q", err, out)
	}
	out, err = d.crictl(t, "exec", id, "sh", "-c", "echo no-tty; exit 0")
	if err != nil || !strings.Contains(out, "no-tty") {
		t.Errorf("crictl exec: %v\n%s", err, out)
	}
	d.stopRemove(t, pod)
}

func TestCreateContainerInStoppedSandboxFails(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("stopped")
	pod := d.runPod(t, cfg)
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtime.StopPodSandboxRequest{PodSandboxId: pod}); err != nil {
		t.Fatal(err)
	}
	_, err := d.RT.CreateContainer(ctxT(t), &runtime.CreateContainerRequest{PodSandboxId: pod, Config: busyboxContainer("late", "true"), SandboxConfig: cfg})
	if err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Errorf("create in a stopped sandbox: %v", err)
	}
	d.stopRemove(t, pod)
}

func TestImportedOCIArchiveRunsAContainer(t *testing.T) {
	d := startDaemon(t)
	archive := filepath.Join(t.TempDir(), "img.tar")
	ref, err := name.ParseReference("example.test/imported:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(archive, ref, busyboxImage(t, nil)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(peapodBin, "image", "import", archive, "--root", d.Root).CombinedOutput()
	if err != nil {
		t.Fatalf("peapod image import: %v\n%s", err, out)
	}
	img := runtime.NewImageServiceClient(d.conn)
	st, err := img.ImageStatus(ctxT(t), &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: "example.test/imported:v1"}})
	if err != nil || st.Image == nil {
		t.Fatalf("imported image not visible to the running daemon: %v %v", st, err)
	}
	cfg := podConfig("imported")
	pod := d.runPod(t, cfg)
	c := busyboxContainer("run", "sh", "-c", "exit 0")
	c.Image.Image = st.Image.Id // the kubelet passes the image id
	id := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, id)
	if s := d.waitExited(t, id, 10*time.Second); s.ExitCode != 0 || s.Reason != "Completed" {
		t.Errorf("container from imported image: exit %d reason %q", s.ExitCode, s.Reason)
	}
	d.stopRemove(t, pod)
}

func TestSeccompRuntimeDefaultFiltersAndUnconfinedDoesNot(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("seccomp")
	pod := d.runPod(t, cfg)
	run := func(name string, prof runtime.SecurityProfile_ProfileType, script string) *runtime.ContainerStatus {
		c := busyboxContainer(name, "sh", "-c", script)
		c.Linux.SecurityContext = &runtime.LinuxContainerSecurityContext{Seccomp: &runtime.SecurityProfile{ProfileType: prof}}
		id := d.createContainer(t, pod, cfg, c)
		d.startContainer(t, id)
		return d.waitExited(t, id, 15*time.Second)
	}
	// Filter mode 2 and unshare refused under RuntimeDefault.
	if st := run("default", runtime.SecurityProfile_RuntimeDefault, `grep -q '^Seccomp:.*2' /proc/self/status || exit 10; unshare -n true 2>/dev/null && exit 11; exit 0`); st.ExitCode != 0 {
		t.Errorf("RuntimeDefault: exit %d (10: no filter, 11: unshare allowed)", st.ExitCode)
	}
	if st := run("unconfined", runtime.SecurityProfile_Unconfined, `grep -q '^Seccomp:.*0' /proc/self/status || exit 10; exit 0`); st.ExitCode != 0 {
		t.Errorf("Unconfined: exit %d (10: a filter is installed)", st.ExitCode)
	}
	d.stopRemove(t, pod)
}

// TestOrphanRootfsIsSweptAtStart: a container root filesystem that no
// container record names (a daemon that died between the two, which
// CreateContainer writes side by side) is unmounted and removed when the
// daemon starts again; a recorded container's stays.
func TestOrphanRootfsIsSweptAtStart(t *testing.T) {
	d, _, _ := containerDaemon(t)
	cfg := podConfig("orphan-rootfs")
	pod := d.runPod(t, cfg)
	kept := d.createContainer(t, pod, cfg, busyboxContainer("kept", "sleep", "60"))
	gone := d.createContainer(t, pod, cfg, busyboxContainer("gone", "sleep", "60"))
	rootfsDir := func(id string) string { return filepath.Join(d.Root, "images", "containers", id) }
	for _, id := range []string{kept, gone} {
		if _, err := os.Stat(filepath.Join(rootfsDir(id), "merged", "bin")); err != nil {
			t.Fatalf("rootfs of %s not mounted: %v", id, err)
		}
	}
	d.kill9()
	// What a crash between the rootfs and the record leaves: the record
	// of `gone` is missing. (Its shim still knows it; that is not what
	// this checks.)
	recs, _ := filepath.Glob(filepath.Join(d.Root, "sandboxes", pod, "containers", gone+".json"))
	if len(recs) != 1 {
		t.Fatalf("container record of %s not found where expected: %v", gone, recs)
	}
	if err := os.Remove(recs[0]); err != nil {
		t.Fatal(err)
	}
	d.start()
	if _, err := os.Stat(rootfsDir(gone)); !os.IsNotExist(err) {
		t.Errorf("rootfs of the unrecorded container %s still there: %v", gone, err)
	}
	if strings.Contains(d.mountinfo(t), rootfsDir(gone)) {
		t.Errorf("rootfs of %s still mounted", gone)
	}
	if _, err := os.Stat(filepath.Join(rootfsDir(kept), "merged", "bin")); err != nil {
		t.Errorf("rootfs of the recorded container %s was touched: %v", kept, err)
	}
	d.stopRemove(t, pod)
}
