package netns

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
)

// flowDirection is which way a measured flow's data goes through the pod's
// veth.
type flowDirection int

const (
	intoPod  flowDirection = iota // host → pod: the ingress limit, tbf on the host veth
	outOfPod                      // pod → host: the egress limit, tbf on the IFB
)

func (d flowDirection) String() string {
	if d == intoPod {
		return "into pod"
	}
	return "out of pod"
}

// flowResult is one measured TCP flow. Rates "on the wire" count what tbf
// counts: every segment with its Ethernet, IP and TCP headers.
type flowResult struct {
	Direction       flowDirection
	LimitBitsPerSec uint64 // 0: unshaped
	BurstBytes      uint64 // the bucket of the measured direction
	CC              string // TCP congestion control
	Duration        time.Duration
	// SteadyBitsPerSec is the rate on the wire from 2 s after the first byte
	// to the end of the flow, FirstSecondBitsPerSec the rate in the first
	// second (what a large burst inflates).
	SteadyBitsPerSec      float64
	FirstSecondBitsPerSec float64
	// GoodputWireBitsPerSec is iperf3's receiver goodput over the whole
	// flow, scaled by (MSS+66)/MSS to the wire: a cross-check.
	GoodputWireBitsPerSec float64
	Retransmits           int
	// RTT of small UDP probes from the pod to the host and back while the
	// flow runs: they queue behind the flow in the loaded direction.
	RTTMedian, RTTMax time.Duration
	ProbesLost        int
}

func (r flowResult) row() string {
	limit, steady, first := "none", fmtMbit(r.SteadyBitsPerSec), fmtMbit(r.FirstSecondBitsPerSec)
	if r.LimitBitsPerSec > 0 {
		l := float64(r.LimitBitsPerSec)
		limit = fmtMbit(l)
		steady += fmt.Sprintf(" (%+.1f%%)", (r.SteadyBitsPerSec/l-1)*100)
		first += fmt.Sprintf(" (%.2f×)", r.FirstSecondBitsPerSec/l)
	}
	burst := "-"
	if r.BurstBytes > 0 {
		burst = fmt.Sprintf("%dB", r.BurstBytes)
	}
	return fmt.Sprintf("%-9s %-9s %-10s %-6s %-20s %-19s %-12s %8s %8s %5d %4d %4.0fs",
		limit, burst, r.Direction, r.CC, steady, first, fmtMbit(r.GoodputWireBitsPerSec),
		r.RTTMedian.Round(10*time.Microsecond), r.RTTMax.Round(10*time.Microsecond), r.Retransmits, r.ProbesLost, r.Duration.Seconds())
}

const flowTableHeader = "limit     burst     direction  cc     steady (wire)        first second        goodput→wire  rtt-med  rtt-max  retr lost  dur"

func fmtMbit(bps float64) string { return fmt.Sprintf("%.2fM", bps/1e6) }

// counterSample is one reading of the byte counter of a shaping point.
type counterSample struct {
	at    time.Time
	bytes uint64
}

// measureShapedFlow runs one iperf3 TCP flow of duration d through pod p in
// direction dir, with the shaping st applied (st.Limits zero: unshaped), and
// measures it on the wire: it samples every 20 ms the byte counter of the
// tbf that shapes this direction (tbf counts GSO packets segment by segment
// with all headers, like a real wire), or of the veth when unshaped. The
// server runs on the sending side and the client with -R on the receiving
// side, so iperf3's own numbers are receiver numbers. cc picks the TCP
// congestion control ("" = the system's).
func measureShapedFlow(p *shapedPod, st ShapingState, dir flowDirection, d time.Duration, cc string) (flowResult, error) {
	res := flowResult{Direction: dir, Duration: d, CC: cc}
	if cc == "" {
		res.CC = readSysctl("/proc/sys/net/ipv4/tcp_congestion_control")
	}
	senderNS, receiverNS, serverAddr := p.hostNS, p.podNS, p.hostAddr
	if dir == outOfPod {
		senderNS, receiverNS, serverAddr = p.podNS, p.hostNS, p.podAddr
	}
	read, closeCounter, err := shapingCounter(p, st, dir)
	if err != nil {
		return res, err
	}
	defer closeCounter()
	if dir == intoPod {
		res.LimitBitsPerSec, res.BurstBytes = st.Limits.IngressRateBitsPerSec, st.Limits.IngressBurstBytes
	} else {
		res.LimitBitsPerSec, res.BurstBytes = st.Limits.EgressRateBitsPerSec, st.Limits.EgressBurstBytes
	}

	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	const port = "5201" // each pod has namespaces of its own
	server := exec.CommandContext(ctx, "ip", "netns", "exec", senderNS, "iperf3", "-s", "-1", "-B", serverAddr, "-p", port)
	var serverOut strings.Builder
	server.Stdout, server.Stderr = &serverOut, &serverOut
	if err := server.Start(); err != nil {
		return res, fmt.Errorf("start iperf3 server: %w", err)
	}
	defer func() { _ = server.Process.Kill(); _ = server.Wait() }()
	if err := waitListening(ctx, senderNS, port); err != nil {
		return res, fmt.Errorf("iperf3 server in %s: %w\n%s", senderNS, err, serverOut.String())
	}

	var samples []counterSample
	sampleErr := make(chan error, 1)
	stopSampling := make(chan struct{})
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			b, err := read()
			if err != nil {
				sampleErr <- err
				return
			}
			samples = append(samples, counterSample{time.Now(), b})
			select {
			case <-stopSampling:
				sampleErr <- nil
				return
			case <-tick.C:
			}
		}
	}()
	probes, err := startRTTProbes(p)
	if err != nil {
		close(stopSampling)
		<-sampleErr
		return res, err
	}

	args := []string{"netns", "exec", receiverNS, "iperf3", "-c", serverAddr, "-p", port, "-R", "-J",
		"-t", fmt.Sprint(int(d.Round(time.Second) / time.Second))}
	if cc != "" {
		args = append(args, "-C", cc)
	}
	out, runErr := exec.CommandContext(ctx, "ip", args...).Output()
	res.RTTMedian, res.RTTMax, res.ProbesLost = probes.stop()
	close(stopSampling)
	if err := <-sampleErr; err != nil {
		return res, fmt.Errorf("read byte counter: %w", err)
	}
	var report struct {
		Error string `json:"error"`
		Start struct {
			MSS int `json:"tcp_mss_default"`
		} `json:"start"`
		End struct {
			Received struct {
				BitsPerSec float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &report); err != nil || report.Error != "" || runErr != nil {
		return res, fmt.Errorf("iperf3 client in %s: %v %s %v\n%.2000s", receiverNS, runErr, report.Error, err, out)
	}
	if report.Start.MSS > 0 {
		res.GoodputWireBitsPerSec = report.End.Received.BitsPerSec * float64(report.Start.MSS+66) / float64(report.Start.MSS)
	}
	res.Retransmits = report.End.Sent.Retransmits
	res.FirstSecondBitsPerSec, res.SteadyBitsPerSec, err = wireRates(samples, d)
	return res, err
}

// wireRates finds the flow's first byte in the counter samples (the first
// sample two frames above the idle baseline, minus one sampling period so
// that no burst can hide before it) and returns the rates of the first
// second and of the steady part, from 2 s on to 250 ms before the end.
func wireRates(s []counterSample, d time.Duration) (firstBitsPerSec, steadyBitsPerSec float64, err error) {
	if len(s) < 3 {
		return 0, 0, errors.New("too few counter samples")
	}
	base := s[0].bytes
	start := -1
	for i := range s {
		if s[i].bytes-base >= 2*1514 {
			start = max(i-1, 0)
			break
		}
	}
	if start < 0 {
		return 0, 0, fmt.Errorf("no traffic seen (counter %d → %d)", base, s[len(s)-1].bytes)
	}
	t0 := s[start].at
	at := func(t time.Time) (float64, error) {
		for i := 1; i < len(s); i++ {
			if !s[i].at.Before(t) {
				a, b := s[i-1], s[i]
				f := float64(t.Sub(a.at)) / float64(b.at.Sub(a.at))
				return float64(a.bytes) + f*float64(b.bytes-a.bytes), nil
			}
		}
		return 0, fmt.Errorf("the flow ended before %v", t.Sub(t0))
	}
	rate := func(from, to time.Duration) (float64, error) {
		a, err := at(t0.Add(from))
		if err != nil {
			return 0, err
		}
		b, err := at(t0.Add(to))
		if err != nil {
			return 0, err
		}
		return (b - a) * 8 / (to - from).Seconds(), nil
	}
	if firstBitsPerSec, err = rate(0, time.Second); err != nil {
		return 0, 0, err
	}
	steadyBitsPerSec, err = rate(2*time.Second, d-250*time.Millisecond)
	return firstBitsPerSec, steadyBitsPerSec, err
}

// shapingCounter returns a reader of the byte counter that measures
// direction dir: the tbf of that direction if it is shaped, else the host
// veth's own counter.
func shapingCounter(p *shapedPod, st ShapingState, dir flowDirection) (func() (uint64, error), func(), error) {
	nsh, err := vns.GetFromPath(p.hostNSPath())
	if err != nil {
		return nil, nil, err
	}
	h, err := netlink.NewHandleAt(nsh)
	nsh.Close()
	if err != nil {
		return nil, nil, err
	}
	dev, shaped := p.hostVeth, st.Limits.IngressRateBitsPerSec > 0
	if dir == outOfPod {
		shaped = st.Limits.EgressRateBitsPerSec > 0
		if shaped {
			dev = st.IFB
		}
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		h.Close()
		return nil, nil, err
	}
	read := func() (uint64, error) {
		if !shaped {
			l, err := h.LinkByIndex(link.Attrs().Index)
			if err != nil {
				return 0, err
			}
			if dir == intoPod {
				return l.Attrs().Statistics.TxBytes, nil
			}
			return l.Attrs().Statistics.RxBytes, nil
		}
		qdiscs, err := h.QdiscList(link)
		if err != nil {
			return 0, err
		}
		for _, q := range qdiscs {
			a := q.Attrs()
			if a.Parent == netlink.HANDLE_ROOT && a.Handle == shapingHandle && a.Statistics != nil && a.Statistics.Basic != nil {
				return a.Statistics.Basic.Bytes, nil
			}
		}
		return 0, fmt.Errorf("no peapod tbf on %s", dev)
	}
	return read, h.Close, nil
}

// waitListening polls until something listens on TCP port in namespace nsName.
func waitListening(ctx context.Context, nsName, port string) error {
	for {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", nsName, "ss", "-Hltn", "sport = :"+port).Output()
		if err == nil && strings.TrimSpace(string(out)) != "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing listens on port %s", port)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// rttProbes sends a small UDP datagram every 100 ms from the pod to an echo
// socket on the host side and times the answers.
type rttProbes struct {
	server, client net.PacketConn
	done           chan struct{}
	wg             sync.WaitGroup
	mu             sync.Mutex
	sent           int
	rtts           []time.Duration
}

func startRTTProbes(p *shapedPod) (*rttProbes, error) {
	var server, client net.PacketConn
	err := ns.WithNetNSPath(p.hostNSPath(), func(ns.NetNS) (err error) {
		server, err = net.ListenPacket("udp4", p.hostAddr+":0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("echo socket: %w", err)
	}
	err = ns.WithNetNSPath(p.podNSPath(), func(ns.NetNS) (err error) {
		client, err = net.ListenPacket("udp4", p.podAddr+":0")
		return err
	})
	if err != nil {
		server.Close()
		return nil, fmt.Errorf("probe socket: %w", err)
	}
	r := &rttProbes{server: server, client: client, done: make(chan struct{})}
	r.wg.Add(3)
	go func() { // echo
		defer r.wg.Done()
		buf := make([]byte, 64)
		for {
			n, from, err := server.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = server.WriteTo(buf[:n], from)
		}
	}()
	go func() { // answers
		defer r.wg.Done()
		buf := make([]byte, 64)
		for {
			n, _, err := client.ReadFrom(buf)
			if err != nil {
				return
			}
			if n == 8 {
				rtt := time.Since(time.Unix(0, int64(binary.BigEndian.Uint64(buf))))
				r.mu.Lock()
				r.rtts = append(r.rtts, rtt)
				r.mu.Unlock()
			}
		}
	}()
	go func() { // probes, from 1 s on, once the flow is under way
		defer r.wg.Done()
		select {
		case <-r.done:
			return
		case <-time.After(time.Second):
		}
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var b [8]byte
			binary.BigEndian.PutUint64(b[:], uint64(time.Now().UnixNano()))
			if _, err := client.WriteTo(b[:], server.LocalAddr()); err == nil {
				r.mu.Lock()
				r.sent++
				r.mu.Unlock()
			}
			select {
			case <-r.done:
				return
			case <-tick.C:
			}
		}
	}()
	return r, nil
}

// stop waits briefly for late answers and returns the median and maximum
// RTT and the number of probes that got no answer.
func (r *rttProbes) stop() (median, maxRTT time.Duration, lost int) {
	close(r.done)
	time.Sleep(300 * time.Millisecond)
	r.server.Close()
	r.client.Close()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	lost = r.sent - len(r.rtts)
	if len(r.rtts) == 0 {
		return 0, 0, lost
	}
	sort.Slice(r.rtts, func(i, j int) bool { return r.rtts[i] < r.rtts[j] })
	return r.rtts[len(r.rtts)/2], r.rtts[len(r.rtts)-1], lost
}

// TestShapedThroughput measures real TCP flows through shaped pods: the
// steady rate on the wire must be within 5 % of the limit and the first
// second at most 1.5× it, and a probe's RTT under load stays within what the
// backlogs allow; an unshaped pod must not be limited. Each flow has a pod
// of its own, and flows of different pods run side by side (they share no
// queue and little CPU), so the shaped flows take 10 s each and the whole
// test about 35 s.
func TestShapedThroughput(t *testing.T) {
	if testing.Short() {
		t.Skip("throughput measurement takes ~35 s")
	}
	requireShapingRoot(t)
	for _, tool := range []string{"iperf3", "ss"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed for the throughput test (apt-get install -y iperf3 iproute2)", tool)
		}
	}
	type flow struct {
		limits BandwidthLimits
		dir    flowDirection
		d      time.Duration
		cc     string
	}
	pod10x5 := BandwidthLimits{IngressRateBitsPerSec: 10e6, EgressRateBitsPerSec: 5e6}
	phases := [][]flow{
		{
			{pod10x5, intoPod, 10 * time.Second, ""},
			{pod10x5, outOfPod, 10 * time.Second, ""},
			// A control: with a 4 MiB bucket (containerd uses 512 MiB) the
			// meter must see the first second far above the limit.
			{BandwidthLimits{IngressRateBitsPerSec: 10e6, IngressBurstBytes: 4 << 20}, intoPod, 10 * time.Second, ""},
		},
		{
			{BandwidthLimits{IngressRateBitsPerSec: 1e6, EgressRateBitsPerSec: 1e6}, intoPod, 10 * time.Second, ""},
			{BandwidthLimits{IngressRateBitsPerSec: 1e6, EgressRateBitsPerSec: 1e6}, outOfPod, 10 * time.Second, ""},
			{BandwidthLimits{IngressRateBitsPerSec: 100e6, EgressRateBitsPerSec: 100e6}, intoPod, 10 * time.Second, ""},
			{BandwidthLimits{IngressRateBitsPerSec: 100e6, EgressRateBitsPerSec: 100e6}, outOfPod, 10 * time.Second, ""},
		},
		// Alone, so the machine's full speed is available.
		{{BandwidthLimits{}, intoPod, 3 * time.Second, ""}},
		{{BandwidthLimits{}, outOfPod, 3 * time.Second, ""}},
	}
	// Most nodes run cubic; this one may default to something else (bbr
	// paces itself and is the easier case). Run the main pair with cubic too.
	if b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_available_congestion_control"); err == nil &&
		strings.Contains(string(b), "cubic") && !strings.Contains(readSysctl("/proc/sys/net/ipv4/tcp_congestion_control"), "cubic") {
		phases[0] = append(phases[0], flow{pod10x5, intoPod, 10 * time.Second, "cubic"}, flow{pod10x5, outOfPod, 10 * time.Second, "cubic"})
	}
	var mu sync.Mutex
	var results []flowResult
	subnet := 0
	for i, phase := range phases {
		t.Run(fmt.Sprintf("phase%d", i+1), func(t *testing.T) {
			// Goroutines rather than t.Parallel, which go test caps at
			// GOMAXPROCS (2 here) while these flows need little CPU.
			var wg sync.WaitGroup
			for _, f := range phase {
				subnet++
				p := newShapedPod(t, subnet)
				tag, id := shapingTestTag(), shapingRandHex(64)
				st, err := p.apply(IFBName(tag, id), "peapod:"+tag+":"+id, f.limits)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if err := p.remove(st); err != nil {
						t.Error(err)
					}
					p.requireUnshaped()
				})
				wg.Add(1)
				go func() {
					defer wg.Done()
					name := fmt.Sprintf("%v flow (cc %q)", f.dir, f.cc)
					r, err := measureShapedFlow(p, st, f.dir, f.d, f.cc)
					if err != nil {
						t.Errorf("%s: %v", name, err)
						return
					}
					mu.Lock()
					results = append(results, r)
					mu.Unlock()
					t.Log(r.row())
					if err := checkFlow(r, st); err != nil {
						t.Errorf("%s: %v", name, err)
					}
				}()
			}
			wg.Wait()
		})
	}
	t.Log("\n" + flowTableHeader + "\n" + func() string {
		var rows []string
		for _, r := range results {
			rows = append(rows, r.row())
		}
		return strings.Join(rows, "\n")
	}())
}

// checkFlow holds a measured flow to the shaping promises: steady rate
// within 5 % of the limit, first second at most 1.5× it, a probe's median
// RTT within two full backlogs (one each way) plus scheduling noise; an
// unshaped flow above 500 Mbit/s.
func checkFlow(r flowResult, st ShapingState) error {
	if bigBurst := st.Limits.IngressBurstBytes > 1<<20; bigBurst && r.Direction == intoPod {
		want := float64(r.LimitBitsPerSec) + float64(st.Limits.IngressBurstBytes)*8*0.9
		if r.FirstSecondBitsPerSec < want {
			return fmt.Errorf("control flow with a %d byte burst: first second %s, expected at least %s: the meter misses bursts",
				st.Limits.IngressBurstBytes, fmtMbit(r.FirstSecondBitsPerSec), fmtMbit(want))
		}
		return nil
	}
	if r.LimitBitsPerSec == 0 {
		if r.SteadyBitsPerSec < 500e6 {
			return fmt.Errorf("unshaped pod limited to %s", fmtMbit(r.SteadyBitsPerSec))
		}
		return nil
	}
	var errs []error
	limit := float64(r.LimitBitsPerSec)
	if r.SteadyBitsPerSec < 0.95*limit || r.SteadyBitsPerSec > 1.05*limit {
		errs = append(errs, fmt.Errorf("steady rate %s is not within 5%% of the limit %s", fmtMbit(r.SteadyBitsPerSec), fmtMbit(limit)))
	}
	if r.FirstSecondBitsPerSec > 1.5*limit {
		errs = append(errs, fmt.Errorf("first second %s is more than 1.5× the limit %s", fmtMbit(r.FirstSecondBitsPerSec), fmtMbit(limit)))
	}
	backlogs := float64(st.IngressQueueBytes)*8/float64(st.Limits.IngressRateBitsPerSec) +
		float64(st.EgressQueueBytes)*8/float64(st.Limits.EgressRateBitsPerSec)
	if bound := time.Duration(backlogs*float64(time.Second)) + 10*time.Millisecond; r.RTTMedian > bound {
		errs = append(errs, fmt.Errorf("median RTT under load %v is above %v", r.RTTMedian, bound))
	}
	return errors.Join(errs...)
}

func readSysctl(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}
