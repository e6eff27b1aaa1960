package rootless

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"peapod/internal/nettest"
	"peapod/netns"
)

// These tests run the real RootlessKit (Debian package rootlesskit) as the
// rootless test user .ci/run creates (RootlessKit refuses to run as root),
// with its builtin port driver, and answer inside its network namespace
// (the test, root, joins it), as the pods of a daemon under it would.

type rkInstance struct {
	dir      string // RootlessKit's state dir
	childPID int
	cmd      *exec.Cmd
}

func startRootlessKit(t *testing.T, portDriver string) *rkInstance {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run RootlessKit as the rootless test user and to join its namespace")
	}
	if _, err := exec.LookPath("rootlesskit"); err != nil {
		t.Fatalf("rootlesskit not installed (apt-get install rootlesskit, as .ci/run does): %v", err)
	}
	name := os.Getenv("PEAPOD_ROOTLESS_USER")
	if name == "" {
		name = "peapod-test"
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatalf("rootless test user %q: %v: create it as .ci/run does", name, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	base, err := os.MkdirTemp("", "peapod-rk-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(base, uid, gid); err != nil {
		t.Fatal(err)
	}
	rk := &rkInstance{dir: filepath.Join(base, "rk")}
	logf, err := os.Create(filepath.Join(base, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	rk.cmd = exec.Command("rootlesskit", "--net=slirp4netns", "--disable-host-loopback", "--port-driver="+portDriver,
		"--state-dir", rk.dir, "sleep", "infinity")
	rk.cmd.Stdout, rk.cmd.Stderr = logf, logf
	rk.cmd.Dir = base
	rk.cmd.Env = []string{"HOME=" + u.HomeDir, "USER=" + name, "PATH=/usr/local/bin:/usr/bin:/bin"}
	rk.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	if err := rk.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = rk.cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// RootlessKit passes SIGTERM to its child and exits with it.
		_ = rk.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-rk.cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if rk.childPID > 0 {
			if err := syscall.Kill(rk.childPID, 0); err == nil {
				t.Errorf("RootlessKit's child %d outlived it", rk.childPID)
			}
		}
		if _, err := os.Stat(rk.dir); err == nil {
			t.Errorf("RootlessKit's state dir %s left", rk.dir)
		}
		_ = os.RemoveAll(base)
	})
	c := newRKClient(filepath.Join(rk.dir, "api.sock"), 2*time.Second)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		info, err := c.info()
		if err == nil {
			rk.childPID = info.ChildPID
			break
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("rootlesskit exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("rootlesskit API did not answer: %v\n%s", err, b)
		}
	}
	return rk
}

func (rk *rkInstance) client() *rkClient {
	return newRKClient(filepath.Join(rk.dir, "api.sock"), 5*time.Second)
}

func (rk *rkInstance) ports(t *testing.T) []rkPort {
	t.Helper()
	ps, err := rk.client().list()
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

// echo serves TCP and UDP on 127.0.0.1 inside RootlessKit's network
// namespace (where a pod IP would be), answering "child:" and what it got.
func (rk *rkInstance) echo(t *testing.T) (tcpPort, udpPort int) {
	t.Helper()
	return nettest.Echo(t, fmt.Sprintf("/proc/%d/ns/net", rk.childPID), "127.0.0.1:0", "127.0.0.1:0", "child:")
}

func tcpMap(host, child int) netns.PortMapping {
	return netns.PortMapping{Protocol: "tcp", HostPort: int32(host), ContainerPort: int32(child)}
}

// hasHostPort tells whether RootlessKit publishes hostPort.
func hasHostPort(ps []rkPort, hostPort int) bool {
	for _, p := range ps {
		if p.Spec.ParentPort == hostPort {
			return true
		}
	}
	return false
}

// Publish reaches the child's TCP and UDP servers from the host's
// loopback; Unpublish frees the ports and is idempotent; failures are all
// or nothing and wrap EADDRINUSE (busy on the host, or published already)
// and EACCES (privileged port).
func TestRootlessKitPortsPublish(t *testing.T) {
	rk := startRootlessKit(t, "builtin")
	tcpPort, udpPort := rk.echo(t)
	journal := filepath.Join(t.TempDir(), "ports.json")
	p := NewRootlessKitPorts(RootlessKitOptions{StateDir: rk.dir, Journal: journal})
	if err := p.Err(); err != nil {
		t.Fatalf("builtin port driver refused: %v", err)
	}

	hp, hu := int(nettest.FreePort(t, "tcp")), int(nettest.FreePort(t, "tcp"))
	err := p.Publish("sb1", "127.0.0.1", []netns.PortMapping{
		tcpMap(hp, tcpPort),
		{Protocol: "udp", HostPort: int32(hu), ContainerPort: int32(udpPort), HostIP: "127.0.0.1"},
	})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got, err := nettest.AskTCP(fmt.Sprintf("127.0.0.1:%d", hp)); err != nil || got != "child:hi" {
		t.Errorf("tcp host port %d: %q, %v", hp, got, err)
	}
	if got, err := nettest.AskUDP(fmt.Sprintf("127.0.0.1:%d", hu)); err != nil || got != "child:u?" {
		t.Errorf("udp host port %d: %q, %v", hu, got, err)
	}
	if ps := rk.ports(t); len(ps) != 2 {
		t.Errorf("RootlessKit publishes %v, want the 2 ports of sb1", ps)
	} else {
		// An IPv4 host IP listens on IPv4 only; no host IP, on all.
		for _, q := range ps {
			if want := map[int]string{hp: "tcp", hu: "udp4"}[q.Spec.ParentPort]; q.Spec.Proto != want {
				t.Errorf("RootlessKit port %v: proto %q, want %q", q.Spec, q.Spec.Proto, want)
			}
		}
	}
	if _, err := os.Stat(journal); err != nil {
		t.Errorf("journal not written: %v", err)
	}

	// Another pod on sb1's TCP host port: RootlessKit has it already.
	err = p.Publish("sb2", "127.0.0.1", []netns.PortMapping{tcpMap(hp, 9)})
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("host port published for another pod: want EADDRINUSE saying in use, got %v", err)
	}
	t.Logf("clash in RootlessKit: %v", err)

	// All or nothing: a free port, then one busy on the host.
	busy, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := int(nettest.FreePort(t, "tcp"))
	err = p.Publish("sb3", "127.0.0.1", []netns.PortMapping{tcpMap(free, tcpPort), tcpMap(busy.Addr().(*net.TCPAddr).Port, tcpPort)})
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), "already in use") {
		t.Errorf("host port busy on the host: want EADDRINUSE, got %v", err)
	}
	t.Logf("busy on the host: %v", err)
	if ps := rk.ports(t); hasHostPort(ps, free) {
		t.Errorf("port %d of a failed publish left in RootlessKit: %v", free, ps)
	}
	if l, err := net.Listen("tcp", fmt.Sprintf(":%d", free)); err != nil {
		t.Errorf("port %d of a failed publish still taken: %v", free, err)
	} else {
		l.Close()
	}

	// A privileged port: RootlessKit's parent is an ordinary user.
	b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")
	start, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if start <= 1 {
		t.Fatalf("ip_unprivileged_port_start is %d: no privileged port to test with", start)
	}
	low := min(80, start-1)
	err = p.Publish("sb4", "127.0.0.1", []netns.PortMapping{tcpMap(low, tcpPort)})
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "ip_unprivileged_port_start") {
		t.Errorf("privileged host port %d: want EACCES naming the sysctl, got %v", low, err)
	}
	t.Logf("privileged: %v", err)
	if ps := rk.ports(t); len(ps) != 2 {
		t.Errorf("failed publishes changed RootlessKit's ports: %v", ps)
	}

	// Bad input is refused before RootlessKit is asked.
	for _, bad := range [][]netns.PortMapping{
		{{Protocol: "sctp", HostPort: int32(free), ContainerPort: 80}},
		{{Protocol: "tcp", HostPort: 0, ContainerPort: 80}},
		{{Protocol: "tcp", HostPort: int32(free), ContainerPort: 80, HostIP: "nope"}},
	} {
		if err := p.Publish("sb5", "127.0.0.1", bad); err == nil {
			t.Errorf("Publish %+v: no error", bad)
		}
	}
	if err := p.Publish("sb5", "not-an-ip", []netns.PortMapping{tcpMap(free, 80)}); err == nil {
		t.Errorf("Publish to a bad pod IP: no error")
	}

	// Publishing sb1 again replaces its ports.
	if err := p.Publish("sb1", "127.0.0.1", []netns.PortMapping{tcpMap(hp, tcpPort)}); err != nil {
		t.Fatalf("Publish sb1 again: %v", err)
	}
	if ps := rk.ports(t); len(ps) != 1 || ps[0].Spec.ParentPort != hp {
		t.Errorf("after republishing sb1 with one port: %v", ps)
	}

	for range 2 {
		if err := p.Unpublish("sb1"); err != nil {
			t.Errorf("Unpublish: %v", err)
		}
	}
	if err := p.Unpublish("never"); err != nil {
		t.Errorf("Unpublish of an unknown sandbox: %v", err)
	}
	if ps := rk.ports(t); len(ps) != 0 {
		t.Errorf("ports left after Unpublish: %v", ps)
	}
	if _, err := nettest.AskTCP(fmt.Sprintf("127.0.0.1:%d", hp)); err == nil {
		t.Errorf("host port %d answers after Unpublish", hp)
	}
	if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal left with nothing published: %v", err)
	}
}

// A daemon restarted under the same RootlessKit: it removes the ports its
// predecessor recorded when their pod goes, and a port with the very spec
// it is about to add (unrecorded: the predecessor died before writing)
// gives way. A journal of another RootlessKit is dropped.
func TestRootlessKitPortsRestartedDaemon(t *testing.T) {
	rk := startRootlessKit(t, "builtin")
	tcpPort, _ := rk.echo(t)
	journal := filepath.Join(t.TempDir(), "ports.json")
	first := NewRootlessKitPorts(RootlessKitOptions{StateDir: rk.dir, Journal: journal})
	hpA, hpB := int(nettest.FreePort(t, "tcp")), int(nettest.FreePort(t, "tcp"))
	if err := first.Publish("a", "127.0.0.1", []netns.PortMapping{tcpMap(hpA, tcpPort)}); err != nil {
		t.Fatal(err)
	}
	if err := first.Publish("b", "127.0.0.1", []netns.PortMapping{tcpMap(hpB, tcpPort)}); err != nil {
		t.Fatal(err)
	}

	// The restarted daemon: pod a is stopped, pod b republished.
	second := NewRootlessKitPorts(RootlessKitOptions{StateDir: rk.dir, Journal: journal})
	if err := second.Unpublish("a"); err != nil {
		t.Fatal(err)
	}
	if ps := rk.ports(t); len(ps) != 1 || ps[0].Spec.ParentPort != hpB {
		t.Errorf("after the restarted daemon unpublished a: %v", ps)
	}
	if err := second.Publish("b", "127.0.0.1", []netns.PortMapping{tcpMap(hpB, tcpPort)}); err != nil {
		t.Fatalf("republish b: %v", err)
	}
	if got, err := nettest.AskTCP(fmt.Sprintf("127.0.0.1:%d", hpB)); err != nil || got != "child:hi" {
		t.Errorf("republished host port: %q, %v", got, err)
	}

	// A port the journal does not know, with the spec pod c is given.
	hpC := int(nettest.FreePort(t, "tcp"))
	spec := rkSpec{Proto: "tcp", ParentPort: hpC, ChildIP: "127.0.0.1", ChildPort: tcpPort}
	stale, err := rk.client().add(spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Publish("c", "127.0.0.1", []netns.PortMapping{tcpMap(hpC, tcpPort)}); err != nil {
		t.Fatalf("publish over a stale port with the same spec: %v", err)
	}
	var ids []int
	for _, p := range rk.ports(t) {
		if p.Spec.ParentPort == hpC {
			ids = append(ids, p.ID)
		}
	}
	if len(ids) != 1 || ids[0] == stale.ID {
		t.Errorf("host port %d: ids %v, want one new in place of stale %d", hpC, ids, stale.ID)
	}
	// A port with another spec on that host port is not stale: a clash.
	if err := second.Publish("d", "127.0.0.1", []netns.PortMapping{tcpMap(hpC, tcpPort+1)}); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("another spec on a published host port: want EADDRINUSE, got %v", err)
	}

	// A journal written under another RootlessKit names ids that mean
	// nothing here: it is dropped, and b's port stays.
	var j rkJournal
	b, _ := os.ReadFile(journal)
	if err := json.Unmarshal(b, &j); err != nil {
		t.Fatalf("journal %s: %v", b, err)
	}
	j.ChildPID++
	j.Pods["x"] = j.Pods["b"]
	b, _ = json.Marshal(j)
	if err := os.WriteFile(journal, b, 0o600); err != nil {
		t.Fatal(err)
	}
	third := NewRootlessKitPorts(RootlessKitOptions{StateDir: rk.dir, Journal: journal})
	if err := third.Unpublish("x"); err != nil {
		t.Fatal(err)
	}
	if !hasHostPort(rk.ports(t), hpB) {
		t.Errorf("a journal of another RootlessKit removed a port: %v", rk.ports(t))
	}
	if _, err := os.Stat(journal); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal of another RootlessKit kept: %v", err)
	}
}

// Without a port driver, or without RootlessKit's API, pods with hostPorts
// are refused with the reason; pods without are fine.
func TestRootlessKitPortsRefused(t *testing.T) {
	rk := startRootlessKit(t, "none")
	p := NewRootlessKitPorts(RootlessKitOptions{StateDir: rk.dir, Journal: filepath.Join(t.TempDir(), "ports.json")})
	if err := p.Err(); err == nil || !strings.Contains(err.Error(), "--port-driver=builtin") {
		t.Errorf("port driver none: want a refusal naming --port-driver=builtin, got %v", err)
	}
	if err := p.Publish("a", "127.0.0.1", []netns.PortMapping{tcpMap(int(nettest.FreePort(t, "tcp")), 80)}); err == nil || !strings.Contains(err.Error(), "--port-driver=builtin") {
		t.Errorf("Publish with port driver none: %v", err)
	}
	if err := p.Publish("b", "127.0.0.1", nil); err != nil {
		t.Errorf("Publish without mappings: %v", err)
	}
	if err := p.Unpublish("a"); err != nil {
		t.Errorf("Unpublish: %v", err)
	}

	gone := NewRootlessKitPorts(RootlessKitOptions{StateDir: t.TempDir(), Journal: filepath.Join(t.TempDir(), "ports.json")})
	if err := gone.Err(); err == nil || !strings.Contains(err.Error(), "API does not answer") {
		t.Errorf("no API socket: want a refusal, got %v", err)
	}
	if err := gone.Publish("a", "127.0.0.1", []netns.PortMapping{tcpMap(int(nettest.FreePort(t, "tcp")), 80)}); err == nil {
		t.Errorf("Publish without RootlessKit: no error")
	}
}
