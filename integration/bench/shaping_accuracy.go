package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/integration/flowmeter"
)

func init() { shapingAccuracy = measureShapingAccuracy }

// Throughput accuracy of bandwidth shaping, measured through real peapod
// pods: for each rate, one pod with that limit both ways; a TCP flow
// (iperf3, the system's congestion control) from the host to each pod,
// then from each pod to the host. The host side is the instance bridge's
// address (the pods' gateway), the pod side runs under nsenter --net=<the
// pod's pinned netns>; no other address is used.
//
//   - steady rate: the byte counter of the tbf that shapes the direction
//     (root of the host veth into the pod, root of the IFB out of it), read
//     every 20 ms over netlink, from 2 s after the flow's first byte to its
//     end. tbf counts on dequeue, each segment with its Ethernet/IP/TCP
//     headers: the rate on the wire, comparable with the limit as is.
//   - first second: the same counter over the flow's first second, which a
//     large bucket inflates (containerd's ~512 MiB burst: hundreds ×).
//   - latency: an 8-byte UDP datagram from the pod to an echo socket on the
//     gateway and back (no ICMP), every 20 ms for 1 s with the pods idle,
//     then every 100 ms from 2 s into each flow; one leg of its round trip
//     queues behind the flow in tbf's backlog. Added = loaded p50 − idle p50.
//
// The three pods are independent (a veth, a tbf and an IFB each) and their
// flows need ~110 Mbit/s together, so they run side by side: 2 × 10 s of
// flows, about 25 s in all.
const (
	accFlow       = 10 * time.Second
	accSteadyFrom = 2 * time.Second
	accPort       = "5201" // in each pod's own netns: nothing can collide
)

// accRates are the limits measured, as annotation values and bit/s.
var accRates = []struct {
	value string
	bits  uint64
}{{"1M", 1e6}, {"10M", 10e6}, {"100M", 100e6}}

type accDir int

const (
	accIntoPod  accDir = iota // host → pod: ingress limit, tbf on the host veth
	accOutOfPod               // pod → host: egress limit, tbf on the IFB
)

func (d accDir) String() string {
	if d == accIntoPod {
		return "into pod (ingress)"
	}
	return "out of pod (egress)"
}

// accPod is one shaped pod of the measurement.
type accPod struct {
	rate     string
	bits     uint64
	id       string
	netPin   string
	ip       string
	hostVeth string
	ifb      string
	// what peapod applied, from the verbose status
	ingressBurst, egressBurst, ingressQueue, egressQueue uint64

	idleRTT time.Duration // p50
}

type accFlowResult struct {
	steady, first  float64 // bit/s on the wire
	rttP50, rttMax time.Duration
	lost, probes   int
}

func measureShapingAccuracy(ctx context.Context, pp *target, namer *podNamer, cl *cleanups) (*table, error) {
	tb := &table{
		title: fmt.Sprintf("Bandwidth shaping accuracy (peapod): TCP through a pod per limit, %.0f s per flow, the three pods side by side; cc %s",
			accFlow.Seconds(), flowmeter.SystemCC()),
		header: []string{"limit", "direction", "burst / queue", "steady (wire)", "first second", "RTT idle p50", "RTT loaded p50 / max", "added p50"},
	}
	for _, tool := range []string{"iperf3", "nsenter", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			tb.notes = append(tb.notes, fmt.Sprintf("not measured: %s is not installed (apt-get install -y iperf3)", tool))
			return tb, nil
		}
	}
	began := time.Now()
	gw, err := accGateway(peapodSubnet)
	if err != nil {
		return nil, err
	}
	progress(pp.name, "shaping accuracy: pods limited to %s, flows of %s into and out of each", accRateList(), accFlow)

	var pods []*accPod
	defer func() {
		// The phase's cleanup removes every pod anyway; this keeps the
		// instance clean for whatever runs after the hook.
		if ctx.Err() != nil {
			return
		}
		for _, p := range pods {
			_, _ = pp.cri.timedStop(ctx, p.id)
			_, _ = pp.cri.timedRemove(ctx, p.id)
		}
	}()
	for _, r := range accRates {
		cfg, err := namer.next("shaped-acc", map[string]string{
			"kubernetes.io/ingress-bandwidth": r.value,
			"kubernetes.io/egress-bandwidth":  r.value,
		})
		if err != nil {
			return nil, err
		}
		id, _, err := pp.cri.timedRun(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("shaping accuracy: %w", err)
		}
		p := &accPod{rate: r.value, bits: r.bits, id: id}
		pods = append(pods, p)
		if err := accDescribe(ctx, pp.cri, p); err != nil {
			return nil, fmt.Errorf("shaping accuracy: %w", err)
		}
	}

	// Idle RTT, all pods at once (there is nothing to queue behind).
	if err := accParallel(pods, func(p *accPod) error {
		probes, err := flowmeter.StartProbes(accProbeConfig(p, gw, 0, 20*time.Millisecond))
		if err != nil {
			return err
		}
		if err := sleepCtx(ctx, time.Second); err != nil {
			probes.Stop()
			return err
		}
		p.idleRTT = probes.Stop().Median
		return nil
	}); err != nil {
		return nil, fmt.Errorf("shaping accuracy: idle RTT: %w", err)
	}

	results := map[*accPod][2]accFlowResult{}
	var mu sync.Mutex
	for _, dir := range []accDir{accIntoPod, accOutOfPod} {
		progress(pp.name, "shaping accuracy: %s, %d flows side by side", dir, len(pods))
		if err := accParallel(pods, func(p *accPod) error {
			r, err := accMeasure(ctx, p, gw, dir)
			if err != nil {
				return fmt.Errorf("%s %v: %w", p.rate, dir, err)
			}
			mu.Lock()
			rs := results[p]
			rs[dir] = r
			results[p] = rs
			mu.Unlock()
			return nil
		}); err != nil {
			return nil, fmt.Errorf("shaping accuracy: %w", err)
		}
	}

	for _, p := range pods {
		for _, dir := range []accDir{accIntoPod, accOutOfPod} {
			r := results[p][dir]
			l := float64(p.bits)
			burst, queue := p.ingressBurst, p.ingressQueue
			if dir == accOutOfPod {
				burst, queue = p.egressBurst, p.egressQueue
			}
			loaded := fmt.Sprintf("%s / %s", fmtDur(r.rttP50), fmtDur(r.rttMax))
			if r.lost > 0 {
				loaded += fmt.Sprintf(" (%d/%d lost)", r.lost, r.probes)
			}
			tb.add(p.rate, dir.String(), fmt.Sprintf("%s / %s", accBytes(burst), accBytes(queue)),
				fmt.Sprintf("%s (%+.1f%%)", accMbit(r.steady), (r.steady/l-1)*100),
				fmt.Sprintf("%s (%.2f×)", accMbit(r.first), r.first/l),
				fmtDur(p.idleRTT), loaded, fmt.Sprintf("%+.1f ms", float64(r.rttP50-p.idleRTT)/float64(time.Millisecond)))
		}
	}
	tb.notes = append(tb.notes,
		"targets (issue 4): steady within ±5 % of the limit, first second ≤ 1.5× the limit",
		"steady and first second: byte counter of the shaping tbf (host veth root / IFB root), headers included, read every 20 ms;",
		"steady from 2 s after the first byte to the end. burst / queue: tbf bucket and backlog limit peapod chose (verbose status).",
		"RTT: 8-byte UDP probe pod → gateway "+gw+" → pod; idle: every 20 ms for 1 s, loaded: every 100 ms from 2 s into the flow.",
		fmt.Sprintf("measured in %s", time.Since(began).Round(100*time.Millisecond)))
	return tb, nil
}

func accRateList() string {
	var s []string
	for _, r := range accRates {
		s = append(s, r.value)
	}
	return strings.Join(s, ", ")
}

// accParallel runs fn for every pod at once and joins the errors.
func accParallel(pods []*accPod, fn func(*accPod) error) error {
	errs := make([]error, len(pods))
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn(p)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// accDescribe reads from the pod's verbose status where its network lives
// and what shaping peapod applied.
func accDescribe(ctx context.Context, c *criClient, p *accPod) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	resp, err := c.rt.PodSandboxStatus(ctx, &runtime.PodSandboxStatusRequest{PodSandboxId: p.id, Verbose: true})
	if err != nil {
		return fmt.Errorf("PodSandboxStatus %s: %w", p.id, err)
	}
	var v struct {
		Namespaces map[string]string `json:"namespaces"`
		Bandwidth  *struct {
			HostVeth string `json:"hostVeth"`
			IFB      string `json:"ifb"`
			Limits   struct {
				IngressBurstBytes uint64 `json:"ingressBurstBytes"`
				EgressBurstBytes  uint64 `json:"egressBurstBytes"`
			} `json:"limits"`
			IngressQueueBytes uint64 `json:"ingressQueueBytes"`
			EgressQueueBytes  uint64 `json:"egressQueueBytes"`
		} `json:"bandwidth"`
	}
	if err := json.Unmarshal([]byte(resp.Info["info"]), &v); err != nil {
		return fmt.Errorf("PodSandboxStatus %s: verbose info is not JSON: %w", p.id, err)
	}
	p.netPin = v.Namespaces["net"]
	if p.netPin == "" {
		p.netPin = v.Namespaces["network"]
	}
	p.ip = resp.GetStatus().GetNetwork().GetIp()
	if p.netPin == "" || p.ip == "" {
		return fmt.Errorf("pod %s: no pinned netns (%v) or no IP (%q) in its status", p.id, v.Namespaces, p.ip)
	}
	if v.Bandwidth == nil || v.Bandwidth.HostVeth == "" || v.Bandwidth.IFB == "" {
		return fmt.Errorf("pod %s (%s both ways): the verbose status shows no applied shaping", p.id, p.rate)
	}
	b := v.Bandwidth
	p.hostVeth, p.ifb = b.HostVeth, b.IFB
	p.ingressBurst, p.egressBurst = b.Limits.IngressBurstBytes, b.Limits.EgressBurstBytes
	p.ingressQueue, p.egressQueue = b.IngressQueueBytes, b.EgressQueueBytes
	return nil
}

// accMeasure runs one iperf3 flow of accFlow between the gateway and pod p
// in direction dir. The server runs in the pod; the host's client sends
// (into the pod) or receives with -R (out of it).
func accMeasure(ctx context.Context, p *accPod, gw string, dir accDir) (accFlowResult, error) {
	var res accFlowResult
	dev := p.hostVeth
	if dir == accOutOfPod {
		dev = p.ifb
	}
	counter, err := flowmeter.QdiscCounter("", dev, 0)
	if err != nil {
		return res, err
	}
	defer counter.Close()
	probes := accProbeConfig(p, gw, accSteadyFrom, 100*time.Millisecond)
	m, err := flowmeter.Run(ctx, flowmeter.Flow{
		Server:     probes.Probe, // the pod
		Client:     probes.Echo,  // the gateway
		Port:       accPort,
		Reverse:    dir == accOutOfPod,
		Duration:   accFlow,
		SteadyFrom: accSteadyFrom,
		Counter:    counter,
		Probes:     &probes,
	})
	res.steady, res.first = m.SteadyBitsPerSec, m.FirstSecondBitsPerSec
	res.rttP50, res.rttMax, res.lost, res.probes = m.RTT.Median, m.RTT.Max, m.RTT.Lost, m.RTT.Sent
	return res, err
}

// accProbeConfig times 8-byte UDP datagrams from pod p to an echo socket on
// the gateway gw and back, from after on, one every period.
func accProbeConfig(p *accPod, gw string, after, every time.Duration) flowmeter.ProbeConfig {
	return flowmeter.ProbeConfig{
		Echo:  flowmeter.Endpoint{Addr: gw},
		Probe: flowmeter.Endpoint{NetNS: p.netPin, Addr: p.ip},
		After: after,
		Every: every,
	}
}

// accGateway is the first address of subnet: the bridge's.
func accGateway(subnet string) (string, error) {
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

func accMbit(bps float64) string { return fmt.Sprintf("%.2f Mbit/s", bps/1e6) }

func accBytes(b uint64) string {
	if b >= 10<<10 {
		return fmt.Sprintf("%.0f KiB", float64(b)/1024)
	}
	return fmt.Sprintf("%d B", b)
}
