package netns

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// Masquerade of the embedded default network.
//
// The bridge plugin's ipMasq makes one NAT chain per pod: four iptables
// runs on ADD and more on DEL, which cost about 20 ms of every
// RunPodSandbox and 80 ms of every StopPodSandbox here. The embedded
// network instead leaves ipMasq off and peapod keeps one chain for the
// whole subnet, made when the first pod attaches and removed when the
// daemon stops with no pod attached:
//
//	POSTROUTING -s <subnet> -j PEAPOD-MASQ-<hash>   (comment: the network)
//	PEAPOD-MASQ-<hash>: -d <subnet> RETURN; -d <multicast> RETURN; MASQUERADE
//
// which is what the per-pod chains did, for every pod at once. Traffic
// between pods of the bridge keeps its source address.

// masqChain names the chain of a network and subnet: iptables chain
// names are at most 28 characters.
func masqChain(network, subnet string) string {
	h := sha256.Sum256([]byte(network + "\x00" + subnet))
	return "PEAPOD-MASQ-" + hex.EncodeToString(h[:4])
}

// masqRules is the chain for subnet and the jump into it.
type masqRules struct {
	tool      string // iptables or ip6tables
	chain     string
	subnet    string
	multicast string
	comment   string
}

func newMasqRules(network, subnet string) (masqRules, error) {
	ip, ipnet, err := net.ParseCIDR(subnet)
	if err != nil {
		return masqRules{}, fmt.Errorf("pod subnet %q: %w", subnet, err)
	}
	r := masqRules{
		tool: "iptables", chain: masqChain(network, ipnet.String()), subnet: ipnet.String(),
		multicast: "224.0.0.0/4", comment: "peapod network " + network,
	}
	if ip.To4() == nil {
		r.tool, r.multicast = "ip6tables", "ff00::/8"
	}
	return r, nil
}

func (r masqRules) jump() []string {
	return []string{"POSTROUTING", "-s", r.subnet, "-m", "comment", "--comment", r.comment, "-j", r.chain}
}

func (r masqRules) run(stdin string, args ...string) error {
	cmd := exec.Command(r.tool, args...)
	if stdin != "" {
		cmd = exec.Command(r.tool+"-restore", args...)
		cmd.Stdin = strings.NewReader(stdin)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", cmd.Path, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// install makes (or refreshes) the chain and adds the jump once.
func (r masqRules) install() error {
	// One restore declares the chain (flushing it if it exists) and fills
	// it atomically; --noflush leaves the rest of the table alone.
	table := fmt.Sprintf("*nat\n:%[1]s - [0:0]\n-A %[1]s -d %[2]s -j RETURN\n-A %[1]s -d %[3]s -j RETURN\n-A %[1]s -j MASQUERADE\nCOMMIT\n",
		r.chain, r.subnet, r.multicast)
	if err := r.run(table, "-w", "--noflush"); err != nil {
		return fmt.Errorf("pod masquerade: %w", err)
	}
	if r.run("", append([]string{"-w", "-t", "nat", "-C"}, r.jump()...)...) == nil {
		return nil
	}
	if err := r.run("", append([]string{"-w", "-t", "nat", "-A"}, r.jump()...)...); err != nil {
		return fmt.Errorf("pod masquerade: %w", err)
	}
	return nil
}

// remove deletes the jump (every copy) and the chain; absent ones are no
// error.
func (r masqRules) remove() error {
	for range 8 {
		if r.run("", append([]string{"-w", "-t", "nat", "-D"}, r.jump()...)...) != nil {
			break
		}
	}
	if r.run("", "-w", "-t", "nat", "-F", r.chain) != nil {
		return nil // no chain
	}
	if err := r.run("", "-w", "-t", "nat", "-X", r.chain); err != nil {
		return fmt.Errorf("remove pod masquerade: %w", err)
	}
	return nil
}

// ensureMasquerade puts the embedded network's chain in place, once per
// daemon.
func (n *Network) ensureMasquerade() error {
	n.masqMu.Lock()
	defer n.masqMu.Unlock()
	if n.masqDone {
		return nil
	}
	r, err := newMasqRules(n.cfg.DefaultName, n.cfg.DefaultSubnet)
	if err != nil {
		return err
	}
	if err := r.install(); err != nil {
		return err
	}
	n.masqDone = true
	return nil
}

// InstallHostRules puts the embedded network's masquerade chain in place
// when that network is the one in use, so that the first pod does not wait
// for it. The daemon calls it at start; Attach does it anyway.
func (n *Network) InstallHostRules() error {
	if _, embedded, err := n.current(); err != nil || !embedded {
		return nil
	}
	return n.ensureMasquerade()
}

// ReleaseHostRules removes the embedded network's masquerade chain. The
// daemon calls it when it stops with no pod attached to any network; a
// running pod needs the chain even while no daemon runs. Removing what is
// not there is no error.
func (n *Network) ReleaseHostRules() error {
	n.masqMu.Lock()
	defer n.masqMu.Unlock()
	r, err := newMasqRules(n.cfg.DefaultName, n.cfg.DefaultSubnet)
	if err != nil {
		return err
	}
	n.masqDone = false
	return r.remove()
}

// LoopbackUp sets the lo device of the network namespace at netnsPath up.
func LoopbackUp(netnsPath string) error {
	return Do(map[Kind]string{Net: netnsPath}, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("pod loopback: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("pod loopback up: %w", err)
		}
		return nil
	})
}
