package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"peapod/cgroups"
	"peapod/internal/nettest"
	"peapod/netns"
	"peapod/rootless/portfwd"
)

// portsEnv is a sandbox manager with a real pause, the embedded CNI
// network without portmap, and hostPorts published in user space, as in a
// rootless daemon. The publisher binds in this process's own netns
// (portfwd.Local) where a rootless daemon would ask its parent.
type portsEnv struct {
	cfg    Config
	bridge string
	subnet string
}

func newPortsEnv(t *testing.T) *portsEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: pod namespaces, bridge, cgroups")
	}
	pauseBin, err := filepath.Abs("../pause/embedded/pause.bin")
	if err != nil {
		t.Fatal(err)
	}
	cniDir, _ := filepath.Abs("../bin/cni")
	for _, p := range []string{pauseBin, filepath.Join(cniDir, "bridge"), filepath.Join(cniDir, "host-local"), filepath.Join(cniDir, "loopback")} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("PEAPOD_BIN") == "" {
				t.Skipf("needs %s: run `make build` (or `make test`, which does)", p)
			}
			t.Fatalf("needs %s from `make build`: %v", p, err)
		}
	}
	dir := t.TempDir()
	pause := filepath.Join(dir, "pause")
	b, err := os.ReadFile(pauseBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pause, b, 0o755); err != nil {
		t.Fatal(err)
	}
	n := os.Getpid() % 200
	env := &portsEnv{
		bridge: fmt.Sprintf("pdpt%d", os.Getpid()%100000),
		subnet: fmt.Sprintf("10.215.%d.0/24", n),
	}
	network, err := netns.NewNetwork(netns.NetworkConfig{
		ConfDir:       filepath.Join(dir, "cni-conf"),
		BinDirs:       []string{cniDir},
		CacheDir:      filepath.Join(dir, "cni-cache"),
		DefaultName:   "peapod-ports-test",
		DefaultBridge: env.bridge,
		DefaultSubnet: env.subnet,
		IPAMDataDir:   filepath.Join(dir, "ipam"),
		NoPortmap:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	env.cfg = Config{
		RootDir:             filepath.Join(dir, "root"),
		StateDir:            filepath.Join(dir, "state"),
		InstanceTag:         fmt.Sprintf("pt%d", os.Getpid()%100000),
		DefaultCgroupParent: fmt.Sprintf("/peapod-ports-test-%d", os.Getpid()),
		PauseBinary:         pause,
		Network:             network,
		NetworkTimeout:      30 * time.Second,
		Log:                 slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	t.Cleanup(func() {
		// Whatever a failed test left running goes first, through the
		// manager's own teardown.
		if m, err := New(context.Background(), env.cfg); err == nil {
			for _, sb := range m.List(Filter{}) {
				_ = m.Stop(context.Background(), sb.ID)
				_ = m.Remove(context.Background(), sb.ID)
			}
			m.Close()
		}
		if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(mi), dir) {
			t.Errorf("mounts left under %s", dir)
		}
		if out, err := exec.Command("iptables", "-t", "nat", "-S").Output(); err == nil && strings.Contains(string(out), "peapod-ports-test") {
			t.Errorf("iptables rules of the test network left behind")
		}
		if l, err := netlink.LinkByName(env.bridge); err == nil {
			netlink.LinkDel(l)
		}
		if err := cgroups.RemoveParentIfEmpty(env.cfg.DefaultCgroupParent); err != nil {
			t.Errorf("cgroup parent left behind: %v", err)
		}
	})
	return env
}

func (env *portsEnv) manager(t *testing.T, pub PortPublisher) *Manager {
	t.Helper()
	cfg := env.cfg
	cfg.Ports = pub
	m, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func podSpec(name string, mappings ...netns.PortMapping) Spec {
	return Spec{
		Name: name, Namespace: "ports-test", UID: "uid-" + name,
		NetworkMode: ModePod, PIDMode: ModePod, IPCMode: ModePod,
		PortMappings: mappings,
	}
}

// TestHostPortsInUserSpace runs pods with hostPorts through a manager
// with a PortPublisher: published after the CNI ADD and reachable from the
// host's 127.0.0.1, a busy port fails the pod cleanly, a restarted manager
// publishes again, and Stop frees the port.
func TestHostPortsInUserSpace(t *testing.T) {
	env := newPortsEnv(t)
	ctx := context.Background()
	pub := portfwd.NewPublisher(portfwd.Local{}, portfwd.Options{})
	m := env.manager(t, pub)

	hostPort := nettest.FreePort(t, "tcp")
	id, err := m.Run(ctx, podSpec("web", netns.PortMapping{HostPort: hostPort, ContainerPort: 8080, Protocol: "tcp"}))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := m.Get(id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.IP() == "" {
		t.Fatal("pod has no IP")
	}
	// Something in the pod listens on its container port.
	var podL net.Listener
	if err := netns.Do(map[netns.Kind]string{netns.Net: rec.Namespaces[netns.Net]}, func() error {
		var err error
		podL, err = net.Listen("tcp4", ":8080")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer podL.Close()
	go func() {
		for {
			c, err := podL.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(append([]byte("pod "+rec.IP()+" got "), b...))
			}()
		}
	}()
	hostAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(hostPort)))
	want := "pod " + rec.IP() + " got hi"
	if got, err := nettest.AskTCP(hostAddr); err != nil || got != want {
		t.Fatalf("hostPort %d from the host: %q, %v; want %q", hostPort, got, err, want)
	}
	if att := rec.Network; att == nil || len(att.CapArgs) != 0 && att.CapArgs["portMappings"] != nil {
		t.Errorf("CNI was handed the port mappings: %+v", att)
	}

	// A busy host port: RunPodSandbox fails with ErrHostPort, and the
	// half-made pod is gone.
	busy, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	busyPort := int32(busy.Addr().(*net.TCPAddr).Port)
	_, err = m.Run(ctx, podSpec("clash", netns.PortMapping{HostPort: busyPort, ContainerPort: 80, Protocol: "tcp"}))
	busy.Close()
	if !errors.Is(err, ErrHostPort) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("busy host port: want ErrHostPort wrapping EADDRINUSE, got %v", err)
	}
	t.Logf("busy port error: %v", err)
	if n := len(m.List(Filter{})); n != 1 {
		t.Errorf("%d sandboxes after the failed run, want 1", n)
	}
	ents, _ := os.ReadDir(filepath.Join(env.cfg.StateDir, "sandboxes"))
	if len(ents) != 1 {
		t.Errorf("%d sandbox runtime dirs after the failed run, want 1", len(ents))
	}
	_, err = m.Run(ctx, podSpec("sctp", netns.PortMapping{HostPort: busyPort, ContainerPort: 80, Protocol: "sctp"}))
	if !errors.Is(err, ErrInvalid) {
		t.Errorf("sctp hostPort: want ErrInvalid, got %v", err)
	}

	// A restarted daemon: its sockets died with it (here: the publisher
	// is closed), the new one publishes the ready pod's ports again.
	m.Close()
	pub.Close()
	if _, err := nettest.AskTCP(hostAddr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("with the publisher gone: want connection refused, got %v", err)
	}
	pub2 := portfwd.NewPublisher(portfwd.Local{}, portfwd.Options{})
	defer pub2.Close()
	m2 := env.manager(t, pub2)
	defer m2.Close()
	if got, err := nettest.AskTCP(hostAddr); err != nil || got != want {
		t.Fatalf("hostPort after a restart: %q, %v", got, err)
	}

	// Stop frees the port; Stop again and Remove are fine.
	if err := m2.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := nettest.AskTCP(hostAddr); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after StopPodSandbox: want connection refused, got %v", err)
	}
	if l, err := net.Listen("tcp", hostAddr); err != nil {
		t.Errorf("host port still taken after StopPodSandbox: %v", err)
	} else {
		l.Close()
	}
	if err := m2.Stop(ctx, id); err != nil {
		t.Error(err)
	}
	if err := m2.Remove(ctx, id); err != nil {
		t.Error(err)
	}
	if n := len(pub2.Published(id)); n != 0 {
		t.Errorf("%d forwarders left after removal", n)
	}
}
