package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var (
	peapodBin string
	crictlBin string
	cniBinDir string
	netSeq    atomic.Int32
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "integration tests need root: run `make test` as root")
		os.Exit(1)
	}
	wd, _ := os.Getwd()
	repo := filepath.Dir(wd)
	peapodBin = envOr("PEAPOD_BIN", filepath.Join(repo, "bin", "peapod"))
	crictlBin = envOr("PEAPOD_CRICTL", filepath.Join(repo, "bin", "tools", "crictl"))
	cniBinDir = filepath.Join(filepath.Dir(peapodBin), "cni")
	for _, p := range []string{peapodBin, filepath.Join(cniBinDir, "bridge")} {
		if _, err := os.Stat(p); err != nil {
			fmt.Fprintf(os.Stderr, "%s missing: run `make build` first\n", p)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// daemon is one private peapod instance.
type daemon struct {
	t       testing.TB
	Socket  string
	Root    string
	State   string
	ConfDir string
	BinDirs string
	Bridge  string
	Subnet  string
	Extra   []string
	Env     []string // added to the daemon's environment
	// user is set for a rootless instance (withRootless); exe is the
	// binary to run, base the instance's private dir.
	user    *rootlessUser
	exe     string
	base    string
	cmd     *exec.Cmd
	logPath string
	conn    *grpc.ClientConn
	RT      runtime.RuntimeServiceClient
}

type daemonOpt func(*daemon)

func withConfDir(dir string) daemonOpt  { return func(d *daemon) { d.ConfDir = dir } }
func withBinDirs(dirs string) daemonOpt { return func(d *daemon) { d.BinDirs = dirs } }
func withArgs(a ...string) daemonOpt    { return func(d *daemon) { d.Extra = append(d.Extra, a...) } }
func withEnv(kv ...string) daemonOpt    { return func(d *daemon) { d.Env = append(d.Env, kv...) } }

// startDaemon starts a private instance with its own bridge (ppt<N>) and
// subnet (10.99.<N>.0/24) and stops it, and everything it made, at cleanup.
func startDaemon(t testing.TB, opts ...daemonOpt) *daemon {
	t.Helper()
	n := int(netSeq.Add(1)) + (os.Getpid() % 50 * 4)
	base, err := os.MkdirTemp("", "peapod-it-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{
		t:       t,
		Socket:  filepath.Join(base, "peapod.sock"),
		Root:    filepath.Join(base, "root"),
		State:   filepath.Join(base, "state"),
		ConfDir: filepath.Join(base, "net.d"),
		BinDirs: cniBinDir,
		Bridge:  fmt.Sprintf("ppt%d", n%250),
		Subnet:  fmt.Sprintf("10.99.%d.0/24", n%250),
		logPath: filepath.Join(base, "daemon.log"),
		exe:     peapodBin,
		base:    base,
	}
	for _, o := range opts {
		o(d)
	}
	_ = os.MkdirAll(d.ConfDir, 0o755)
	d.start()
	t.Cleanup(func() {
		d.cleanupPods()
		parent := ""
		if d.conn != nil {
			parent = d.cgroupParent(t)
		}
		running := d.cmd != nil
		d.stop()
		// A daemon that stops deletes its spare network attachment.
		if running {
			d.assertNoSpareDirs(t)
		}
		// Whatever a failed test left mounted (a killed daemon's pins)
		// must not outlive it on the host.
		if d.user == nil {
			for _, m := range d.mountsUnder(t, base) {
				_ = exec.Command("umount", "-l", m).Run()
			}
		}
		// A daemon that stops with no pods leaves no cgroup parent, and
		// no masquerade rule of its network.
		if parent != "" {
			if left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", parent)); len(left) > 0 {
				t.Errorf("instance cgroup parent left after shutdown: %v", left)
			}
			if out, err := exec.Command("iptables-save", "-t", "nat").Output(); err == nil && d.user == nil {
				if strings.Contains(string(out), `"peapod network `+d.Bridge+`"`) {
					t.Errorf("masquerade rule of network %s left after shutdown", d.Bridge)
				}
			}
		}
		_ = exec.Command("ip", "link", "del", d.Bridge).Run()
		if t.Failed() {
			b, _ := os.ReadFile(d.logPath)
			t.Logf("daemon log:\n%s", tail(string(b), 60))
		}
		_ = os.RemoveAll(base)
	})
	return d
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (d *daemon) args() []string {
	a := []string{"serve",
		"--socket", d.Socket, "--root", d.Root, "--state", d.State,
		"--cni-conf-dir", d.ConfDir, "--cni-bin-dir", d.BinDirs,
		"--bridge", d.Bridge, "--pod-subnet", d.Subnet, "--network-name", d.Bridge,
		"--log-level", "debug",
	}
	return append(a, d.Extra...)
}

func (d *daemon) start() {
	d.t.Helper()
	logf, err := os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	d.cmd = exec.Command(d.exe, d.args()...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if d.user != nil {
		d.user.asUser(d.cmd)
	}
	if len(d.Env) > 0 {
		if d.cmd.Env == nil {
			d.cmd.Env = os.Environ()
		}
		d.cmd.Env = append(d.cmd.Env, d.Env...)
	}
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	logf.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", d.Socket)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.logPath)
			d.t.Fatalf("daemon did not listen on %s: %s", d.Socket, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatal(err)
	}
	d.conn = conn
	d.RT = runtime.NewRuntimeServiceClient(conn)
}

// kill9 kills the daemon the hard way; its pods keep running. A rootless
// instance loses both its processes: the daemon, then its parent.
func (d *daemon) kill9() {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.user != nil {
		if pid := d.innerDaemon(); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		_ = d.cmd.Wait()
		d.cmd = nil
	}
}

func (d *daemon) restart() {
	d.kill9()
	d.start()
}

// restartWith applies options and restarts the daemon with them.
func (d *daemon) restartWith(opts ...daemonOpt) {
	for _, o := range opts {
		o(d)
	}
	d.restart()
}

func (d *daemon) stop() {
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = d.cmd.Process.Kill()
			<-done
		}
		d.cmd = nil
	}
}

// cleanupPods removes whatever pods a failed test left, so one failure does
// not leak into the next test.
func (d *daemon) cleanupPods() {
	if d.RT == nil || d.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	resp, err := d.RT.ListPodSandbox(ctx, &runtime.ListPodSandboxRequest{})
	if err != nil {
		return
	}
	for _, p := range resp.Items {
		_, _ = d.RT.RemovePodSandbox(ctx, &runtime.RemovePodSandboxRequest{PodSandboxId: p.Id})
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// podConfig is a minimal valid sandbox config with a unique uid.
func podConfig(name string) *runtime.PodSandboxConfig {
	return &runtime.PodSandboxConfig{
		Metadata: &runtime.PodSandboxMetadata{Name: name, Namespace: "it", Uid: randHex(8)},
		Hostname: name,
		Labels:   map[string]string{"app": name},
		Linux:    &runtime.LinuxPodSandboxConfig{},
	}
}

func (d *daemon) runPod(t testing.TB, cfg *runtime.PodSandboxConfig) string {
	t.Helper()
	resp, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	return resp.PodSandboxId
}

func (d *daemon) status(t testing.TB, id string) (*runtime.PodSandboxStatus, verbose) {
	t.Helper()
	resp, err := d.RT.PodSandboxStatus(ctxT(t), &runtime.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", id, err)
	}
	var v verbose
	if err := json.Unmarshal([]byte(resp.Info["info"]), &v); err != nil {
		t.Fatalf("verbose info is not JSON: %v: %q", err, resp.Info["info"])
	}
	return resp.Status, v
}

func (d *daemon) stopRemove(t testing.TB, id string) {
	t.Helper()
	if _, err := d.RT.StopPodSandbox(ctxT(t), &runtime.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatalf("StopPodSandbox %s: %v", id, err)
	}
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatalf("RemovePodSandbox %s: %v", id, err)
	}
}

// verbose is the part of the verbose status info the tests read.
type verbose struct {
	PID        int               `json:"pid"`
	Namespaces map[string]string `json:"namespaces"`
	RuntimeDir string            `json:"runtimeDir"`
	Cgroup     *struct {
		PodPath   string `json:"PodPath"`
		PausePath string `json:"PausePath"`
	} `json:"cgroup"`
	Network *struct {
		IPs       []string        `json:"ips"`
		CNIResult json.RawMessage `json:"cniResult"`
	} `json:"network"`
	Bandwidth *struct {
		HostVeth string `json:"hostVeth"`
		IFB      string `json:"ifb"`
	} `json:"bandwidth"`
}

// waitFileHolds waits until the file at path holds want (spaces around
// aside): what one container wrote for another to read.
func waitFileHolds(t testing.TB, path, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, _ := os.ReadFile(path)
		if strings.TrimSpace(string(b)) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %q after %v, want %q", path, b, within, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a command and returns its combined output, failing the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// hostSnapshot is every kernel object a pod could leak, as sorted lines.
type hostSnapshot map[string][]string

// snapshot records links, qdiscs, mounts, cgroups, processes and iptables
// rules that belong to this instance (or could, for links and qdiscs).
//
// The instance's spare network attachment (sandbox/spare.go) is no pod's
// and comes and goes with the daemon, so its veth, pin and address are
// left out (spareObjects).
func (d *daemon) snapshot(t testing.TB) hostSnapshot {
	t.Helper()
	s := hostSnapshot{}
	spare := d.spareObjects(t)
	// Links and qdiscs of this instance: veths enslaved to its bridge and
	// IFBs named with its tag. (Scoped, because other peapods may run on
	// the host at the same time.)
	tag := d.instanceTag(t)
	var links []string
	for _, l := range strings.Split(d.hostOut(t, "ip", "-o", "link", "show"), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		name := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		ours := strings.HasPrefix(name, "pp"+tag) || (strings.HasPrefix(name, "veth") && strings.Contains(l, " master "+d.Bridge+" "))
		if ours && !spare[name] {
			links = append(links, name)
		}
	}
	s["link"] = links
	for _, name := range links {
		for _, q := range strings.Split(d.hostOut(t, "tc", "qdisc", "show", "dev", name), "\n") {
			if strings.TrimSpace(q) != "" {
				s["qdisc"] = append(s["qdisc"], q)
			}
		}
	}
	// Mounts under the instance's dirs: pins and shm.
	for _, l := range strings.Split(d.mountinfo(t), "\n") {
		if strings.Contains(l, d.State) || strings.Contains(l, d.Root) {
			f := strings.Fields(l)
			if !strings.HasPrefix(f[4], filepath.Join(d.State, "spares")+"/") {
				s["mount"] = append(s["mount"], f[4])
			}
		}
	}
	// Cgroup dirs under the instance's default parent, in every hierarchy.
	parent := d.cgroupParent(t)
	_ = filepath.Walk("/sys/fs/cgroup", func(p string, info os.FileInfo, err error) error {
		if err != nil || !info.IsDir() {
			return nil
		}
		if strings.Contains(p, parent+"/") {
			s["cgroup"] = append(s["cgroup"], p)
		}
		return nil
	})
	// Pause processes started from this instance's state dir.
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		exe, err := os.Readlink(p)
		if err == nil && strings.HasPrefix(exe, d.State) {
			s["process"] = append(s["process"], exe)
		}
	}
	// NAT rules the CNI plugins made (masquerade, hostPorts), by network name.
	if out, err := d.hostCmd(t, "iptables-save", "-t", "nat").CombinedOutput(); err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			cni := strings.Contains(l, "CNI-") && (strings.HasPrefix(l, "-A") || strings.HasPrefix(l, ":")) && strings.Contains(l, d.Bridge)
			if cni || strings.Contains(l, `"peapod network `+d.Bridge+`"`) {
				s["iptables"] = append(s["iptables"], l)
			}
		}
	}
	// host-local allocations.
	ips, _ := filepath.Glob(filepath.Join(d.Root, "cni", "networks", "*", "*.*.*.*"))
	for _, ip := range ips {
		if !spare[filepath.Base(ip)] {
			s["ipam"] = append(s["ipam"], ip)
		}
	}
	for _, v := range s {
		sort.Strings(v)
	}
	return s
}

// spareObjects names the host veths and the addresses of the instance's
// spare network attachments, once every spare in the making is attached
// (its record comes before its veth, its result after).
func (d *daemon) spareObjects(t testing.TB) map[string]bool {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		names, settled := map[string]bool{}, true
		for _, s := range d.spareRecords(t) {
			settled = settled && s.attached
			names[s.veth], names[s.ip] = true, true
		}
		if settled {
			delete(names, "")
			return names
		}
		if time.Now().After(deadline) {
			t.Fatalf("a spare network attachment of the instance is still being made after 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// instanceTag reads the instance's tag from Status.
func (d *daemon) instanceTag(t testing.TB) string {
	resp, err := d.RT.Status(ctxT(t), &runtime.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var cfg struct {
		InstanceTag string `json:"instanceTag"`
	}
	_ = json.Unmarshal([]byte(resp.Info["config"]), &cfg)
	if cfg.InstanceTag == "" {
		t.Fatalf("Status verbose info lacks instanceTag: %v", resp.Info)
	}
	return cfg.InstanceTag
}

// cgroupParent reads the instance's default cgroup parent from Status.
func (d *daemon) cgroupParent(t testing.TB) string {
	resp, err := d.RT.Status(ctxT(t), &runtime.StatusRequest{Verbose: true})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	var cfg struct {
		DefaultCgroupParent string `json:"defaultCgroupParent"`
	}
	_ = json.Unmarshal([]byte(resp.Info["config"]), &cfg)
	if cfg.DefaultCgroupParent == "" {
		t.Fatalf("Status verbose info lacks defaultCgroupParent: %v", resp.Info)
	}
	return cfg.DefaultCgroupParent
}

// assertNoLeaks compares two snapshots.
func assertNoLeaks(t testing.TB, before, after hostSnapshot) {
	t.Helper()
	for _, kind := range []string{"link", "qdisc", "mount", "cgroup", "process", "iptables", "ipam"} {
		b, a := before[kind], after[kind]
		extra := diff(a, b)
		if len(extra) > 0 {
			t.Errorf("leaked %s: %v", kind, extra)
		}
	}
}

func diff(a, b []string) []string {
	seen := map[string]int{}
	for _, x := range b {
		seen[x]++
	}
	var out []string
	for _, x := range a {
		if seen[x] > 0 {
			seen[x]--
			continue
		}
		out = append(out, x)
	}
	return out
}

// sandboxDirs lists the sandboxes' record dirs in the root.
func (d *daemon) sandboxDirs(t testing.TB) []string {
	entries, _ := os.ReadDir(filepath.Join(d.Root, "sandboxes"))
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	entries, _ = os.ReadDir(filepath.Join(d.State, "sandboxes"))
	for _, e := range entries {
		out = append(out, "state:"+e.Name())
	}
	return out
}

// nsenter runs a command inside the pod's network namespace.
func nsenterNet(pin string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + pin, "--"}, args...)...)
}

func readLines(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
