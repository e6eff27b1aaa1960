package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/integration/flowmeter"
)

// Throughput of shaped pods measured for real, through the peapod daemon:
// the pods, their veths, the tbf on the host veth and on the IFB are all
// peapod's; the test only runs iperf3 between the host (the bridge's
// address, the pods' gateway) and a pod (nsenter --net=<pod pin>), and reads
// the byte counters of the qdiscs that shape the flow.

// tputDir is which way a flow's data crosses the pod's veth.
type tputDir int

const (
	tputIntoPod  tputDir = iota // host → pod: the ingress limit, tbf root of the host veth
	tputOutOfPod                // pod → host: the egress limit, tbf on the IFB
)

func (d tputDir) String() string {
	if d == tputIntoPod {
		return "into pod"
	}
	return "out of pod"
}

// tputPod is one pod of the test and what its verbose status tells.
type tputPod struct {
	name            string
	ingress, egress string // annotation values, "" = none
	ingressBits     uint64
	egressBits      uint64

	id       string
	netPin   string // pinned network namespace
	hostNS   string // where the host veth and IFB live: "" the host, else a rootless instance's netns
	ip       string
	hostVeth string
	ifb      string
}

func (p *tputPod) limit(dir tputDir) uint64 {
	if dir == tputIntoPod {
		return p.ingressBits
	}
	return p.egressBits
}

// tputResult is one measured flow. Wire rates count what tbf counts: each
// segment with its Ethernet, IP and TCP headers.
type tputResult struct {
	pod      string
	dir      tputDir
	limit    uint64 // bit/s, 0: unshaped
	duration time.Duration
	device   string // whose counter was read

	steady, firstSecond float64 // bit/s on the wire
	goodputWire         float64 // iperf3 receiver goodput scaled to the wire
	retransmits         int
	rttMedian, rttMax   time.Duration
	probesLost          int
}

const tputTableHeader = "pod            limit     direction   counter of             steady (wire)       first second       goodput→wire  retr  rtt-med  rtt-max lost  dur"

func (r tputResult) row() string {
	limit, steady, first := "none", tputMbit(r.steady), tputMbit(r.firstSecond)
	if r.limit > 0 {
		l := float64(r.limit)
		limit = tputMbit(l)
		steady += fmt.Sprintf(" (%+.1f%%)", (r.steady/l-1)*100)
		first += fmt.Sprintf(" (%.2f×)", r.firstSecond/l)
	}
	return fmt.Sprintf("%-14s %-9s %-11s %-22s %-19s %-18s %-13s %4d %8s %8s %4d %3.0fs",
		r.pod, limit, r.dir, r.device, steady, first, tputMbit(r.goodputWire), r.retransmits,
		r.rttMedian.Round(10*time.Microsecond), r.rttMax.Round(10*time.Microsecond), r.probesLost, r.duration.Seconds())
}

func tputMbit(bps float64) string { return fmt.Sprintf("%.2fM", bps/1e6) }

// TestShapedPodThroughputIsAccurate runs TCP flows (iperf3, the system's
// congestion control) between the host and pods of a real daemon: a pod
// with ingress 10M / egress 5M, pods with 1M and 100M both ways, and an
// unshaped pod on the same bridge. Each shaped flow takes 10 s; its steady
// rate on the wire (the shaping tbf's byte counter, from 2 s after the first
// byte to the end) must be within 5 % of the limit and its first second at
// most 1.5× it. The unshaped pod must exceed 200 Mbit/s both ways.
//
// The shaped pods are independent (a veth, a tbf and an IFB each) and their
// flows together need ~110 Mbit/s, so the three pods' flows run side by
// side: first all three into the pods, then all three out of them. The
// unshaped flows, which take all the CPU they can get, run alone after
// them. About 30 s in all.
func TestShapedPodThroughputIsAccurate(t *testing.T) {
	if testing.Short() {
		t.Skip("throughput measurement takes ~30 s")
	}
	for _, tool := range []string{"iperf3", "nsenter", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed for the throughput test (apt-get install -y iperf3 util-linux iproute2)", tool)
		}
	}
	began := time.Now()
	d := startDaemon(t)
	gw, err := tputGateway(d.Subnet)
	if err != nil {
		t.Fatal(err)
	}
	pods := []*tputPod{
		{name: "tput-10m-5m", ingress: "10M", egress: "5M", ingressBits: 10e6, egressBits: 5e6},
		{name: "tput-1m", ingress: "1M", egress: "1M", ingressBits: 1e6, egressBits: 1e6},
		{name: "tput-100m", ingress: "100M", egress: "100M", ingressBits: 100e6, egressBits: 100e6},
		{name: "tput-unshaped"},
	}
	for _, p := range pods {
		tputRunPod(t, d, p)
	}
	t.Logf("daemon and %d pods up in %v; host side %s on %s", len(pods), time.Since(began).Round(time.Millisecond), gw, d.Bridge)

	const shapedFor, unshapedFor = 10 * time.Second, 3 * time.Second
	var results []tputResult
	phases := []struct {
		dir  tputDir
		pods []*tputPod
		d    time.Duration
	}{
		{tputIntoPod, pods[:3], shapedFor},
		{tputOutOfPod, pods[:3], shapedFor},
		{tputIntoPod, pods[3:], unshapedFor},
		{tputOutOfPod, pods[3:], unshapedFor},
	}
	for _, ph := range phases {
		out := make([]tputResult, len(ph.pods))
		errs := make([]error, len(ph.pods))
		var wg sync.WaitGroup
		for i, p := range ph.pods {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out[i], errs[i] = tputMeasure(p, gw, ph.dir, ph.d)
			}()
		}
		wg.Wait()
		for i, p := range ph.pods {
			if errs[i] != nil {
				t.Errorf("%s, flow %v: %v", p.name, ph.dir, errs[i])
				continue
			}
			results = append(results, out[i])
			if err := tputCheck(out[i]); err != nil {
				t.Errorf("%s, flow %v: %v", p.name, ph.dir, err)
			}
		}
	}
	var b strings.Builder
	for _, r := range results {
		b.WriteString("\n" + r.row())
	}
	t.Logf("cc %s, daemon start to last flow %v:\n%s%s", flowmeter.SystemCC(),
		time.Since(began).Round(100*time.Millisecond), tputTableHeader, b.String())
}

// tputRunPod runs p through the daemon, reads where its network lives, and
// registers its stop and removal, after which its host veth and IFB must be
// gone.
func tputRunPod(t *testing.T, d *daemon, p *tputPod) {
	t.Helper()
	cfg := podConfig(p.name)
	cfg.Annotations = map[string]string{}
	if p.ingress != "" {
		cfg.Annotations["kubernetes.io/ingress-bandwidth"] = p.ingress
	}
	if p.egress != "" {
		cfg.Annotations["kubernetes.io/egress-bandwidth"] = p.egress
	}
	p.id = d.runPod(t, cfg)
	t.Cleanup(func() {
		d.stopRemove(t, p.id)
		for _, dev := range []string{p.hostVeth, p.ifb} {
			if dev == "" {
				continue
			}
			if d.hostCmd(t, "ip", "link", "show", dev).Run() == nil {
				t.Errorf("%s: %s still exists after the pod was removed", p.name, dev)
			}
		}
	})
	st, v := d.status(t, p.id)
	if st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("%s: state %v", p.name, st.State)
	}
	p.netPin = v.Namespaces["network"]
	if p.netPin == "" {
		p.netPin = v.Namespaces["net"]
	}
	if p.netPin == "" {
		t.Fatalf("%s: verbose info has no pinned network namespace: %v", p.name, v.Namespaces)
	}
	if d.user != nil {
		// A rootless instance's pins are mounts in its own mount
		// namespace; reach the same namespaces through the processes.
		p.netPin = fmt.Sprintf("/proc/%d/ns/net", v.PID)
		p.hostNS = fmt.Sprintf("/proc/%d/ns/net", d.holder(t))
	}
	p.ip = st.GetNetwork().GetIp()
	if p.ip == "" {
		t.Fatalf("%s: no pod IP in the status", p.name)
	}
	shaped := p.ingressBits > 0 || p.egressBits > 0
	if shaped {
		if v.Bandwidth == nil || v.Bandwidth.HostVeth == "" || (p.egressBits > 0 && v.Bandwidth.IFB == "") {
			t.Fatalf("%s: verbose info lacks the applied shaping: %+v", p.name, v.Bandwidth)
		}
		p.hostVeth, p.ifb = v.Bandwidth.HostVeth, v.Bandwidth.IFB
		return
	}
	if v.Bandwidth != nil && v.Bandwidth.HostVeth != "" {
		t.Fatalf("%s: unshaped pod has shaping: %+v", p.name, v.Bandwidth)
	}
	var res json.RawMessage
	if v.Network != nil {
		res = v.Network.CNIResult
	}
	hv, err := tputHostVeth(res, d.Bridge, p.netPin)
	if err != nil {
		t.Fatalf("%s: %v", p.name, err)
	}
	p.hostVeth = hv
}

// tputHostVeth finds the host end of an unshaped pod's veth: the CNI
// result's host-side interface that is not the bridge, or else the peer
// index of the pod's eth0.
func tputHostVeth(cniResult json.RawMessage, bridge, netPin string) (string, error) {
	var r struct {
		Interfaces []struct {
			Name    string `json:"name"`
			Sandbox string `json:"sandbox"`
		} `json:"interfaces"`
	}
	if len(cniResult) > 0 && json.Unmarshal(cniResult, &r) == nil {
		for _, i := range r.Interfaces {
			if i.Sandbox == "" && i.Name != bridge && i.Name != "" {
				if _, err := netlink.LinkByName(i.Name); err == nil {
					return i.Name, nil
				}
			}
		}
	}
	out, err := exec.Command("nsenter", "--net="+netPin, "--", "ip", "-o", "link", "show", "eth0").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("find the host veth: %v: %s", err, out)
	}
	var idx int
	if f := strings.Fields(string(out)); len(f) > 1 {
		if _, after, ok := strings.Cut(strings.TrimSuffix(f[1], ":"), "@if"); ok {
			_, _ = fmt.Sscan(after, &idx)
		}
	}
	l, err := netlink.LinkByIndex(idx)
	if err != nil {
		return "", fmt.Errorf("find the host veth (peer index %d of eth0): %w", idx, err)
	}
	return l.Attrs().Name, nil
}

// tputGateway is the first address of subnet: the bridge's, the pods'
// gateway.
func tputGateway(subnet string) (string, error) {
	_, n, err := net.ParseCIDR(subnet)
	if err != nil {
		return "", err
	}
	ip := n.IP.To4()
	if ip == nil {
		return "", fmt.Errorf("subnet %s is not IPv4", subnet)
	}
	gw := make(net.IP, 4)
	copy(gw, ip)
	gw[3]++
	return gw.String(), nil
}

// tputCheck holds a flow to the shaping promises.
func tputCheck(r tputResult) error {
	if r.limit == 0 {
		if r.steady < 200e6 {
			return fmt.Errorf("unshaped pod limited to %s on the wire", tputMbit(r.steady))
		}
		return nil
	}
	var errs []error
	l := float64(r.limit)
	if r.steady < 0.95*l || r.steady > 1.05*l {
		errs = append(errs, fmt.Errorf("steady rate %s is not within 5%% of the limit %s", tputMbit(r.steady), tputMbit(l)))
	}
	if r.firstSecond > 1.5*l {
		errs = append(errs, fmt.Errorf("first second %s is more than 1.5× the limit %s", tputMbit(r.firstSecond), tputMbit(l)))
	}
	return errors.Join(errs...)
}

// tputMeasure runs one iperf3 TCP flow of duration d between the host
// (bound to gw) and pod p in direction dir, and measures it on the wire.
// The server always runs in the pod (port 5201 of its own netns, so
// nothing on the host can collide); the host's client sends (into the pod)
// or receives with -R (out of the pod).
func tputMeasure(p *tputPod, gw string, dir tputDir, d time.Duration) (tputResult, error) {
	res := tputResult{pod: p.name, dir: dir, limit: p.limit(dir), duration: d}
	counter, err := tputCounter(p, dir)
	if err != nil {
		return res, err
	}
	defer counter.Close()
	res.device = counter.Name
	steadyFrom := 2 * time.Second
	if d < 3*time.Second+steadyFrom/2 {
		steadyFrom = time.Second
	}
	host, pod := flowmeter.Endpoint{NetNS: p.hostNS, Addr: gw}, flowmeter.Endpoint{NetNS: p.netPin, Addr: p.ip}
	m, err := flowmeter.Run(context.Background(), flowmeter.Flow{
		Server:     pod,
		Client:     host,
		Port:       "5201",
		Reverse:    dir == tputOutOfPod,
		Duration:   d,
		SteadyFrom: steadyFrom,
		Counter:    counter,
		Probes:     &flowmeter.ProbeConfig{Echo: host, Probe: pod, After: 2 * time.Second, Every: 100 * time.Millisecond},
	})
	res.rttMedian, res.rttMax, res.probesLost = m.RTT.Median, m.RTT.Max, m.RTT.Lost
	res.goodputWire, res.retransmits = m.GoodputWireBitsPerSec, m.Retransmits
	res.firstSecond, res.steady = m.FirstSecondBitsPerSec, m.SteadyBitsPerSec
	return res, err
}

// tputCounter returns the byte counter that sees direction dir of pod p on
// the wire: the root tbf of the host veth (into the pod) or of the IFB (out
// of it) when that direction is shaped, else the host veth's own tx (into
// the pod) or rx (out of it) bytes.
func tputCounter(p *tputPod, dir tputDir) (*flowmeter.Counter, error) {
	switch {
	case p.limit(dir) == 0:
		return flowmeter.LinkCounter(p.hostNS, p.hostVeth, dir == tputIntoPod)
	case dir == tputOutOfPod:
		return flowmeter.QdiscCounter(p.hostNS, p.ifb, 0)
	default:
		return flowmeter.QdiscCounter(p.hostNS, p.hostVeth, 0)
	}
}
