package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"peapod/internal/usernstest"
	"peapod/netns"
	"peapod/pause/embedded"
)

// Rootless peapod runs the sandbox manager as root of a user namespace with
// its own network and mount namespaces (the outer namespaces of the
// rootless bootstrap). TestRootlessPodLifecycle runs the real manager
// there (usernstest): pause, pins, CNI bridge with host-local and the
// bridge plugin's masquerade, tc shaping with an IFB, sysctls, pod files,
// /dev/shm, a pod cgroup in a delegated v1 subtree, a restart that
// recovers the pod, and a teardown that leaves nothing.

const (
	rlCgroupEnv = "PEAPOD_SANDBOXTEST_CGROUP"
	rlCNIEnv    = "PEAPOD_SANDBOXTEST_CNI"
)

func TestMain(m *testing.M) {
	if usernstest.InChild() {
		// The host's /run is not ours (iptables' lock, ip netns).
		if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=755"); err != nil {
			fmt.Fprintln(os.Stderr, "mount a private /run:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

func TestRootlessPodLifecycle(t *testing.T) {
	usernstest.RequireRoot(t)
	cni, err := filepath.Abs("../bin/cni")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cni, p)); err != nil {
			t.Skipf("CNI plugins not built (make build): %v", err)
		}
	}
	for _, tool := range []string{"iptables", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	parent := "/peapod-sbtest-rl-" + randHexT(4)
	usernstest.Delegate(t, parent)
	out := usernstest.Run(t, "^TestRootlessChild", usernstest.Options{
		Net:     true,
		Env:     []string{rlCgroupEnv + "=" + parent, rlCNIEnv + "=" + cni},
		Args:    []string{"-test.v"},
		Timeout: 3 * time.Minute,
	})
	t.Log(out)
	for _, name := range []string{"TestRootlessChildPodLifecycle", "TestRootlessChildBadSysctlLeavesNothing"} {
		if !regexp.MustCompile(`--- PASS: ` + name + ` `).MatchString(out) {
			t.Errorf("%s did not pass in the user namespace:\n%s", name, out)
		}
	}
}

func randHexT(n int) string {
	b := make([]byte, n)
	f, _ := os.Open("/dev/urandom")
	defer f.Close()
	_, _ = io.ReadFull(f, b)
	return fmt.Sprintf("%x", b)
}

// rlEnv is the child's setup: dirs, pause binary, CNI, cgroup parent.
type rlEnv struct {
	t      *testing.T
	base   string
	pause  string
	cni    string
	parent string
}

func newRLEnv(t *testing.T) *rlEnv {
	t.Helper()
	usernstest.RequireChild(t)
	e := &rlEnv{t: t, base: t.TempDir(), cni: os.Getenv(rlCNIEnv), parent: os.Getenv(rlCgroupEnv) + "/pods"}
	if e.cni == "" {
		t.Skip("started by TestRootlessPodLifecycle")
	}
	e.pause = filepath.Join(e.base, "pause")
	if err := os.WriteFile(e.pause, embedded.Binary, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.base, "cni-conf"), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// manager starts a sandbox manager on e's dirs, as a (re)started daemon.
func (e *rlEnv) manager() *Manager {
	e.t.Helper()
	root := filepath.Join(e.base, "root")
	network, err := netns.NewNetwork(netns.NetworkConfig{
		ConfDir:       filepath.Join(e.base, "cni-conf"),
		BinDirs:       []string{e.cni},
		CacheDir:      filepath.Join(root, "cni-cache"),
		DefaultName:   "peapod",
		DefaultBridge: "rlt0",
		DefaultSubnet: "10.203.0.0/24",
		IPAMDataDir:   filepath.Join(root, "ipam"),
		NoPortmap:     true,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	m, err := New(context.Background(), Config{
		RootDir:             root,
		StateDir:            filepath.Join(e.base, "state"),
		InstanceTag:         "rlt1",
		DefaultCgroupParent: e.parent,
		PauseBinary:         e.pause,
		Network:             network,
		NetworkTimeout:      30 * time.Second,
		RetryInterval:       time.Hour,
		Log:                 slog.New(slog.NewTextHandler(testWriter{e.t}, nil)),
	})
	if err != nil {
		e.t.Fatalf("start the manager: %v", err)
	}
	return m
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func rlSpec(name string) Spec {
	bw, err := netns.ParseBandwidthAnnotations(map[string]string{
		netns.IngressBandwidthAnnotation: "10M", netns.EgressBandwidthAnnotation: "20M",
	})
	if err != nil {
		panic(err)
	}
	return Spec{
		Name: name, Namespace: "default", UID: "uid-" + name,
		Hostname:    name + "-host",
		DNS:         &DNSConfig{Servers: []string{"10.0.2.3"}, Searches: []string{"example.test"}},
		Sysctls:     map[string]string{"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"},
		NetworkMode: ModePod, PIDMode: ModePod, IPCMode: ModePod,
		Bandwidth: bw,
	}
}

func readIn(t *testing.T, pins netns.PinnedNamespaces, path string) string {
	t.Helper()
	var out string
	err := netns.Do(map[netns.Kind]string{netns.Net: pins[netns.Net], netns.IPC: pins[netns.IPC], netns.UTS: pins[netns.UTS]}, func() error {
		if path == "hostname" {
			var u unix.Utsname
			if err := unix.Uname(&u); err != nil {
				return err
			}
			out = unix.ByteSliceToString(u.Nodename[:])
			return nil
		}
		b, err := os.ReadFile(path)
		out = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		t.Fatalf("read %s in the pod: %v", path, err)
	}
	return out
}

func natRules(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("iptables", "-t", "nat", "-S").CombinedOutput()
	if err != nil {
		t.Fatalf("iptables: %v\n%s", err, out)
	}
	return string(out)
}

func cgroupDir(hier, cgPath string) string { return filepath.Join("/sys/fs/cgroup", hier, cgPath) }

func TestRootlessChildPodLifecycle(t *testing.T) {
	e := newRLEnv(t)
	ctx := context.Background()
	m := e.manager()
	id, err := m.Run(ctx, rlSpec("p1"))
	if err != nil {
		t.Fatalf("RunPodSandbox as root of a user namespace: %v", err)
	}
	sb, err := m.Get(id)
	if err != nil || sb.State != StateReady || sb.IP() == "" {
		t.Fatalf("sandbox %+v, %v: want ready with an IP", sb, err)
	}
	pausePid := sb.Pause.PID

	// Cgroup: the pause is in the pod's pause cgroup of the delegated
	// subtree.
	if sb.Cgroup == nil {
		t.Fatal("no pod cgroup in a delegated subtree")
	}
	procs, _ := os.ReadFile(filepath.Join(cgroupDir("cpu", sb.Cgroup.PausePath), "cgroup.procs"))
	if strings.TrimSpace(string(procs)) != strconv.Itoa(pausePid) {
		t.Errorf("pause cgroup procs %q, want the pause %d", procs, pausePid)
	}
	// Namespaces, sysctls, hostname.
	for _, k := range []netns.Kind{netns.Net, netns.IPC, netns.UTS, netns.PID} {
		if !netns.IsPinned(sb.Namespaces[k]) {
			t.Errorf("%s namespace not pinned: %q", k, sb.Namespaces[k])
		}
	}
	if v := readIn(t, sb.Namespaces, "/proc/sys/net/ipv4/ip_unprivileged_port_start"); v != "0" {
		t.Errorf("net sysctl in the pod = %s", v)
	}
	if v := readIn(t, sb.Namespaces, "/proc/sys/kernel/shm_rmid_forced"); v != "1" {
		t.Errorf("ipc sysctl in the pod = %s", v)
	}
	if v := readIn(t, sb.Namespaces, "hostname"); v != "p1-host" {
		t.Errorf("pod hostname %q", v)
	}
	// Pod files and /dev/shm.
	if b, err := os.ReadFile(filepath.Join(sb.Dir, resolvFile)); err != nil || !strings.Contains(string(b), "nameserver 10.0.2.3") {
		t.Errorf("resolv.conf %q, %v", b, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(sb.Dir, shmDir), &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Errorf("pod shm not a tmpfs: %v", err)
	}
	// Network: the network's masquerade, the pod reachable from the
	// daemon's namespace, shaping with an IFB.
	hasMasq := func() bool {
		r := natRules(t)
		return strings.Contains(r, `"peapod network peapod"`) && strings.Contains(r, "-j MASQUERADE")
	}
	if !hasMasq() {
		t.Errorf("no masquerade rule for the pod's network:\n%s", natRules(t))
	}
	if out, err := exec.Command("ping", "-c", "1", "-W", "2", sb.IP()).CombinedOutput(); err != nil {
		t.Errorf("ping the pod at %s: %v\n%s", sb.IP(), err, out)
	}
	if sb.Shaping == nil || sb.Shaping.IFB == "" {
		t.Fatalf("no shaping state: %+v", sb.Shaping)
	}
	ifb, err := netlink.LinkByName(sb.Shaping.IFB)
	if err != nil || ifb.Type() != "ifb" {
		t.Errorf("IFB %s: %v", sb.Shaping.IFB, err)
	}
	qd, _ := exec.Command("tc", "qdisc", "show", "dev", sb.Shaping.HostVeth).CombinedOutput()
	if !strings.Contains(string(qd), "tbf") || !strings.Contains(string(qd), "ingress") {
		t.Errorf("qdiscs of the host veth:\n%s", qd)
	}

	// Restart: the pod keeps running (and its network's masquerade
	// stays) and the new manager recovers it.
	m.Close()
	if !hasMasq() {
		t.Errorf("masquerade removed while a pod is attached:\n%s", natRules(t))
	}
	m = e.manager()
	sb, err = m.Get(id)
	if err != nil || sb.State != StateReady || sb.Pause.PID != pausePid || !pauseAlive(sb.Pause) {
		t.Fatalf("after restart: %+v, %v", sb, err)
	}

	// Teardown leaves nothing.
	if err := m.Stop(ctx, id); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if err := m.Remove(ctx, id); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if pauseAlive(sb.Pause) {
		t.Error("pause alive after removal")
	}
	if _, err := netlink.LinkByName(sb.Shaping.IFB); err == nil {
		t.Errorf("IFB %s left", sb.Shaping.IFB)
	}
	if _, err := netlink.LinkByName(sb.Shaping.HostVeth); err == nil {
		t.Errorf("host veth %s left", sb.Shaping.HostVeth)
	}
	if strings.Contains(natRules(t), "CNI-") {
		t.Errorf("CNI rules left:\n%s", natRules(t))
	}
	if _, err := os.Stat(sb.Dir); !os.IsNotExist(err) {
		t.Errorf("sandbox dir %s left: %v", sb.Dir, err)
	}
	for _, h := range []string{"cpu", "memory", "pids", "freezer"} {
		if _, err := os.Stat(cgroupDir(h, sb.Cgroup.PodPath)); !os.IsNotExist(err) {
			t.Errorf("pod cgroup left in %s: %v", h, err)
		}
	}
	m.Close()
	if hasMasq() {
		t.Errorf("masquerade left after the last pod and the daemon are gone:\n%s", natRules(t))
	}
	if err := m.RemoveCgroupParentIfEmpty(); err != nil {
		t.Errorf("remove the default cgroup parent: %v", err)
	}
}

// TestRootlessChildBadSysctlLeavesNothing: a namespaced sysctl that is
// read-only to the pod's namespace (net.netfilter.nf_conntrack_max: the
// host's to set) fails the pod as an invalid request naming it, and the
// rollback leaves nothing.
func TestRootlessChildBadSysctlLeavesNothing(t *testing.T) {
	e := newRLEnv(t)
	m := e.manager()
	defer m.Close()
	spec := rlSpec("bad")
	spec.Sysctls = map[string]string{"net.netfilter.nf_conntrack_max": "1000"}
	_, err := m.Run(context.Background(), spec)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "nf_conntrack_max") || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("RunPodSandbox with a read-only sysctl: %v, want ErrInvalid naming it", err)
	}
	if l := m.List(Filter{}); len(l) != 0 {
		t.Errorf("sandboxes after a failed run: %+v", l)
	}
	links, _ := netlink.LinkList()
	for _, l := range links {
		if l.Type() == "veth" || l.Type() == "ifb" {
			t.Errorf("link %s (%s) left", l.Attrs().Name, l.Type())
		}
	}
	if strings.Contains(natRules(t), "CNI-") {
		t.Errorf("CNI rules left:\n%s", natRules(t))
	}
	ents, _ := os.ReadDir(filepath.Join(e.base, "state", "sandboxes"))
	if len(ents) != 0 {
		t.Errorf("state left: %v", ents)
	}
	if err := m.RemoveCgroupParentIfEmpty(); err != nil {
		t.Errorf("remove the default cgroup parent: %v", err)
	}
}
