package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/integration/flowmeter"
	"peapod/internal/procfs"
)

// userNamespaceOf returns the user namespace of pid, as the link text.
func userNamespaceOf(pid int) string {
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
	return l
}

// assertNothingRunsAsRoot checks the real uid of every process of a
// rootless instance: the parent, the daemon, the namespace holder, the
// network helper, shims, pauses and containers. The last ones are found as
// the processes in the holder's user namespace; host uids there are the
// user's own or its subordinate ids, never 0.
func assertNothingRunsAsRoot(t *testing.T, d *daemon) int {
	t.Helper()
	ns := userNamespaceOf(d.holder(t))
	if ns == "" || ns == userNamespaceOf(os.Getpid()) {
		t.Fatalf("holder's user namespace %q is the host's", ns)
	}
	checked := 0
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		status, err := os.ReadFile(p + "/status")
		if err != nil {
			continue
		}
		ours := userNamespaceOf(pid) == ns || pid == d.cmd.Process.Pid
		if !ours {
			// The network helper runs in the host's user namespace.
			cmdline, _ := os.ReadFile(p + "/cmdline")
			ours = bytes.Contains(cmdline, []byte(fmt.Sprintf("/proc/%d/ns/net", d.holder(t))))
		}
		if !ours {
			continue
		}
		for _, l := range strings.Split(string(status), "\n") {
			if f := strings.Fields(l); len(f) == 5 && f[0] == "Uid:" {
				for _, id := range f[1:] {
					if id == "0" {
						cmd, _ := os.ReadFile(p + "/cmdline")
						t.Errorf("pid %d (%s) has uid 0 on the host: %s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}), l)
					}
				}
			}
		}
		checked++
	}
	return checked
}

// TestRootlessPodSandbox runs a shaped pod as an ordinary user: it gets an
// IP on the instance's bridge inside the user's network namespace, the tc
// setup of a root pod, a cgroup under the delegated subtree, no process
// with real uid 0, and leaves nothing behind, the namespaces included.
func TestRootlessPodSandbox(t *testing.T) {
	d := startDaemon(t, withRootless())
	before := d.snapshot(t)
	cfg := podConfig("rl")
	cfg.Annotations = map[string]string{"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "5M"}
	id := d.runPod(t, cfg)
	st, v := d.status(t, id)
	if st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("state %v", st.State)
	}
	if ip := st.GetNetwork().GetIp(); !strings.HasPrefix(ip, strings.TrimSuffix(d.Subnet, "0/24")) {
		t.Errorf("pod IP %q not in %s", ip, d.Subnet)
	}
	if v.Bandwidth == nil || v.Bandwidth.IFB == "" {
		t.Fatalf("no shaping recorded: %+v", v.Bandwidth)
	}
	qd := d.hostOut(t, "tc", "qdisc", "show", "dev", v.Bandwidth.HostVeth)
	if !strings.Contains(qd, "tbf") || !strings.Contains(qd, "ingress") {
		t.Errorf("host veth qdiscs: %s", qd)
	}
	if out := d.hostOut(t, "tc", "qdisc", "show", "dev", v.Bandwidth.IFB); !strings.Contains(out, "tbf") {
		t.Errorf("IFB qdiscs: %s", out)
	}
	// The pod answers on its IP from the instance's netns.
	if out, err := d.hostCmd(t, "ping", "-c1", "-W2", st.GetNetwork().GetIp()).CombinedOutput(); err != nil {
		t.Errorf("ping pod: %v: %s", err, out)
	}
	if v.Cgroup == nil || !strings.HasPrefix(v.Cgroup.PodPath, "/peapod-"+d.user.Name+"/") {
		t.Errorf("pod cgroup %+v not under the delegated /peapod-%s", v.Cgroup, d.user.Name)
	} else if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", v.Cgroup.PodPath)); err != nil {
		t.Errorf("pod memory cgroup: %v", err)
	}
	if n := assertNothingRunsAsRoot(t, d); n < 4 {
		t.Errorf("checked only %d processes: parent, daemon, holder, network helper and pause at least", n)
	}
	d.stopRemove(t, id)
	assertNoLeaks(t, before, d.snapshot(t))

	holder := d.holder(t)
	d.stop()
	if userNamespaceOf(holder) != "" {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", holder)); err == nil {
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", holder))
			if !strings.Contains(string(st), ") Z") {
				t.Errorf("namespace holder %d still runs after a stop with no pods", holder)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(d.State, "rootless", "holder.json")); !os.IsNotExist(err) {
		t.Errorf("holder record left: %v", err)
	}
}

// rootlessContainerDaemon is containerDaemon's rootless twin: the busybox
// image pulled through the registry mirror on the host's loopback.
func rootlessContainerDaemon(t *testing.T) (*daemon, runtime.ImageServiceClient) {
	t.Helper()
	reg := startRegistry(t)
	reg.push(t, "busybox:1", busyboxImage(t, nil))
	d := startDaemon(t, withRootlessRegistry(reg), withRootless())
	img := runtime.NewImageServiceClient(d.conn)
	if _, err := img.PullImage(ctxT(t), &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "example.test/busybox:1"}}); err != nil {
		t.Fatalf("pull through the mirror at the gateway: %v", err)
	}
	return d, img
}

// userDir is a directory of the instance that the rootless user owns, for
// volumes.
func (d *daemon) userDir(t testing.TB, name string) string {
	t.Helper()
	dir := filepath.Join(d.base, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, d.user.UID, d.user.GID); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRootlessContainers runs two containers in a rootless pod: they share
// a volume and talk over the pod's localhost; one runs as uid 1000, which
// is a subordinate id on the host; logs, ExecSync and exit codes work; and
// no process has real uid 0.
func TestRootlessContainers(t *testing.T) {
	d, _ := rootlessContainerDaemon(t)
	before := d.snapshot(t)
	shared := d.userDir(t, "shared")
	if err := os.Chmod(shared, 0o777); err != nil { // uid 1000 writes there too
		t.Fatal(err)
	}
	logDir := d.userDir(t, "logs")
	podCfg := podConfig("rlc")
	podCfg.LogDirectory = logDir
	pod := d.runPod(t, podCfg)

	server := busyboxContainer("server", "sh", "-c", "echo server-up; nc -l -p 7070 > /shared/received; echo done-serving >&2; sleep 3600")
	server.Mounts = []*runtime.Mount{{HostPath: shared, ContainerPath: "/shared"}}
	sid := d.createContainer(t, pod, podCfg, server)
	d.startContainer(t, sid)

	client := busyboxContainer("client", "sh", "-c", "id -u > /shared/uid; echo over-localhost > /shared/msg; for i in $(seq 100); do nc 127.0.0.1 7070 < /shared/msg && exit 3; sleep 0.1; done; exit 9")
	client.Mounts = []*runtime.Mount{{HostPath: shared, ContainerPath: "/shared"}}
	client.Linux.SecurityContext = &runtime.LinuxContainerSecurityContext{RunAsUser: &runtime.Int64Value{Value: 1000}}
	cid := d.createContainer(t, pod, podCfg, client)
	d.startContainer(t, cid)

	st := d.waitExited(t, cid, 20*time.Second)
	if st.ExitCode != 3 || st.Reason != "Error" {
		t.Errorf("client: exit %d reason %q, want 3 Error", st.ExitCode, st.Reason)
	}
	if b, _ := os.ReadFile(filepath.Join(shared, "uid")); strings.TrimSpace(string(b)) != "1000" {
		t.Errorf("client's uid inside: %q, want 1000", b)
	}
	// On the host, the file the uid-1000 container wrote belongs to the
	// subordinate id that 1000 maps to: not root, not the user.
	var fst syscall.Stat_t
	if err := syscall.Stat(filepath.Join(shared, "uid"), &fst); err != nil {
		t.Fatal(err)
	}
	if fst.Uid == 0 || int(fst.Uid) == d.user.UID {
		t.Errorf("file written by container uid 1000 has host uid %d", fst.Uid)
	}
	waitFileHolds(t, filepath.Join(shared, "received"), "over-localhost", 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	logb, _ := os.ReadFile(filepath.Join(logDir, "server.log"))
	if !strings.Contains(string(logb), " stdout F server-up") || !strings.Contains(string(logb), " stderr F done-serving") {
		t.Errorf("server log:\n%s", logb)
	}
	resp, err := d.RT.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: sid, Cmd: []string{"sh", "-c", "hostname; echo oops >&2; exit 7"}, Timeout: 10})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if strings.TrimSpace(string(resp.Stdout)) != "rlc" || strings.TrimSpace(string(resp.Stderr)) != "oops" || resp.ExitCode != 7 {
		t.Errorf("ExecSync: stdout %q stderr %q exit %d", resp.Stdout, resp.Stderr, resp.ExitCode)
	}
	assertNothingRunsAsRoot(t, d)
	d.stopRemove(t, pod)
	assertNoLeaks(t, before, d.snapshot(t))
}

// TestRootlessKill9KeepsPodsAndRestartJoinsThem kills the rootless daemon
// and its parent with SIGKILL while pods run. The namespaces outlive them
// (the holder), containers keep running and logging, a container that
// exits meanwhile reports its exit code, and the restarted instance joins
// the same namespaces: the pods keep their IPs and stay reachable.
func TestRootlessKill9KeepsPodsAndRestartJoinsThem(t *testing.T) {
	d, _ := rootlessContainerDaemon(t)
	s := startSurvivors(t, d, 2, "rlk", d.userDir(t, "logs"))
	holder := d.holder(t)
	s.kill9(t)
	if !procfs.Running(holder) {
		t.Fatalf("namespace holder %d died with the daemon", holder)
	}
	d.start()
	if h := d.holder(t); h != holder {
		t.Errorf("restarted instance made new namespaces (holder %d, was %d)", h, holder)
	}
	s.check(t)
	for i, p := range s.pods {
		if out, err := d.hostCmd(t, "ping", "-c1", "-W2", p.ip).CombinedOutput(); err != nil {
			t.Errorf("pod %d unreachable after restart: %v: %s", i, err, out)
		}
	}
	assertNothingRunsAsRoot(t, d)
	for _, p := range s.pods {
		d.stopRemove(t, p.pod)
	}
}

// TestRootlessStats: with the delegated cgroup subtree, a rootless
// container's CPU and memory and its pod's network traffic are accounted.
func TestRootlessStats(t *testing.T) {
	d, _ := rootlessContainerDaemon(t)
	cfg := podConfig("rls")
	pod := d.runPod(t, cfg)
	// 32 MiB in a shell variable, then some CPU, then idle.
	c := busyboxContainer("hog", "sh", "-c", "x=$(head -c 33554432 /dev/zero | tr '\\0' a); i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo ready; sleep 3600")
	id := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, id)
	st, _ := d.status(t, pod)
	if out, err := d.hostCmd(t, "ping", "-c3", "-i0.2", "-s1000", st.GetNetwork().GetIp()).CombinedOutput(); err != nil {
		t.Fatalf("ping pod: %v: %s", err, out)
	}
	var cs *runtime.ContainerStats
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := d.RT.ContainerStats(ctxT(t), &runtime.ContainerStatsRequest{ContainerId: id})
		if err != nil {
			t.Fatalf("ContainerStats: %v", err)
		}
		cs = resp.Stats
		if cs.GetMemory().GetWorkingSetBytes().GetValue() >= 32<<20 && cs.GetCpu().GetUsageCoreNanoSeconds().GetValue() > 50e6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container stats stay low: working set %d, cpu %d ns", cs.GetMemory().GetWorkingSetBytes().GetValue(), cs.GetCpu().GetUsageCoreNanoSeconds().GetValue())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if ws := cs.GetMemory().GetWorkingSetBytes().GetValue(); ws > 512<<20 {
		t.Errorf("working set %d bytes: implausible for a 32 MiB shell", ws)
	}
	ps, err := d.RT.PodSandboxStats(ctxT(t), &runtime.PodSandboxStatsRequest{PodSandboxId: pod})
	if err != nil {
		t.Fatalf("PodSandboxStats: %v", err)
	}
	net := ps.GetStats().GetLinux().GetNetwork()
	if net.GetDefaultInterface().GetRxBytes().GetValue() < 3000 || net.GetDefaultInterface().GetTxBytes().GetValue() < 3000 {
		t.Errorf("pod network stats after 3 pings of 1000 bytes: %+v", net.GetDefaultInterface())
	}
	if mem := ps.GetStats().GetLinux().GetMemory().GetWorkingSetBytes().GetValue(); mem < 32<<20 {
		t.Errorf("pod working set %d < the container's 32 MiB", mem)
	}
	if n := ps.GetStats().GetLinux().GetProcess().GetProcessCount().GetValue(); n < 2 {
		t.Errorf("pod process count %d: pause and the container at least", n)
	}
	d.stopRemove(t, pod)
}

// TestRootlessShapedPodThroughput measures a rootless pod's bandwidth
// limits the way the root test does (iperf3 between the instance's side of
// the bridge and the pod; the shaping tbf's byte counters): steady rate
// within 5 % of the limit, first second at most 1.5× it, both ways.
func TestRootlessShapedPodThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("throughput measurement takes ~15 s")
	}
	d := startDaemon(t, withRootless())
	gw, err := tputGateway(d.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	p := &tputPod{name: "rl-tput", ingress: "10M", egress: "5M", ingressBits: 10e6, egressBits: 5e6}
	tputRunPod(t, d, p)
	var b strings.Builder
	for _, dir := range []tputDir{tputIntoPod, tputOutOfPod} {
		r, err := tputMeasure(p, gw, dir, 6*time.Second)
		if err != nil {
			t.Fatalf("flow %v: %v", dir, err)
		}
		if err := tputCheck(r); err != nil {
			t.Errorf("flow %v: %v", dir, err)
		}
		b.WriteString("\n" + r.row())
	}
	t.Logf("rootless, cc %s:\n%s%s", flowmeter.SystemCC(), tputTableHeader, b.String())
}

// TestRootlessCyclesLeaveNothingBehind: 100 rootless pods of every kind,
// every fifth with a running container, come and go without a trace in
// the instance's namespaces, its cgroups or its dirs.
func TestRootlessCyclesLeaveNothingBehind(t *testing.T) {
	d, _ := rootlessContainerDaemon(t)
	runStopRemoveCycles(t, d, 100, func(i int, pod string, cfg *runtime.PodSandboxConfig) {
		if i%5 != 0 {
			return
		}
		id := d.createContainer(t, pod, cfg, busyboxContainer("c", "sleep", "3600"))
		d.startContainer(t, id)
	})
	if _, err := os.Stat(filepath.Join(d.Root, "images", "containers")); err != nil {
		t.Fatalf("image store layout changed, the check below would check nothing: %v", err)
	}
	if n, _ := filepath.Glob(filepath.Join(d.Root, "images", "containers", "*")); len(n) != 0 {
		t.Errorf("container writable layers left: %v", n)
	}
}

// TestRootlessWithPasta: the other network helper. pasta copies the host's
// addresses and routes into the namespace and, with host loopback allowed,
// maps the gateway address to the host's loopback: the image comes from
// the registry on the host's 127.0.0.1 through it, and a container runs.
func TestRootlessWithPasta(t *testing.T) {
	if _, err := exec.LookPath("pasta"); err != nil {
		t.Fatalf("pasta is needed (apt-get install passt; .ci/run installs it): %v", err)
	}
	gw := ""
	for _, l := range strings.Split(run(t, "ip", "-4", "route", "show", "default"), "\n") {
		if f := strings.Fields(l); len(f) > 2 && f[0] == "default" && f[1] == "via" {
			gw = f[2]
			break
		}
	}
	if gw == "" {
		t.Fatal("the host has no IPv4 default route, which pasta copies into the namespace")
	}
	reg := startRegistry(t)
	reg.push(t, "busybox:1", busyboxImage(t, nil))
	d := startDaemon(t, withRootlessRegistryVia(reg, "pasta", gw), withRootless())
	if b, _ := os.ReadFile(filepath.Join(d.State, "rootless", "holder.json")); !strings.Contains(string(b), `"net": "pasta"`) {
		t.Fatalf("holder record does not name pasta: %s", b)
	}
	img := runtime.NewImageServiceClient(d.conn)
	if _, err := img.PullImage(ctxT(t), &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: "example.test/busybox:1"}}); err != nil {
		t.Fatalf("pull through pasta's gateway %s: %v", gw, err)
	}
	cfg := podConfig("rlp")
	pod := d.runPod(t, cfg)
	id := d.createContainer(t, pod, cfg, busyboxContainer("c", "sleep", "3600"))
	d.startContainer(t, id)
	resp, err := d.RT.ExecSync(ctxT(t), &runtime.ExecSyncRequest{ContainerId: id, Cmd: []string{"hostname"}, Timeout: 10})
	if err != nil || strings.TrimSpace(string(resp.Stdout)) != "rlp" {
		t.Errorf("ExecSync hostname: %v %q", err, resp.GetStdout())
	}
	assertNothingRunsAsRoot(t, d)
	d.stopRemove(t, pod)
}

// TestRootlessImageImport: `peapod image import` run by the user goes into
// the running rootless node (the store's ids are the node's) and the
// daemon runs a container from the imported image.
func TestRootlessImageImport(t *testing.T) {
	d := startDaemon(t, withRootless())
	archive := filepath.Join(d.userDir(t, "archives"), "img.tar")
	ref, err := name.ParseReference("example.test/imported:rl")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(archive, ref, busyboxImage(t, nil)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(archive, d.user.UID, d.user.GID); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(d.exe, "image", "import", archive, "--root", d.Root, "--state", d.State)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	d.user.asUser(cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("peapod image import as %s: %v\n%s", d.user.Name, err, out)
	}
	img := runtime.NewImageServiceClient(d.conn)
	st, err := img.ImageStatus(ctxT(t), &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: "example.test/imported:rl"}})
	if err != nil || st.Image == nil {
		t.Fatalf("imported image not visible to the rootless daemon: %v %v", st, err)
	}
	cfg := podConfig("rlimp")
	pod := d.runPod(t, cfg)
	c := busyboxContainer("run", "sh", "-c", "exit 0")
	c.Image.Image = st.Image.Id
	id := d.createContainer(t, pod, cfg, c)
	d.startContainer(t, id)
	if s := d.waitExited(t, id, 10*time.Second); s.ExitCode != 0 {
		t.Errorf("container from the imported image: exit %d reason %q", s.ExitCode, s.Reason)
	}
	d.stopRemove(t, pod)

	// With no rootless instance running, it says so.
	d.stop()
	cmd = exec.Command(d.exe, "image", "import", archive, "--root", d.Root, "--state", d.State)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	d.user.asUser(cmd)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "start `peapod serve` first") {
		t.Errorf("import with no instance running: %v\n%s", err, out)
	}
}
