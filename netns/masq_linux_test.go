package netns

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// masqTestNetwork is a network of this test alone (name, subnet).
func masqTestNetwork(t *testing.T, name, subnet string) *Network {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: it changes the host's nat table")
	}
	n := &Network{cfg: NetworkConfig{DefaultName: name, DefaultSubnet: subnet}}
	t.Cleanup(func() { _ = n.ReleaseHostRules() })
	return n
}

// natLines is the nat table's lines that mention s.
func natLines(t *testing.T, s string) []string {
	t.Helper()
	out, err := exec.Command("iptables-save", "-t", "nat").Output()
	if err != nil {
		t.Fatalf("iptables-save: %v", err)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, s) {
			lines = append(lines, l)
		}
	}
	return lines
}

func TestMasqueradeChainIsIdempotentAndRemovable(t *testing.T) {
	n := masqTestNetwork(t, "ppmasq-unit", "10.96.251.0/24")
	chain := masqChain("ppmasq-unit", "10.96.251.0/24")
	for range 2 {
		n.masqDone = false // install again over an existing chain
		if err := n.ensureMasquerade(); err != nil {
			t.Fatal(err)
		}
	}
	got := natLines(t, chain)
	want := []string{
		":" + chain + " - [0:0]",
		`-A POSTROUTING -s 10.96.251.0/24 -m comment --comment "peapod network ppmasq-unit" -j ` + chain,
		"-A " + chain + " -d 10.96.251.0/24 -j RETURN",
		"-A " + chain + " -d 224.0.0.0/4 -j RETURN",
		"-A " + chain + " -j MASQUERADE",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("nat rules of the chain:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for range 2 {
		if err := n.ReleaseHostRules(); err != nil {
			t.Fatal(err)
		}
		if left := natLines(t, chain); len(left) > 0 {
			t.Fatalf("left after release: %v", left)
		}
	}
	if other := masqChain("ppmasq-unit", "10.96.252.0/24"); other == chain {
		t.Error("two subnets of one network name share a chain")
	}
}

// TestMasqueradeRewritesEgressOnly sends real traffic: a "pod" namespace in
// the subnet reaches an "outside" namespace through the host, which
// forwards. With the chain in place the outside sees the host's address;
// a second pod of the subnet, reached over the host as well, sees the
// first pod's own address (no masquerade inside the subnet).
func TestMasqueradeRewritesEgressOnly(t *testing.T) {
	n := masqTestNetwork(t, "ppmasq-traffic", "10.96.253.0/24")
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "1" {
		if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// pod1 and pod2 in the subnet, each on a veth of its own to the host;
	// outside on 10.96.254.0/24.
	type side struct{ ns, host, hostIP, ip, gw string }
	sides := []side{
		{"pod1", "ppmq-p1", "10.96.253.1/32", "10.96.253.2/32", "10.96.253.1"},
		{"pod2", "ppmq-p2", "10.96.253.129/32", "10.96.253.130/32", "10.96.253.129"},
		{"out", "ppmq-out", "10.96.254.1/24", "10.96.254.2/24", "10.96.254.1"},
	}
	pins := map[string]string{}
	for _, s := range sides {
		cmd := startInNewNamespaces(t)
		p, err := Pin(cmd.Process.Pid, []Kind{Net}, filepath.Join(t.TempDir(), s.ns))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = Unpin(filepath.Dir(p[Net])) })
		pins[s.ns] = p[Net]
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", s.host).Run() })
		run("ip", "link", "add", s.host, "type", "veth", "peer", "name", "eth0", "netns", strconv.Itoa(cmd.Process.Pid))
		run("ip", "addr", "add", s.hostIP, "dev", s.host)
		run("ip", "link", "set", s.host, "up")
		if err := LoopbackUp(p[Net]); err != nil {
			t.Fatal(err)
		}
		inNS := func(args ...string) { run(append([]string{"nsenter", "--net=" + p[Net]}, args...)...) }
		inNS("ip", "addr", "add", s.ip, "dev", "eth0")
		inNS("ip", "link", "set", "eth0", "up")
		inNS("ip", "route", "add", "default", "via", s.gw, "dev", "eth0", "onlink")
	}
	// Host routes to the two pods over their veths (a /24 of the subnet
	// would be ambiguous).
	run("ip", "route", "replace", "10.96.253.2/32", "dev", "ppmq-p1")
	run("ip", "route", "replace", "10.96.253.130/32", "dev", "ppmq-p2")
	t.Cleanup(func() {
		_ = exec.Command("ip", "route", "del", "10.96.253.2/32").Run()
		_ = exec.Command("ip", "route", "del", "10.96.253.130/32").Run()
	})
	if err := n.ensureMasquerade(); err != nil {
		t.Fatal(err)
	}
	// What source address does a server in ns see for a client in pod1?
	sourceSeen := func(serverNS, serverIP string) string {
		t.Helper()
		var ln net.Listener
		if err := Do(map[Kind]string{Net: pins[serverNS]}, func() (err error) {
			ln, err = net.Listen("tcp", serverIP+":0")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		got := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- "accept: " + err.Error()
				return
			}
			got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}()
		if err := Do(map[Kind]string{Net: pins["pod1"]}, func() error {
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
			if err != nil {
				return err
			}
			return c.Close()
		}); err != nil {
			t.Fatalf("pod1 → %s: %v", serverNS, err)
		}
		select {
		case s := <-got:
			return s
		case <-time.After(3 * time.Second):
			t.Fatal("no connection seen")
			return ""
		}
	}
	if src := sourceSeen("out", "10.96.254.2"); src != "10.96.254.1" {
		t.Errorf("outside saw pod1 as %s, want the host's 10.96.254.1 (masqueraded)", src)
	}
	if src := sourceSeen("pod2", "10.96.253.130"); src != "10.96.253.2" {
		t.Errorf("pod2 saw pod1 as %s, want 10.96.253.2 (no masquerade inside the subnet)", src)
	}
	// Without the chain, the outside sees the pod's own address: the
	// first check was the chain's doing.
	if err := n.ReleaseHostRules(); err != nil {
		t.Fatal(err)
	}
	if src := sourceSeen("out", "10.96.254.2"); src != "10.96.253.2" {
		t.Errorf("without the chain the outside saw %s, want 10.96.253.2", src)
	}
}

func TestLoopbackUp(t *testing.T) {
	cmd := startInNewNamespaces(t)
	pins, err := Pin(cmd.Process.Pid, []Kind{Net}, filepath.Join(t.TempDir(), "ns"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Unpin(filepath.Dir(pins[Net])) })
	up := func() bool {
		var flags net.Flags
		if err := Do(map[Kind]string{Net: pins[Net]}, func() error {
			lo, err := net.InterfaceByName("lo")
			if err == nil {
				flags = lo.Flags
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return flags&net.FlagUp != 0
	}
	if up() {
		t.Fatal("lo of a new namespace is already up; the test proves nothing")
	}
	for range 2 {
		if err := LoopbackUp(pins[Net]); err != nil {
			t.Fatal(err)
		}
		if !up() {
			t.Fatal("lo is down after LoopbackUp")
		}
	}
	if err := LoopbackUp(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("LoopbackUp of a missing namespace succeeded")
	}
}
