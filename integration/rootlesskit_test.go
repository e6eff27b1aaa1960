package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/internal/nettest"
)

// withRootlessKit runs the instance as the rootless test user under
// RootlessKit (Debian package rootlesskit; .ci/run installs it):
//
//	rootlesskit --net=slirp4netns --port-driver=builtin --copy-up=/etc
//	  --copy-up=/run --state-dir <base>/rk <base>/bin/rk-child serve ...
//
// peapod sees itself as root of a user namespace with no peapod parent,
// and publishes hostPorts through RootlessKit's API. rk-child runs `peapod
// serve` and starts it again when it dies, as a supervisor inside
// RootlessKit would; a SIGTERM to RootlessKit reaches it, and it stops the
// daemon and exits, and RootlessKit with it.
func withRootlessKit() daemonOpt { return withRootlessKitPortDriver("builtin") }

// withRootlessKitPortDriver is withRootlessKit with another --port-driver.
func withRootlessKitPortDriver(driver string) daemonOpt {
	return func(d *daemon) {
		withRootless()(d)
		bin := filepath.Join(d.base, "bin")
		child := filepath.Join(bin, "rk-child")
		script := `#!/bin/sh
pid=
trap 'kill -TERM $pid 2>/dev/null; wait $pid; exit 0' TERM INT
while :; do
	` + d.exe + ` "$@" &
	pid=$!
	wait $pid
	sleep 0.2
done
`
		wrapper := fmt.Sprintf("#!/bin/sh\nexec rootlesskit --net=slirp4netns --port-driver=%s --copy-up=/etc --copy-up=/run --state-dir %s %s \"$@\"\n",
			driver, d.rootlessKitDir(), child)
		for path, text := range map[string]string{child: script, filepath.Join(bin, "peapod-rk"): wrapper} {
			if err := os.WriteFile(path, []byte(text), 0o755); err != nil {
				d.t.Fatal(err)
			}
			if err := os.Chown(path, d.user.UID, d.user.GID); err != nil {
				d.t.Fatal(err)
			}
		}
		d.exe = filepath.Join(bin, "peapod-rk")
	}
}

func (d *daemon) rootlessKitDir() string { return filepath.Join(d.base, "rk") }

// rkPorts lists the ports RootlessKit publishes, from its API.
func (d *daemon) rkPorts(t *testing.T) []rkPort {
	t.Helper()
	sock := filepath.Join(d.rootlessKitDir(), "api.sock")
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://rootlesskit/v1/ports")
	if err != nil {
		t.Fatalf("RootlessKit API: %v", err)
	}
	defer resp.Body.Close()
	var all []rkPort
	if err := json.NewDecoder(resp.Body).Decode(&all); err != nil {
		t.Fatalf("RootlessKit API: GET /v1/ports: %v", err)
	}
	// The pods' ports; the daemon's streaming server has one more, to
	// its own loopback.
	var ps []rkPort
	for _, p := range all {
		if p.Spec.ChildIP != "127.0.0.1" {
			ps = append(ps, p)
		}
	}
	return ps
}

type rkPort struct {
	ID   int `json:"id"`
	Spec struct {
		Proto      string `json:"proto"`
		ParentIP   string `json:"parentIP"`
		ParentPort int    `json:"parentPort"`
		ChildIP    string `json:"childIP"`
		ChildPort  int    `json:"childPort"`
	} `json:"spec"`
}

// rkDaemonPID finds the `peapod serve` running under RootlessKit.
func (d *daemon) rkDaemonPID() int {
	exe := filepath.Join(d.base, "bin", "peapod")
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range exes {
		if target, _ := os.Readlink(p); target == exe {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	return 0
}

// reconnect waits for the daemon restarted by rk-child and dials it.
func (d *daemon) reconnect(t *testing.T, old int) {
	t.Helper()
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if pid := d.rkDaemonPID(); pid != 0 && pid != old {
			if c, err := net.Dial("unix", d.Socket); err == nil {
				c.Close()
				break
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.logPath)
			t.Fatalf("daemon not back under RootlessKit: %s", tail(string(b), 40))
		}
	}
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	d.conn = conn
	d.RT = runtime.NewRuntimeServiceClient(conn)
}

// leftovers are the processes still running from the instance's dir
// (RootlessKit, its child, peapod, shims, pause) or for RootlessKit's
// state dir (slirp4netns is named by pid only, and goes with them).
func (d *daemon) leftovers() []string {
	var out []string
	cmdlines, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range cmdlines {
		b, err := os.ReadFile(p)
		if err != nil || len(b) == 0 {
			continue
		}
		cmd := strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
		exe, _ := os.Readlink(filepath.Join(filepath.Dir(p), "exe"))
		if strings.Contains(cmd, d.base) || strings.HasPrefix(exe, d.base) {
			out = append(out, filepath.Base(filepath.Dir(p))+": "+cmd)
		}
	}
	return out
}

// TestRootlessKitHostPorts: peapod started under RootlessKit (no peapod
// parent) publishes a pod's TCP and UDP hostPorts through RootlessKit's
// port API; they answer on the host's 127.0.0.1. A clash, a port busy on
// the host and a privileged port fail with FailedPrecondition. A daemon
// killed and started again under the same RootlessKit publishes them
// again (the old daemon's entries give way). Removing the pod frees the
// port, and stopping RootlessKit leaves nothing behind.
func TestRootlessKitHostPorts(t *testing.T) {
	d := startDaemon(t, withRootlessKit())
	if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "hostPorts are published through RootlessKit") {
		t.Fatalf("the daemon under RootlessKit does not use its port API:\n%s", tail(string(b), 40))
	}
	tcpPort, udpPort := nettest.FreePort(t, "tcp"), nettest.FreePort(t, "udp")
	cfg := podConfig("rk-hp")
	cfg.PortMappings = []*runtime.PortMapping{
		{Protocol: runtime.Protocol_TCP, ContainerPort: 8080, HostPort: tcpPort},
		{Protocol: runtime.Protocol_UDP, ContainerPort: 8081, HostPort: udpPort, HostIp: "127.0.0.1"},
	}
	id := d.runPod(t, cfg)
	st, v := d.status(t, id)
	podEcho(t, v.PID)
	podIP := st.GetNetwork().GetIp()

	tcpAddr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	if got, err := nettest.AskTCP(tcpAddr); err != nil || got != "pod:hi" {
		t.Fatalf("hostPort %d/tcp from the host's 127.0.0.1: %q, %v", tcpPort, got, err)
	}
	if got, err := nettest.AskUDP(fmt.Sprintf("127.0.0.1:%d", udpPort)); err != nil || got != "pod:u?" {
		t.Errorf("hostPort %d/udp: %q, %v", udpPort, got, err)
	}
	ps := d.rkPorts(t)
	if len(ps) != 2 {
		t.Fatalf("RootlessKit publishes %+v, want the pod's 2 ports", ps)
	}
	// The streaming server (exec, attach, port-forward) answers on the
	// host's loopback at the URL it hands out, through RootlessKit: a
	// plain GET, without the upgrade a client would ask for, gets an HTTP
	// refusal from it rather than a refused connection.
	pf, err := d.RT.PortForward(ctxT(t), &runtime.PortForwardRequest{PodSandboxId: id, Port: []int32{8080}})
	if err != nil {
		t.Fatalf("PortForward: %v", err)
	}
	if !strings.HasPrefix(pf.Url, "http://127.0.0.1:") {
		t.Errorf("streaming URL %q is not on the loopback", pf.Url)
	}
	if resp, err := http.Get(pf.Url); err != nil {
		t.Errorf("streaming server at %s from the host: %v", pf.Url, err)
	} else {
		resp.Body.Close()
		t.Logf("streaming server at %s: %s without an upgrade", pf.Url, resp.Status)
	}
	for _, p := range ps {
		if p.Spec.ChildIP != podIP {
			t.Errorf("RootlessKit port %+v does not go to the pod IP %s", p, podIP)
		}
	}

	expectRefused := func(name string, hostPort int32, want string) {
		t.Helper()
		c := podConfig(name)
		c.PortMappings = []*runtime.PortMapping{{Protocol: runtime.Protocol_TCP, ContainerPort: 80, HostPort: hostPort}}
		_, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: c})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: hostPort %d: want FailedPrecondition saying %q; got %v", name, hostPort, want, err)
		}
		t.Logf("%s: %v", name, err)
	}
	expectRefused("rk-clash", tcpPort, "already in use")
	busy, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	expectRefused("rk-busy", int32(busy.Addr().(*net.TCPAddr).Port), "already in use")
	busy.Close()
	expectRefused("rk-low", 80, "ip_unprivileged_port_start")
	if pods, err := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 1 {
		t.Errorf("refused pods left records: %v, %v", pods, err)
	}
	if ps := d.rkPorts(t); len(ps) != 2 {
		t.Errorf("refused pods changed RootlessKit's ports: %+v", ps)
	}

	// The daemon dies; RootlessKit keeps the ports (they are its own) and
	// the daemon started again under it publishes them anew, in place of
	// the old daemon's.
	before := map[int]bool{}
	for _, p := range d.rkPorts(t) {
		before[p.ID] = true
	}
	old := d.rkDaemonPID()
	if old == 0 {
		t.Fatal("peapod under RootlessKit not found")
	}
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.reconnect(t, old)
	if got, err := nettest.AskTCP(tcpAddr); err != nil || got != "pod:hi" {
		t.Errorf("hostPort after the daemon was killed and started again: %q, %v", got, err)
	}
	ps = d.rkPorts(t)
	if len(ps) != 2 {
		t.Errorf("after the restart RootlessKit publishes %+v, want the pod's 2 ports once", ps)
	}
	for _, p := range ps {
		if before[p.ID] {
			t.Errorf("port %+v not published again by the restarted daemon", p)
		}
	}

	d.stopRemove(t, id)
	if ps := d.rkPorts(t); len(ps) != 0 {
		t.Errorf("RootlessKit ports left after the pod was removed: %+v", ps)
	}
	if l, err := net.Listen("tcp", fmt.Sprintf(":%d", tcpPort)); err != nil {
		t.Errorf("host port %d still taken after the pod was removed: %v", tcpPort, err)
	} else {
		l.Close()
	}
	// SIGTERM to RootlessKit stops the daemon; RootlessKit exits with it.
	if len(d.leftovers()) < 3 {
		t.Fatalf("RootlessKit, its child and peapod not found running: %v", d.leftovers())
	}
	parent := d.cgroupParent(t)
	t.Logf("default cgroup parent: %s", parent)
	d.stop()
	// The journal held the streaming server's port until the daemon
	// stopped; with no pod it goes.
	if _, err := os.Stat(filepath.Join(d.State, "rootlesskit-ports.json")); !os.IsNotExist(err) {
		t.Errorf("port journal left with no pod after the daemon stopped: %v", err)
	}
	var left []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if left = d.leftovers(); len(left) == 0 {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("processes left after RootlessKit stopped: %v", left)
	}
	if left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent)); len(left) > 0 {
		t.Errorf("instance cgroup parent left after shutdown: %v", left)
	}
	if _, err := os.Stat(d.rootlessKitDir()); !os.IsNotExist(err) {
		t.Errorf("RootlessKit's state dir left: %v", err)
	}
	if b, _ := os.ReadFile(d.logPath); !strings.Contains(string(b), "shutting down") {
		t.Errorf("the daemon was not stopped by the SIGTERM RootlessKit passes on:\n%s", tail(string(b), 20))
	}
}

// TestRootlessKitWithoutPortDriver: under RootlessKit started without a
// port driver (its default), a pod with hostPorts is refused with
// FailedPrecondition naming --port-driver=builtin and leaves nothing; a
// pod without hostPorts runs.
func TestRootlessKitWithoutPortDriver(t *testing.T) {
	d := startDaemon(t, withRootlessKitPortDriver("none"))
	cfg := podConfig("rk-none-hp")
	cfg.PortMappings = []*runtime.PortMapping{{Protocol: runtime.Protocol_TCP, ContainerPort: 80, HostPort: nettest.FreePort(t, "tcp")}}
	_, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: cfg})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "--port-driver=builtin") {
		t.Errorf("hostPort without a port driver: want FailedPrecondition naming --port-driver=builtin; got %v", err)
	}
	t.Logf("refused: %v", err)
	if pods, err := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{}); err != nil || len(pods.Items) != 0 {
		t.Errorf("the refused pod left a record: %v, %v", pods, err)
	}
	if dirs := d.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("the refused pod left dirs: %v", dirs)
	}
	id := d.runPod(t, podConfig("rk-none"))
	if st, _ := d.status(t, id); st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Errorf("pod without hostPorts: %v", st.State)
	}
	d.stopRemove(t, id)
}
