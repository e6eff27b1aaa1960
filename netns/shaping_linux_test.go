package netns

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// The tests below build, for each pod, what a CNI plugin would: a "host"
// network namespace (standing in for the node's, so nothing touches the real
// host) and a "pod" one, joined by a veth whose pod end is eth0. Shaping is
// applied from inside the host namespace, exactly as the daemon does from the
// node's. Names: namespaces ppshape-<rand>-{h,p}, veths pps<rand>, addresses
// in 10.201.0.0/16 only.

// shapedPod is one such pair.
type shapedPod struct {
	t        *testing.T
	hostNS   string // ip netns name
	podNS    string
	hostVeth string
	hostAddr string // without prefix length; "" when not addressed
	podAddr  string
}

func requireShapingRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, tc)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip, tc)")
	}
}

func shapingRandHex(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)[:n]
}

// newShapedPod creates the namespaces and the veth. subnet, when not 0, gives
// the pair 10.201.<subnet>.1 (host) and .2 (pod).
func newShapedPod(t *testing.T, subnet int) *shapedPod {
	t.Helper()
	requireShapingRoot(t)
	r := shapingRandHex(6)
	p := &shapedPod{t: t, hostNS: "ppshape-" + r + "-h", podNS: "ppshape-" + r + "-p", hostVeth: "pps" + r}
	runShapingCmd(t, "ip", "netns", "add", p.hostNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", p.hostNS).Run() })
	runShapingCmd(t, "ip", "netns", "add", p.podNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", p.podNS).Run() })
	runShapingCmd(t, "ip", "-n", p.hostNS, "link", "set", "lo", "up")
	runShapingCmd(t, "ip", "-n", p.podNS, "link", "set", "lo", "up")
	runShapingCmd(t, "ip", "-n", p.hostNS, "link", "add", p.hostVeth, "type", "veth", "peer", "name", "eth0", "netns", p.podNS)
	if subnet != 0 {
		p.hostAddr = fmt.Sprintf("10.201.%d.1", subnet)
		p.podAddr = fmt.Sprintf("10.201.%d.2", subnet)
		runShapingCmd(t, "ip", "-n", p.hostNS, "addr", "add", p.hostAddr+"/30", "dev", p.hostVeth)
		runShapingCmd(t, "ip", "-n", p.podNS, "addr", "add", p.podAddr+"/30", "dev", "eth0")
	}
	runShapingCmd(t, "ip", "-n", p.hostNS, "link", "set", p.hostVeth, "up")
	runShapingCmd(t, "ip", "-n", p.podNS, "link", "set", "eth0", "up")
	return p
}

func (p *shapedPod) hostNSPath() string { return filepath.Join("/var/run/netns", p.hostNS) }
func (p *shapedPod) podNSPath() string  { return filepath.Join("/var/run/netns", p.podNS) }

// inHost runs fn with the calling thread in the pod's host namespace.
func (p *shapedPod) inHost(fn func() error) error {
	return ns.WithNetNSPath(p.hostNSPath(), func(ns.NetNS) error { return fn() })
}

func (p *shapedPod) apply(ifb, alias string, l BandwidthLimits) (st ShapingState, err error) {
	err = p.inHost(func() error {
		st, err = ApplyShaping(p.hostVeth, ifb, alias, l)
		return err
	})
	return st, err
}

func (p *shapedPod) remove(st ShapingState) error {
	return p.inHost(func() error { return RemoveShaping(st) })
}

// host runs a command in the host namespace, e.g. host("tc", "qdisc", ...).
func (p *shapedPod) host(args ...string) string {
	p.t.Helper()
	return runShapingCmd(p.t, "ip", append([]string{"netns", "exec", p.hostNS}, args...)...)
}

// requireUnshaped checks, with ip and tc rather than with the code under
// test, that nothing of peapod's is left in the host namespace: no IFB, the
// veth back on its default qdisc, no ingress qdisc and no filter.
func (p *shapedPod) requireUnshaped() {
	p.t.Helper()
	if out := p.host("ip", "-d", "link", "show", "type", "ifb"); strings.TrimSpace(out) != "" {
		p.t.Fatalf("IFB left behind:\n%s", out)
	}
	qd := p.host("tc", "qdisc", "show", "dev", p.hostVeth)
	if !regexp.MustCompile(`^qdisc noqueue 0: root refcnt \d+ ?\n?$`).MatchString(qd) {
		p.t.Fatalf("qdiscs left on %s:\n%s", p.hostVeth, qd)
	}
	if f := p.host("tc", "filter", "show", "dev", p.hostVeth, "ingress"); strings.TrimSpace(f) != "" {
		p.t.Fatalf("filters left on %s:\n%s", p.hostVeth, f)
	}
}

func runShapingCmd(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func shapingTestTag() string { return "t" + shapingRandHex(3) }

func TestApplyShapingTwiceIsIdempotent(t *testing.T) {
	p := newShapedPod(t, 0)
	tag, id := shapingTestTag(), shapingRandHex(64)
	ifb, alias := IFBName(tag, id), "peapod:"+tag+":"+id
	l := BandwidthLimits{IngressRateBitsPerSec: 10e6, EgressRateBitsPerSec: 5e6}
	var first ShapingState
	for i := 0; i < 2; i++ {
		st, err := p.apply(ifb, alias, l)
		if err != nil {
			t.Fatalf("apply #%d: %v", i+1, err)
		}
		want := ShapingState{
			HostVeth: p.hostVeth, IFB: ifb,
			Limits:            BandwidthLimits{IngressRateBitsPerSec: 10e6, IngressBurstBytes: 5000, EgressRateBitsPerSec: 5e6, EgressBurstBytes: 3028},
			IngressQueueBytes: 36250, EgressQueueBytes: 3028 + 15625,
		}
		if st != want {
			t.Fatalf("apply #%d: state %+v, want %+v", i+1, st, want)
		}
		first = st
	}
	qd := p.host("tc", "qdisc", "show", "dev", p.hostVeth)
	if !strings.Contains(qd, "qdisc tbf 50d: root") || !strings.Contains(qd, "rate 10Mbit") || strings.Count(qd, "qdisc ingress ffff:") != 1 {
		t.Fatalf("veth qdiscs:\n%s", qd)
	}
	if f := p.host("tc", "filter", "show", "dev", p.hostVeth, "ingress"); strings.Count(f, "fh 800::800") != 1 || !strings.Contains(f, "Egress Redirect to device "+ifb) {
		t.Fatalf("want exactly one redirect filter to %s:\n%s", ifb, f)
	}
	if qd := p.host("tc", "qdisc", "show", "dev", ifb); !strings.Contains(qd, "qdisc tbf 50d: root") || !strings.Contains(qd, "rate 5Mbit") {
		t.Fatalf("IFB qdiscs:\n%s", qd)
	}
	if link := p.host("ip", "-d", "link", "show", ifb); !strings.Contains(link, "alias "+alias) || !strings.Contains(link, "state UNKNOWN") && !strings.Contains(link, ",UP") {
		t.Fatalf("IFB link:\n%s", link)
	}

	// New limits replace the old ones in place; a direction set to 0 loses
	// its shaping.
	st, err := p.apply(ifb, alias, BandwidthLimits{IngressRateBitsPerSec: 20e6})
	if err != nil {
		t.Fatal(err)
	}
	if st.IFB != "" || st.Limits.EgressRateBitsPerSec != 0 {
		t.Fatalf("egress still shaped: %+v", st)
	}
	if qd := p.host("tc", "qdisc", "show", "dev", p.hostVeth); !strings.Contains(qd, "rate 20Mbit") || strings.Contains(qd, "ingress") {
		t.Fatalf("veth qdiscs after update:\n%s", qd)
	}
	if out := p.host("ip", "link", "show", "type", "ifb"); strings.TrimSpace(out) != "" {
		t.Fatalf("IFB still there after egress was unshaped:\n%s", out)
	}
	// No limits at all: everything goes.
	if st, err := p.apply(ifb, alias, BandwidthLimits{}); err != nil || st != (ShapingState{HostVeth: p.hostVeth}) {
		t.Fatalf("apply without limits: %+v, %v", st, err)
	}
	p.requireUnshaped()
	if _, err := p.apply(ifb, alias, l); err != nil {
		t.Fatal(err)
	}

	for i := 0; i < 2; i++ {
		if err := p.remove(first); err != nil {
			t.Fatalf("remove #%d: %v", i+1, err)
		}
		p.requireUnshaped()
	}
}

func TestApplyShapingLowAndHighRates(t *testing.T) {
	p := newShapedPod(t, 0)
	tag, id := shapingTestTag(), shapingRandHex(64)
	ifb := IFBName(tag, id)
	// 1 kbit/s needs a bucket of 24 s worth of traffic for one frame: more
	// than the 4.3 s the legacy buffer field can express.
	st, err := p.apply(ifb, "peapod:"+tag+":"+id, BandwidthLimits{IngressRateBitsPerSec: 1000, EgressRateBitsPerSec: 1e15, EgressBurstBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if qd := p.host("tc", "qdisc", "show", "dev", p.hostVeth); !strings.Contains(qd, "rate 1Kbit burst 3028b") {
		t.Fatalf("1k bucket:\n%s", qd)
	}
	if qd := p.host("tc", "qdisc", "show", "dev", ifb); !strings.Contains(qd, "rate 1000Tbit") {
		t.Fatalf("1P bucket:\n%s", qd)
	}
	if st.Limits.EgressBurstBytes != 1<<20 {
		t.Fatalf("burst override not kept: %+v", st)
	}
	if err := p.remove(st); err != nil {
		t.Fatal(err)
	}
	p.requireUnshaped()
}

func TestApplyShapingRefusesForeignQdiscs(t *testing.T) {
	limits := BandwidthLimits{IngressRateBitsPerSec: 10e6, EgressRateBitsPerSec: 5e6}
	for _, tc := range []struct {
		name  string
		setup [][]string // tc commands, "VETH" replaced
		limit BandwidthLimits
		kind  string
	}{
		{"clsact", [][]string{{"tc", "qdisc", "add", "dev", "VETH", "clsact"}}, limits, "clsact"},
		{"ingress with a filter", [][]string{
			{"tc", "qdisc", "add", "dev", "VETH", "ingress"},
			{"tc", "filter", "add", "dev", "VETH", "parent", "ffff:", "protocol", "ip", "prio", "1", "u32", "match", "u32", "0", "0", "flowid", "1:1"},
		}, limits, "ingress"},
		{"empty ingress", [][]string{{"tc", "qdisc", "add", "dev", "VETH", "ingress"}}, limits, "ingress"},
		{"root tbf of the CNI plugin", [][]string{{"tc", "qdisc", "add", "dev", "VETH", "root", "handle", "1:", "tbf", "rate", "1mbit", "burst", "10kb", "latency", "25ms"}},
			BandwidthLimits{IngressRateBitsPerSec: 10e6}, "root tbf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newShapedPod(t, 0)
			for _, c := range tc.setup {
				for i := range c {
					c[i] = strings.ReplaceAll(c[i], "VETH", p.hostVeth)
				}
				p.host(c...)
			}
			before := p.host("tc", "qdisc", "show", "dev", p.hostVeth) + p.host("tc", "filter", "show", "dev", p.hostVeth, "ingress")
			tag, id := shapingTestTag(), shapingRandHex(64)
			_, err := p.apply(IFBName(tag, id), "peapod:"+tag+":"+id, tc.limit)
			if err == nil {
				t.Fatal("ApplyShaping over a foreign qdisc succeeded")
			}
			if !strings.Contains(err.Error(), p.hostVeth) || !strings.Contains(err.Error(), tc.kind) || !strings.Contains(err.Error(), "peapod did not create") {
				t.Fatalf("unclear error: %v", err)
			}
			after := p.host("tc", "qdisc", "show", "dev", p.hostVeth) + p.host("tc", "filter", "show", "dev", p.hostVeth, "ingress")
			if after != before {
				t.Fatalf("foreign setup changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if out := p.host("ip", "link", "show", "type", "ifb"); strings.TrimSpace(out) != "" {
				t.Fatalf("IFB left behind:\n%s", out)
			}
		})
	}
}

// A hook a pod's limits do not need is left as it is: a foreign clsact does
// not stop shaping into the pod (the root qdisc).
func TestApplyShapingLeavesUnneededForeignHookAlone(t *testing.T) {
	p := newShapedPod(t, 0)
	p.host("tc", "qdisc", "add", "dev", p.hostVeth, "clsact")
	tag, id := shapingTestTag(), shapingRandHex(64)
	st, err := p.apply(IFBName(tag, id), "peapod:"+tag+":"+id, BandwidthLimits{IngressRateBitsPerSec: 10e6})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.remove(st); err != nil {
		t.Fatal(err)
	}
	if qd := p.host("tc", "qdisc", "show", "dev", p.hostVeth); !strings.Contains(qd, "qdisc clsact ffff:") || strings.Contains(qd, "tbf") {
		t.Fatalf("qdiscs after remove:\n%s", qd)
	}
}

// A failure half-way (here: the IFB name is taken by a non-IFB device after
// the ingress tbf went on) removes what the call created.
func TestApplyShapingRollsBackOnError(t *testing.T) {
	p := newShapedPod(t, 0)
	tag, id := shapingTestTag(), shapingRandHex(64)
	ifb := IFBName(tag, id)
	p.host("ip", "link", "add", ifb, "type", "veth", "peer", "name", "pps"+shapingRandHex(6))
	_, err := p.apply(ifb, "peapod:"+tag+":"+id, BandwidthLimits{IngressRateBitsPerSec: 10e6, EgressRateBitsPerSec: 5e6})
	if err == nil || !strings.Contains(err.Error(), p.hostVeth) || !strings.Contains(err.Error(), ifb) || !strings.Contains(err.Error(), "not an IFB") {
		t.Fatalf("got %v", err)
	}
	p.requireUnshaped()
	p.host("ip", "link", "del", ifb)

	// An IFB of that name that belongs to another sandbox is not taken over.
	p.host("ip", "link", "add", ifb, "type", "ifb")
	p.host("ip", "link", "set", ifb, "alias", "peapod:"+tag+":other")
	_, err = p.apply(ifb, "peapod:"+tag+":"+id, BandwidthLimits{EgressRateBitsPerSec: 5e6})
	if err == nil || !strings.Contains(err.Error(), "another sandbox") {
		t.Fatalf("got %v", err)
	}
	if qd := p.host("tc", "qdisc", "show", "dev", ifb); strings.Contains(qd, "tbf") {
		t.Fatalf("other sandbox's IFB was changed:\n%s", qd)
	}
	p.host("ip", "link", "del", ifb)
	p.requireUnshaped()
}

// A daemon killed between creating the ingress qdisc and its filter leaves an
// empty ingress qdisc next to our IFB: the next ApplyShaping adopts it.
func TestApplyShapingAdoptsItsInterruptedSetup(t *testing.T) {
	p := newShapedPod(t, 0)
	tag, id := shapingTestTag(), shapingRandHex(64)
	ifb, alias := IFBName(tag, id), "peapod:"+tag+":"+id
	p.host("ip", "link", "add", ifb, "type", "ifb")
	p.host("ip", "link", "set", ifb, "alias", alias)
	p.host("tc", "qdisc", "add", "dev", p.hostVeth, "ingress")
	st, err := p.apply(ifb, alias, BandwidthLimits{EgressRateBitsPerSec: 5e6})
	if err != nil {
		t.Fatal(err)
	}
	if f := p.host("tc", "filter", "show", "dev", p.hostVeth, "ingress"); strings.Count(f, "fh 800::800") != 1 {
		t.Fatalf("filters:\n%s", f)
	}
	if err := p.remove(st); err != nil {
		t.Fatal(err)
	}
	p.requireUnshaped()
}

func TestRemoveShapingAfterPodNetnsIsGone(t *testing.T) {
	p := newShapedPod(t, 0)
	tag, id := shapingTestTag(), shapingRandHex(64)
	st, err := p.apply(IFBName(tag, id), "peapod:"+tag+":"+id, BandwidthLimits{IngressRateBitsPerSec: 10e6, EgressRateBitsPerSec: 5e6})
	if err != nil {
		t.Fatal(err)
	}
	// Deleting the pod netns takes the veth pair (and its qdiscs) with it.
	// The kernel destroys a namespace asynchronously.
	runShapingCmd(t, "ip", "netns", "del", p.podNS)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, err := exec.Command("ip", "-n", p.hostNS, "link", "show", p.hostVeth).CombinedOutput()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("veth still there:\n%s", out)
		}
	}
	for i := 0; i < 2; i++ {
		if err := p.remove(st); err != nil {
			t.Fatalf("remove #%d: %v", i+1, err)
		}
	}
	if out := p.host("ip", "-d", "link", "show", "type", "ifb"); strings.TrimSpace(out) != "" {
		t.Fatalf("IFB left behind:\n%s", out)
	}
}

func TestRemoveShapingLeavesForeignFiltersAlone(t *testing.T) {
	p := newShapedPod(t, 0)
	tag, id := shapingTestTag(), shapingRandHex(64)
	st, err := p.apply(IFBName(tag, id), "peapod:"+tag+":"+id, BandwidthLimits{EgressRateBitsPerSec: 5e6})
	if err != nil {
		t.Fatal(err)
	}
	// Someone adds a filter of their own next to ours later.
	p.host("tc", "filter", "add", "dev", p.hostVeth, "parent", "ffff:", "protocol", "ip", "prio", "7", "u32", "match", "u32", "0", "0", "flowid", "1:7")
	if err := p.remove(st); err != nil {
		t.Fatal(err)
	}
	f := p.host("tc", "filter", "show", "dev", p.hostVeth, "ingress")
	if strings.Contains(f, "800::800") || !strings.Contains(f, "pref 7") {
		t.Fatalf("filters after remove:\n%s", f)
	}
}

func TestSweepOrphanIFBs(t *testing.T) {
	p := newShapedPod(t, 0)
	tag, other := shapingTestTag(), shapingTestTag()
	ids := []string{shapingRandHex(64), shapingRandHex(64), shapingRandHex(64)}
	// Three sandboxes, each with its veth (the first one is p's).
	veths := []string{p.hostVeth, "pps" + shapingRandHex(6), "pps" + shapingRandHex(6)}
	for _, v := range veths[1:] {
		p.host("ip", "link", "add", v, "type", "veth", "peer", "name", "pps"+shapingRandHex(6))
	}
	var kept ShapingState
	for i, id := range ids {
		var st ShapingState
		err := p.inHost(func() (err error) {
			st, err = ApplyShaping(veths[i], IFBName(tag, id), "peapod:"+tag+":"+id, BandwidthLimits{EgressRateBitsPerSec: 5e6})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			kept = st
		}
	}
	// Another instance's IFB, and an IFB nobody labelled.
	p.host("ip", "link", "add", IFBName(other, ids[1]), "type", "ifb")
	p.host("ip", "link", "set", IFBName(other, ids[1]), "alias", "peapod:"+other+":"+ids[1])
	p.host("ip", "link", "add", "ppshape"+shapingRandHex(4), "type", "ifb")

	var removed []string
	err := p.inHost(func() (err error) {
		removed, err = SweepOrphanIFBs(tag, func(id string) bool { return id == ids[0] })
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(removed)
	want := []string{IFBName(tag, ids[1]), IFBName(tag, ids[2])}
	sort.Strings(want)
	if strings.Join(removed, ",") != strings.Join(want, ",") {
		t.Fatalf("removed %v, want %v", removed, want)
	}
	links := p.host("ip", "-d", "link", "show", "type", "ifb")
	if strings.Count(links, ": <") != 3 || !strings.Contains(links, IFBName(tag, ids[0])) || !strings.Contains(links, IFBName(other, ids[1])) {
		t.Fatalf("IFBs after sweep:\n%s", links)
	}
	if err := p.remove(kept); err != nil {
		t.Fatal(err)
	}
	// The swept sandboxes' filters point to deleted IFBs: RemoveShaping
	// cleans them up all the same.
	for i := 1; i < 3; i++ {
		st := ShapingState{HostVeth: veths[i], IFB: IFBName(tag, ids[i])}
		if err := p.remove(st); err != nil {
			t.Fatal(err)
		}
		if f := p.host("tc", "filter", "show", "dev", veths[i], "ingress"); strings.TrimSpace(f) != "" {
			t.Fatalf("filter left on %s:\n%s", veths[i], f)
		}
	}
	p.host("ip", "link", "del", IFBName(other, ids[1]))
	p.host("sh", "-c", "ip link show type ifb | awk -F': ' '/ppshape/{print $2}' | xargs -r -n1 ip link del")
	p.requireUnshaped()
}

func TestHostVethOf(t *testing.T) {
	p := newShapedPod(t, 0)
	var got string
	err := p.inHost(func() (err error) {
		got, err = HostVethOf(p.podNSPath(), "eth0")
		return err
	})
	if err != nil || got != p.hostVeth {
		t.Fatalf("HostVethOf = %q, %v; want %q", got, err, p.hostVeth)
	}

	err = p.inHost(func() error { _, err := HostVethOf(p.podNSPath(), "lo"); return err })
	if err == nil || !strings.Contains(err.Error(), "not a veth") {
		t.Fatalf("lo: got %v", err)
	}
	err = p.inHost(func() error { _, err := HostVethOf(p.podNSPath(), "eth9"); return err })
	if err == nil || !strings.Contains(err.Error(), "eth9") {
		t.Fatalf("missing interface: got %v", err)
	}
	err = p.inHost(func() error { _, err := HostVethOf("/nonexistent/netns", "eth0"); return err })
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/netns") {
		t.Fatalf("missing netns: got %v", err)
	}

	// Asked from a namespace that does not hold the peer, the answer is an
	// error, never whatever device has the same ifindex there.
	q := newShapedPod(t, 0)
	err = q.inHost(func() error {
		n, err := HostVethOf(p.podNSPath(), "eth0")
		if err == nil {
			return fmt.Errorf("got %q from the wrong namespace", n)
		}
		if !strings.Contains(err.Error(), "eth0") {
			return fmt.Errorf("unclear error: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestCheckShapingSupport(t *testing.T) {
	requireShapingRoot(t)
	if problems := CheckShapingSupport(); len(problems) != 0 {
		t.Fatalf("this kernel should support shaping:\n%s", strings.Join(problems, "\n"))
	}
	// Its devices lived in a namespace of their own.
	if out := runShapingCmd(t, "ip", "link", "show"); strings.Contains(out, "ppchk") {
		t.Fatalf("the check left devices on the host:\n%s", out)
	}
}
