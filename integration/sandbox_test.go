package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestRunPodSandboxGivesPodItsOwnNamespacesAndFiles(t *testing.T) {
	d := startDaemon(t)
	before := d.snapshot(t)
	cfg := podConfig("web")
	cfg.Hostname = "web-0"
	cfg.DnsConfig = &runtime.DNSConfig{
		Servers:  []string{"10.96.0.10"},
		Searches: []string{"it.svc.cluster.local", "svc.cluster.local"},
		Options:  []string{"ndots:5", "edns0"},
	}
	cfg.Annotations = map[string]string{"note": "kept as given"}
	cfg.Linux.Sysctls = map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "0",
		"kernel.shm_rmid_forced":              "1",
	}
	id := d.runPod(t, cfg)

	st, v := d.status(t, id)
	if st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("state %v, want READY", st.State)
	}
	if st.Metadata.Name != "web" || st.Metadata.Uid != cfg.Metadata.Uid || st.Labels["app"] != "web" || st.Annotations["note"] != "kept as given" {
		t.Errorf("metadata/labels/annotations not returned unchanged: %+v", st)
	}
	if st.CreatedAt <= 0 || time.Since(time.Unix(0, st.CreatedAt)) > time.Minute {
		t.Errorf("created_at %d is not a recent timestamp", st.CreatedAt)
	}
	_, subnet, _ := net.ParseCIDR(d.Subnet)
	if ip := net.ParseIP(st.Network.GetIp()); ip == nil || !subnet.Contains(ip) {
		t.Fatalf("pod IP %q not in %s", st.Network.GetIp(), d.Subnet)
	}
	if v.PID <= 0 || v.Namespaces["net"] == "" || v.Namespaces["ipc"] == "" || v.Namespaces["uts"] == "" {
		t.Fatalf("verbose info lacks pid or namespace pins: %+v", v)
	}
	if v.Network == nil || len(v.Network.CNIResult) == 0 {
		t.Fatalf("verbose info lacks the CNI result: %+v", v)
	}

	// The pins are nsfs bind mounts, and they are the pause's namespaces.
	for kind, pin := range v.Namespaces {
		pinIno := inode(t, pin)
		procIno := inode(t, fmt.Sprintf("/proc/%d/ns/%s", v.PID, kind))
		if pinIno != procIno {
			t.Errorf("%s pin %s is inode %d, pause has %d", kind, pin, pinIno, procIno)
		}
		if hostIno := inode(t, "/proc/self/ns/"+kind); hostIno == pinIno {
			t.Errorf("%s namespace of the pod is the host's", kind)
		}
	}

	// Hostname in the UTS namespace, and the files for containers.
	if got := strings.TrimSpace(run(t, "nsenter", "--uts="+v.Namespaces["uts"], "hostname")); got != "web-0" {
		t.Errorf("hostname in pod UTS namespace = %q, want web-0", got)
	}
	if b, _ := os.ReadFile(filepath.Join(v.RuntimeDir, "hostname")); strings.TrimSpace(string(b)) != "web-0" {
		t.Errorf("hostname file = %q", b)
	}
	resolv, _ := os.ReadFile(filepath.Join(v.RuntimeDir, "resolv.conf"))
	for _, want := range []string{"nameserver 10.96.0.10", "search it.svc.cluster.local svc.cluster.local", "options ndots:5 edns0"} {
		if !strings.Contains(string(resolv), want) {
			t.Errorf("resolv.conf lacks %q:\n%s", want, resolv)
		}
	}
	hosts, _ := os.ReadFile(filepath.Join(v.RuntimeDir, "hosts"))
	if !strings.Contains(string(hosts), "localhost") || !strings.Contains(string(hosts), st.Network.Ip+"\tweb-0") {
		t.Errorf("hosts file lacks localhost or the pod's own entry:\n%s", hosts)
	}
	if mi := mountLine(filepath.Join(v.RuntimeDir, "shm")); !strings.Contains(mi, "tmpfs") || !strings.Contains(mi, "size=65536k") {
		t.Errorf("pod shm is not a 64 MiB tmpfs: %q", mi)
	}

	// Sysctls were set inside the pod, not on the host.
	if got := strings.TrimSpace(run(t, "nsenter", "--net="+v.Namespaces["net"], "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")); got != "0" {
		t.Errorf("pod net.ipv4.ip_unprivileged_port_start = %s, want 0", got)
	}
	if host, _ := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start"); strings.TrimSpace(string(host)) == "0" {
		t.Errorf("the host's ip_unprivileged_port_start changed to 0")
	}
	if got := strings.TrimSpace(run(t, "nsenter", "--ipc="+v.Namespaces["ipc"], "cat", "/proc/sys/kernel/shm_rmid_forced")); got != "1" {
		t.Errorf("pod kernel.shm_rmid_forced = %s, want 1", got)
	}

	// The pause is in the pod cgroup.
	if v.Cgroup == nil || v.Cgroup.PausePath == "" {
		t.Fatalf("verbose info lacks the cgroup: %+v", v)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", v.PID))
	if !strings.Contains(string(cg), v.Cgroup.PausePath) {
		t.Errorf("pause %d is not in %s:\n%s", v.PID, v.Cgroup.PausePath, cg)
	}

	// Two processes in the pod's netns talk over localhost, and the host
	// reaches the pod on its IP.
	srv := nsenterNet(v.Namespaces["net"], "busybox", "nc", "-l", "-p", "8080")
	out := &strings.Builder{}
	srv.Stdout = out
	holdStdin(t, srv)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitListening(t, v.Namespaces["net"], 8080)
	cli := nsenterNet(v.Namespaces["net"], "sh", "-c", "echo hello-localhost | busybox nc 127.0.0.1 8080")
	if b, err := cli.CombinedOutput(); err != nil {
		t.Fatalf("client in the pod: %v %s", err, b)
	}
	_ = srv.Wait()
	if !strings.Contains(out.String(), "hello-localhost") {
		t.Errorf("server in the pod got %q over localhost", out.String())
	}
	srv2 := nsenterNet(v.Namespaces["net"], "busybox", "nc", "-l", "-p", "8081")
	out2 := &strings.Builder{}
	srv2.Stdout = out2
	holdStdin(t, srv2)
	if err := srv2.Start(); err != nil {
		t.Fatal(err)
	}
	waitListening(t, v.Namespaces["net"], 8081)
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(st.Network.Ip, "8081"), 5*time.Second)
	if err != nil {
		t.Fatalf("host to pod IP: %v", err)
	}
	fmt.Fprint(conn, "hello-from-host\n")
	conn.Close()
	_ = srv2.Wait()
	if !strings.Contains(out2.String(), "hello-from-host") {
		t.Errorf("pod got %q from the host", out2.String())
	}

	d.stopRemove(t, id)
	assertNoLeaks(t, before, d.snapshot(t))
	if _, err := os.Stat(v.Namespaces["net"]); err == nil {
		t.Errorf("net pin %s still exists after removal", v.Namespaces["net"])
	}
	if dirs := d.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("sandbox dirs left: %v", dirs)
	}
}

func inode(t testing.TB, path string) uint64 {
	t.Helper()
	var st syscallStat
	if err := stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

func mountLine(path string) string {
	for _, l := range readLines("/proc/self/mountinfo") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == path {
			return l
		}
	}
	return ""
}

// holdStdin gives a `busybox nc -l` server a stdin that stays open until
// the test ends: at EOF on stdin it closes the connection it accepts, and
// data the client sends a moment later is lost.
func holdStdin(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = r
	t.Cleanup(func() { r.Close(); w.Close() })
}

// waitListening waits until a TCP port listens inside the netns.
func waitListening(t testing.TB, pin string, port int) {
	t.Helper()
	hex := fmt.Sprintf(":%04X", port)
	for i := 0; i < 200; i++ {
		// busybox nc listens on :: when IPv6 exists, so read both tables.
		out, _ := exec.Command("nsenter", "--net="+pin, "cat", "/proc/net/tcp", "/proc/net/tcp6").Output()
		for _, l := range strings.Split(string(out), "\n") {
			f := strings.Fields(l)
			if len(f) > 3 && strings.HasSuffix(f[1], hex) && f[3] == "0A" {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %d in %s", port, pin)
}

func TestHostPortReachesPodFromHostLoopback(t *testing.T) {
	d := startDaemon(t)
	before := d.snapshot(t)
	cfg := podConfig("hp")
	hostPort := 20000 + int(netSeq.Load())%1000
	cfg.PortMappings = []*runtime.PortMapping{{Protocol: runtime.Protocol_TCP, ContainerPort: 80, HostPort: int32(hostPort)}}
	id := d.runPod(t, cfg)
	_, v := d.status(t, id)
	srv := nsenterNet(v.Namespaces["net"], "busybox", "nc", "-l", "-p", "80")
	out := &strings.Builder{}
	srv.Stdout = out
	holdStdin(t, srv)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitListening(t, v.Namespaces["net"], 80)
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(hostPort), 5*time.Second)
	if err != nil {
		t.Fatalf("dial hostPort %d on 127.0.0.1: %v", hostPort, err)
	}
	fmt.Fprint(conn, "via-hostport\n")
	conn.Close()
	_ = srv.Wait()
	if !strings.Contains(out.String(), "via-hostport") {
		t.Errorf("pod got %q through the hostPort", out.String())
	}
	d.stopRemove(t, id)
	assertNoLeaks(t, before, d.snapshot(t))
}

func TestPIDNamespacePodMakesPausePID1(t *testing.T) {
	d := startDaemon(t)
	cfg := podConfig("pidpod")
	cfg.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Pid: runtime.NamespaceMode_POD}}
	id := d.runPod(t, cfg)
	st, v := d.status(t, id)
	if st.Linux.Namespaces.Options.Pid != runtime.NamespaceMode_POD {
		t.Errorf("status pid mode %v", st.Linux.Namespaces.Options.Pid)
	}
	nspid := ""
	for _, l := range readLines(fmt.Sprintf("/proc/%d/status", v.PID)) {
		if strings.HasPrefix(l, "NSpid:") {
			nspid = l
		}
	}
	f := strings.Fields(nspid)
	if len(f) != 3 || f[2] != "1" {
		t.Fatalf("pause NSpid = %q, want it to be PID 1 in its own namespace", nspid)
	}
	if v.Namespaces["pid"] == "" {
		t.Errorf("pid namespace not pinned: %v", v.Namespaces)
	}
	d.stopRemove(t, id)
}

func TestHostNetworkPodSharesHostNetns(t *testing.T) {
	d := startDaemon(t)
	before := d.snapshot(t)
	cfg := podConfig("hostnet")
	cfg.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{
		Network: runtime.NamespaceMode_NODE, Ipc: runtime.NamespaceMode_NODE, Pid: runtime.NamespaceMode_NODE,
	}}
	id := d.runPod(t, cfg)
	st, v := d.status(t, id)
	if st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("state %v", st.State)
	}
	if st.Network.GetIp() != "" || v.Network != nil {
		t.Errorf("host-network pod got a CNI attachment: ip=%q %+v", st.Network.GetIp(), v.Network)
	}
	for _, kind := range []string{"net", "ipc", "pid"} {
		if inode(t, fmt.Sprintf("/proc/%d/ns/%s", v.PID, kind)) != inode(t, "/proc/self/ns/"+kind) {
			t.Errorf("host-%s pod does not share the host's %s namespace", kind, kind)
		}
	}
	d.stopRemove(t, id)
	assertNoLeaks(t, before, d.snapshot(t))
}

func TestKill9AndRestartKeepsPodReadyWithSameIP(t *testing.T) {
	d := startDaemon(t)
	before := d.snapshot(t)
	id := d.runPod(t, podConfig("survivor"))
	st1, v1 := d.status(t, id)
	d.restart()
	st2, v2 := d.status(t, id)
	if st2.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("after kill -9 and restart: state %v (reason in log)", st2.State)
	}
	if st2.Network.Ip != st1.Network.Ip || v2.PID != v1.PID {
		t.Errorf("after restart ip %s pid %d, before ip %s pid %d", st2.Network.Ip, v2.PID, st1.Network.Ip, v1.PID)
	}
	// A new pod after the restart gets a different IP (IPAM state survived).
	id2 := d.runPod(t, podConfig("after-restart"))
	st3, _ := d.status(t, id2)
	if st3.Network.Ip == st1.Network.Ip {
		t.Errorf("new pod reuses the IP %s of a running pod", st3.Network.Ip)
	}
	// The pause dies while the daemon is down: NotReady after restart.
	d.kill9()
	_ = syscallKill(v1.PID)
	waitGone(t, v1.PID)
	d.start()
	st4, _ := d.status(t, id)
	if st4.State != runtime.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("pod whose pause died during downtime is %v, want NOTREADY", st4.State)
	}
	d.stopRemove(t, id)
	d.stopRemove(t, id2)
	assertNoLeaks(t, before, d.snapshot(t))
}

func TestPauseDeathMakesSandboxNotReady(t *testing.T) {
	d := startDaemon(t)
	id := d.runPod(t, podConfig("fragile"))
	_, v := d.status(t, id)
	_ = syscallKill(v.PID)
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := d.status(t, id)
		if st.State == runtime.PodSandboxState_SANDBOX_NOTREADY {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox still %v after its pause was killed", st.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.stopRemove(t, id)
}

func TestRunStopRemoveCyclesLeaveNothingBehind(t *testing.T) {
	runStopRemoveCycles(t, startDaemon(t), 200, nil)
}

// runStopRemoveCycles runs, stops and removes pods of every kind (own PID
// namespace, hostPorts, shaping) and checks that the host is as before.
// perCycle, when set, runs in each pod before it is stopped.
func runStopRemoveCycles(t *testing.T, d *daemon, cycles int, perCycle func(i int, pod string, cfg *runtime.PodSandboxConfig)) {
	t.Helper()
	// One pod first so that lazily created, kept objects (the bridge, the
	// default cgroup parent) exist before the baseline.
	warm := d.runPod(t, podConfig("warm"))
	d.stopRemove(t, warm)
	before := d.snapshot(t)
	start := time.Now()
	for i := 0; i < cycles; i++ {
		cfg := podConfig(fmt.Sprintf("cycle-%d", i))
		switch i % 4 {
		case 1:
			cfg.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Pid: runtime.NamespaceMode_POD}}
		case 2:
			cfg.PortMappings = []*runtime.PortMapping{{ContainerPort: 80, HostPort: int32(21000 + i)}}
		case 3:
			cfg.Annotations = map[string]string{"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "10M"}
		}
		id := d.runPod(t, cfg)
		if perCycle != nil {
			perCycle(i, id, cfg)
		}
		d.stopRemove(t, id)
	}
	t.Logf("%d run/stop/remove cycles in %v", cycles, time.Since(start))
	assertNoLeaks(t, before, d.snapshot(t))
	if dirs := d.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("sandbox dirs left: %v", dirs)
	}
}

func TestConcurrentRunPodSandboxAllSucceed(t *testing.T) {
	d := startDaemon(t)
	before := d.snapshot(t)
	const n = 20
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: podConfig(fmt.Sprintf("conc-%d", i))})
			errs[i] = err
			if err == nil {
				ids[i] = resp.PodSandboxId
			}
		}(i)
	}
	wg.Wait()
	ips := map[string]bool{}
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			t.Errorf("pod %d: %v", i, errs[i])
			continue
		}
		st, _ := d.status(t, ids[i])
		if ips[st.Network.Ip] {
			t.Errorf("duplicate pod IP %s", st.Network.Ip)
		}
		ips[st.Network.Ip] = true
	}
	list, err := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{Filter: &runtime.PodSandboxFilter{
		State: &runtime.PodSandboxStateValue{State: runtime.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil || len(list.Items) != n {
		t.Fatalf("ListPodSandbox READY: %d items, err %v", len(list.GetItems()), err)
	}
	// Stop and remove concurrently too.
	for _, id := range ids {
		if id == "" {
			continue
		}
		wg.Add(1)
		go func(id string) { defer wg.Done(); d.stopRemove(t, id) }(id)
	}
	wg.Wait()
	assertNoLeaks(t, before, d.snapshot(t))
}

func TestSameMetadataReturnsSameSandbox(t *testing.T) {
	d := startDaemon(t)
	cfg := podConfig("idem")
	var wg sync.WaitGroup
	ids := make([]string, 5)
	for i := range ids {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			resp, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: cfg})
			if err != nil {
				t.Errorf("run %d: %v", i, err)
				return
			}
			ids[i] = resp.PodSandboxId
		}(i)
	}
	wg.Wait()
	for _, id := range ids[1:] {
		if id != ids[0] {
			t.Fatalf("in-flight duplicates got different ids: %v", ids)
		}
	}
	again := d.runPod(t, cfg)
	if again != ids[0] {
		t.Errorf("a retry after completion got %s, want %s", again, ids[0])
	}
	list, _ := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{})
	if len(list.Items) != 1 {
		t.Errorf("%d sandboxes listed, want 1", len(list.Items))
	}
	// A new attempt is a new sandbox.
	cfg2 := podConfig("idem")
	cfg2.Metadata.Uid = cfg.Metadata.Uid
	cfg2.Metadata.Attempt = 1
	id2 := d.runPod(t, cfg2)
	if id2 == ids[0] {
		t.Errorf("attempt 1 returned the attempt-0 sandbox")
	}
	d.stopRemove(t, ids[0])
	d.stopRemove(t, id2)
}

func TestStopAndRemoveAreIdempotent(t *testing.T) {
	d := startDaemon(t)
	ctx := ctxT(t)
	unknown := strings.Repeat("ab", 32)
	if _, err := d.RT.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: unknown}); err != nil {
		t.Errorf("stop unknown: %v", err)
	}
	if _, err := d.RT.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: unknown}); err != nil {
		t.Errorf("remove unknown: %v", err)
	}
	id := d.runPod(t, podConfig("twice"))
	for i := 0; i < 2; i++ {
		if _, err := d.RT.StopPodSandbox(ctx, &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Errorf("stop #%d: %v", i+1, err)
		}
	}
	st, _ := d.status(t, id)
	if st.State != runtime.PodSandboxState_SANDBOX_NOTREADY || st.Network.GetIp() != "" {
		t.Errorf("stopped pod: state %v ip %q", st.State, st.Network.GetIp())
	}
	for i := 0; i < 2; i++ {
		if _, err := d.RT.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
			t.Errorf("remove #%d: %v", i+1, err)
		}
	}
	_, err := d.RT.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: id})
	if status.Code(err) != codes.NotFound {
		t.Errorf("status of removed sandbox: %v, want NotFound", err)
	}
}

func TestListPodSandboxFilters(t *testing.T) {
	d := startDaemon(t)
	a := podConfig("list-a")
	a.Labels = map[string]string{"tier": "front", "app": "a"}
	b := podConfig("list-b")
	b.Labels = map[string]string{"tier": "back", "app": "b"}
	ida, idb := d.runPod(t, a), d.runPod(t, b)
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtime.StopPodSandboxRequest{PodSandboxId: idb}); err != nil {
		t.Fatal(err)
	}
	list := func(f *runtime.PodSandboxFilter) []string {
		resp, err := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, p := range resp.Items {
			ids = append(ids, p.Id)
		}
		return ids
	}
	check := func(name string, got []string, want ...string) {
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: got %v, want %v", name, got, want)
		}
	}
	check("all", list(nil), ida, idb)
	check("by id", list(&runtime.PodSandboxFilter{Id: ida}), ida)
	check("by id prefix", list(&runtime.PodSandboxFilter{Id: idb[:12]}), idb)
	check("ready", list(&runtime.PodSandboxFilter{State: &runtime.PodSandboxStateValue{State: runtime.PodSandboxState_SANDBOX_READY}}), ida)
	check("notready", list(&runtime.PodSandboxFilter{State: &runtime.PodSandboxStateValue{State: runtime.PodSandboxState_SANDBOX_NOTREADY}}), idb)
	check("label", list(&runtime.PodSandboxFilter{LabelSelector: map[string]string{"tier": "back"}}), idb)
	check("labels AND", list(&runtime.PodSandboxFilter{LabelSelector: map[string]string{"tier": "back", "app": "a"}}))
	d.stopRemove(t, ida)
	d.stopRemove(t, idb)
}

func TestStatusReportsRuntimeAndNetworkReadiness(t *testing.T) {
	d := startDaemon(t)
	resp, err := d.RT.Status(ctxT(t), &runtime.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	conds := map[string]*runtime.RuntimeCondition{}
	for _, c := range resp.Status.Conditions {
		conds[c.Type] = c
	}
	if !conds[runtime.RuntimeReady].GetStatus() || !conds[runtime.NetworkReady].GetStatus() {
		t.Errorf("conditions: %v", resp.Status.Conditions)
	}
	cfg, err := d.RT.RuntimeConfig(ctxT(t), &runtime.RuntimeConfigRequest{})
	if err != nil || cfg.Linux.CgroupDriver != runtime.CgroupDriver_CGROUPFS {
		t.Errorf("RuntimeConfig: %v %v", cfg, err)
	}
	v, err := d.RT.Version(ctxT(t), &runtime.VersionRequest{})
	if err != nil || v.RuntimeName != "peapod" || v.RuntimeApiVersion != "v1" {
		t.Errorf("Version: %v %v", v, err)
	}

	// No plugins: NetworkReady false with a reason, RuntimeReady still true.
	empty := t.TempDir()
	d2 := startDaemon(t, withBinDirs(empty))
	resp, err = d2.RT.Status(ctxT(t), &runtime.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range resp.Status.Conditions {
		if c.Type == runtime.NetworkReady && (c.Status || c.Reason == "" || !strings.Contains(c.Message, "not found")) {
			t.Errorf("NetworkReady with no plugins: %+v", c)
		}
		if c.Type == runtime.RuntimeReady && !c.Status {
			t.Errorf("RuntimeReady false: %+v", c)
		}
	}
}

// TestCNIFailureRollsBackEverything uses a CNI plugin that always fails ADD:
// a real plugin binary cannot be made to fail on demand, so this one is a
// shell script that speaks the CNI error protocol.
func TestCNIFailureRollsBackEverything(t *testing.T) {
	bin := t.TempDir()
	writeScript(t, filepath.Join(bin, "failer"), `#!/bin/sh
cat >/dev/null
if [ "$CNI_COMMAND" = "ADD" ]; then
  echo '{"cniVersion":"1.0.0","code":11,"msg":"failer refuses ADD on purpose"}'
  exit 1
fi
if [ "$CNI_COMMAND" = "VERSION" ]; then
  echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}'
fi
exit 0
`)
	conf := t.TempDir()
	if err := os.WriteFile(filepath.Join(conf, "10-failer.conflist"), []byte(`{"cniVersion":"1.0.0","name":"failnet","plugins":[{"type":"failer"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, withConfDir(conf), withBinDirs(bin+":"+cniBinDir))
	before := d.snapshot(t)
	_, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: podConfig("doomed")})
	if err == nil || !strings.Contains(err.Error(), "failer refuses ADD") {
		t.Fatalf("RunPodSandbox with a failing plugin: %v", err)
	}
	list, _ := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{})
	if len(list.GetItems()) != 0 {
		t.Errorf("failed sandbox is listed: %v", list.Items)
	}
	assertNoLeaks(t, before, d.snapshot(t))
	if dirs := d.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("sandbox dirs left: %v", dirs)
	}
}

// TestKill9DuringCreationRollsBackAtRestart kills the daemon while a slow
// CNI ADD (a script that sleeps, then delegates to the real bridge plugin)
// is in flight.
func TestKill9DuringCreationRollsBackAtRestart(t *testing.T) {
	bin := t.TempDir()
	writeScript(t, filepath.Join(bin, "slowbridge"), `#!/bin/sh
if [ "$CNI_COMMAND" = "ADD" ]; then sleep 3; fi
exec `+filepath.Join(cniBinDir, "bridge")+`
`)
	d := startDaemon(t, withBinDirs(bin+":"+cniBinDir))
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"slow-%s","plugins":[{"type":"slowbridge","bridge":"%s","isGateway":true,"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"%s"}]]}}]}`,
		d.Bridge, d.Bridge, filepath.Join(d.Root, "cni", "networks"), d.Subnet)
	if err := os.WriteFile(filepath.Join(d.ConfDir, "10-slow.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	warm := d.runPod(t, podConfig("warm"))
	d.stopRemove(t, warm)
	before := d.snapshot(t)
	go func() {
		_, _ = d.RT.RunPodSandbox(context.Background(), &runtime.RunPodSandboxRequest{Config: podConfig("interrupted")})
	}()
	time.Sleep(1500 * time.Millisecond)
	d.kill9()
	time.Sleep(3 * time.Second) // the orphaned plugin finishes its ADD
	d.start()
	list, err := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("interrupted sandbox still listed: %v", list.Items)
	}
	assertNoLeaks(t, before, d.snapshot(t))
	if dirs := d.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("sandbox dirs left: %v", dirs)
	}
}

// TestCgroupPathPluginFindsThePodCgroup: the pod cgroup is made beside the
// CNI ADD, unless a plugin declares the cgroupPath capability (eBPF
// plugins attach to the pod's cgroup): then it is made first. The test
// plugin fails the ADD if the cgroup it is handed does not exist yet,
// then hands over to the real bridge plugin.
func TestCgroupPathPluginFindsThePodCgroup(t *testing.T) {
	bin := t.TempDir()
	writeScript(t, filepath.Join(bin, "cgcheck"), `#!/bin/sh
conf=$(cat)
if [ "$CNI_COMMAND" = "ADD" ]; then
  cg=$(printf '%s' "$conf" | grep -o '"cgroupPath":"[^"]*"' | cut -d'"' -f4)
  if [ -z "$cg" ]; then
    echo '{"cniVersion":"1.0.0","code":11,"msg":"cgcheck: no cgroupPath in runtimeConfig"}'; exit 1
  fi
  if [ ! -d "/sys/fs/cgroup/pids$cg" ] && [ ! -f "/sys/fs/cgroup$cg/cgroup.procs" ]; then
    echo '{"cniVersion":"1.0.0","code":11,"msg":"cgcheck: pod cgroup '"$cg"' does not exist during ADD"}'; exit 1
  fi
fi
printf '%s' "$conf" | exec `+filepath.Join(cniBinDir, "bridge")+`
`)
	d := startDaemon(t, withBinDirs(bin+":"+cniBinDir))
	before := d.snapshot(t)
	// The embedded network asks for no cgroup: made beside the ADD.
	beside := d.runPod(t, podConfig("cg-beside"))
	d.stopRemove(t, beside)
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"cg-%s","plugins":[{"type":"cgcheck","capabilities":{"cgroupPath":true},"bridge":"%s","isGateway":true,"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"%s"}]]}}]}`,
		d.Bridge, d.Bridge, filepath.Join(d.Root, "cni", "networks"), d.Subnet)
	if err := os.WriteFile(filepath.Join(d.ConfDir, "10-cg.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var first []string
	for i := range 3 {
		id := d.runPod(t, podConfig(fmt.Sprintf("cg-%d", i)))
		d.stopRemove(t, id)
		first = append(first, id)
	}
	assertNoLeaks(t, before, d.snapshot(t))
	// The plugin's check passes by timing too when the cgroup is made
	// beside the ADD (making it is quicker than starting a shell), so the
	// order is read from the debug log's steps, which name a "cgroup"
	// step only when the cgroup is made before the ADD.
	b, err := os.ReadFile(d.logPath)
	if err != nil {
		t.Fatal(err)
	}
	madeFirst := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `msg="RunPodSandbox steps"`) {
			continue
		}
		f := strings.Fields(line[strings.Index(line, " id=")+1:])
		madeFirst[strings.TrimPrefix(f[0], "id=")] = strings.Contains(line, " cgroup=")
	}
	for _, id := range first {
		if made, ok := madeFirst[id]; !ok || !made {
			t.Errorf("pod %s on a network with the cgroupPath capability: cgroup made first %v (steps logged: %v)", id, made, ok)
		}
	}
	if made, ok := madeFirst[beside]; !ok || made {
		t.Errorf("pod %s on the embedded network: cgroup made first %v (steps logged: %v), want beside the ADD", beside, made, ok)
	}
}

func writeScript(t testing.TB, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestTwoInstancesRunSideBySide(t *testing.T) {
	d1 := startDaemon(t)
	d2 := startDaemon(t)
	id1 := d1.runPod(t, podConfig("side-1"))
	id2 := d2.runPod(t, podConfig("side-2"))
	l1, _ := d1.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{})
	l2, _ := d2.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{})
	if len(l1.Items) != 1 || l1.Items[0].Id != id1 || len(l2.Items) != 1 || l2.Items[0].Id != id2 {
		t.Fatalf("instances see each other's pods: %v / %v", l1.Items, l2.Items)
	}
	// Restarting one instance must not touch the other's pods.
	d1.restart()
	st2, _ := d2.status(t, id2)
	if st2.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Errorf("instance 2's pod is %v after instance 1 restarted", st2.State)
	}
	d1.stopRemove(t, id1)
	d2.stopRemove(t, id2)
}

// slowNetwork writes a conflist whose plugin is the real bridge plugin
// behind a script that can delay or fail chosen commands; scripts are the
// only way to make a real plugin slow or broken on demand.
func slowNetwork(t *testing.T, d *daemon, script string) {
	t.Helper()
	bin := filepath.Join(d.Root, "..", "scriptbin")
	_ = os.MkdirAll(bin, 0o755)
	writeScript(t, filepath.Join(bin, "wrapbridge"), "#!/bin/sh\n"+script+"\nexec "+filepath.Join(cniBinDir, "bridge")+"\n")
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"wrap-%s","plugins":[{"type":"wrapbridge","bridge":"%s","isGateway":true,"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"%s"}]]}}]}`,
		d.Bridge, d.Bridge, filepath.Join(d.Root, "cni", "networks"), d.Subnet)
	if err := os.WriteFile(filepath.Join(d.ConfDir, "10-wrap.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSlowTeardownDoesNotBlockOtherPods(t *testing.T) {
	d := startDaemon(t)
	d.restartWith(withBinDirs(filepath.Join(d.Root, "..", "scriptbin") + ":" + cniBinDir))
	slowNetwork(t, d, `if [ "$CNI_COMMAND" = "DEL" ] && [ "$K8S_POD_NAME" = "slow" ] || echo "$CNI_ARGS" | grep -q K8S_POD_NAME=slow\;; then [ "$CNI_COMMAND" = "DEL" ] && sleep 4; fi`)
	slow := d.runPod(t, podConfig("slow"))
	stopped := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		_, _ = d.RT.StopPodSandbox(context.Background(), &runtime.StopPodSandboxRequest{PodSandboxId: slow})
		stopped <- time.Since(start)
	}()
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	fast := d.runPod(t, podConfig("fast"))
	st, _ := d.status(t, fast)
	took := time.Since(start)
	if st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("fast pod %v", st.State)
	}
	slowTook := <-stopped
	if slowTook < 3*time.Second {
		t.Fatalf("the slow DEL took %v: the test plugin did not slow it down", slowTook)
	}
	if took > 2*time.Second {
		t.Errorf("RunPodSandbox took %v while another pod's teardown was slow (%v)", took, slowTook)
	}
	d.stopRemove(t, fast)
	d.stopRemove(t, slow)
}

func TestFailedCNIDelIsRetriedAndNeverBlocksRemoval(t *testing.T) {
	d := startDaemon(t, withArgs("--cni-del-retry-interval", "500ms"))
	d.restartWith(withBinDirs(filepath.Join(d.Root, "..", "scriptbin") + ":" + cniBinDir))
	marker := filepath.Join(d.Root, "..", "plugin-fixed")
	slowNetwork(t, d, `if [ "$CNI_COMMAND" = "DEL" ] && [ ! -e `+marker+` ]; then cat >/dev/null; echo '{"cniVersion":"1.0.0","code":999,"msg":"DEL broken on purpose"}'; exit 1; fi`)
	id := d.runPod(t, podConfig("stuck"))
	st, _ := d.status(t, id)
	ip := st.Network.Ip
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatalf("stop with a failing DEL: %v", err)
	}
	_, v := d.status(t, id)
	_ = v
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatalf("remove with a failing DEL: %v", err)
	}
	list, _ := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{})
	if len(list.GetItems()) != 0 {
		t.Fatalf("removed sandbox still listed")
	}
	// The IP stays allocated until the DEL gets through...
	ipFile := filepath.Join(d.Root, "cni", "networks", "wrap-"+d.Bridge, ip)
	if _, err := os.Stat(ipFile); err != nil {
		t.Fatalf("allocation %s released although DEL failed: %v", ipFile, err)
	}
	// ...also across a restart, and then the retry loop finishes the job.
	d.restart()
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err1 := os.Stat(ipFile)
		dirs := d.sandboxDirs(t)
		if os.IsNotExist(err1) && len(dirs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pending DEL not retried: ip file err %v, dirs %v", err1, dirs)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Under a systemd unit of Type=notify (contrib/peapod-root.service),
// systemd starts what is ordered after peapod, a kubelet, once peapod says
// READY=1: it must say so, with its CRI socket answering by then, and say
// STOPPING=1 when it shuts down.
func TestServeTellsSystemdWhenReadyAndStopping(t *testing.T) {
	addr := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	msgs := make(chan string, 8)
	go func() {
		b := make([]byte, 256)
		for {
			n, err := conn.Read(b)
			if err != nil {
				close(msgs)
				return
			}
			msgs <- string(b[:n])
		}
	}()
	next := func(want string) {
		t.Helper()
		select {
		case got := <-msgs:
			if got != want {
				t.Fatalf("notification %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s notification", want)
		}
	}

	d := startDaemon(t, withEnv("NOTIFY_SOCKET="+addr))
	next("READY=1")
	if _, err := d.RT.Version(ctxT(t), &runtime.VersionRequest{}); err != nil {
		t.Fatalf("Version after READY=1: %v", err)
	}
	d.stop()
	next("STOPPING=1")
	select {
	case m, ok := <-msgs:
		if ok {
			t.Errorf("unexpected notification after STOPPING=1: %q", m)
		}
	case <-time.After(200 * time.Millisecond):
	}
}

// The daemon writes its programs (pause, shim, helper) named by their hash;
// at start it removes those of earlier versions that nothing runs any more,
// and keeps one a process still runs (a pause or shim of an old pod).
func TestOldProgramsArePrunedAtStart(t *testing.T) {
	d := startDaemon(t)
	pod := d.runPod(t, podConfig("prune"))
	binDir := filepath.Join(d.State, "bin")
	current, _ := filepath.Glob(filepath.Join(binDir, "*"))
	if len(current) == 0 {
		t.Fatalf("no programs in %s", binDir)
	}
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	oldUnused, oldRunning := filepath.Join(binDir, "pause-000000000000"), filepath.Join(binDir, "peapod-shim-000000000000")
	for _, p := range []string{oldUnused, oldRunning} {
		if err := os.WriteFile(p, sleep, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	old := exec.Command(oldRunning, "300")
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = old.Process.Kill(); _ = old.Wait() }()

	d.restart()
	if _, err := os.Stat(oldUnused); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unused program of an earlier version kept: %v", err)
	}
	if _, err := os.Stat(oldRunning); err != nil {
		t.Errorf("program a process runs was removed: %v", err)
	}
	for _, p := range current {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("this version's %s: %v", filepath.Base(p), err)
		}
	}
	if st, _ := d.status(t, pod); st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Errorf("pod after the restart: %v", st.State)
	}
	d.stopRemove(t, pod)
}
