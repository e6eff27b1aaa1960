package flowmeter

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
)

// Endpoint is one end of a flow or of an RTT probe.
type Endpoint struct {
	// NetNS is the path of a network namespace (a pin such as
	// /var/run/netns/<name>); "" is the caller's own.
	NetNS string
	// Addr is the IPv4 address to bind to; for a flow's client "" leaves
	// the choice to the kernel.
	Addr string
}

// command runs name with args in e's network namespace.
func (e Endpoint) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if e.NetNS == "" {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + e.NetNS, "--", name}, args...)...)
}

// within runs fn in e's network namespace.
func (e Endpoint) within(fn func() error) error {
	if e.NetNS == "" {
		return fn()
	}
	return ns.WithNetNSPath(e.NetNS, func(ns.NetNS) error { return fn() })
}

// Counter reads a byte counter over netlink.
type Counter struct {
	// Name says whose counter it is: "<device> (tbf)" or "<device> (link)".
	Name  string
	read  func() (uint64, error)
	close func()
}

// Read returns the counter's current value.
func (c *Counter) Read() (uint64, error) { return c.read() }

// Close releases the counter's netlink socket.
func (c *Counter) Close() { c.close() }

// handleIn opens a netlink handle in the namespace at nsPath ("" = the
// caller's) and finds dev there.
func handleIn(nsPath, dev string) (*netlink.Handle, netlink.Link, error) {
	var h *netlink.Handle
	var err error
	if nsPath == "" {
		h, err = netlink.NewHandle()
	} else {
		var nsh vns.NsHandle
		if nsh, err = vns.GetFromPath(nsPath); err != nil {
			return nil, nil, err
		}
		h, err = netlink.NewHandleAt(nsh)
		nsh.Close()
	}
	if err != nil {
		return nil, nil, err
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		h.Close()
		return nil, nil, err
	}
	return h, link, nil
}

// QdiscCounter returns the byte counter of the root tbf of device dev in
// the network namespace at nsPath ("" = the caller's); handle, unless 0,
// is the tbf's handle. tbf counts on dequeue, so its counter is what left
// the shaper.
func QdiscCounter(nsPath, dev string, handle uint32) (*Counter, error) {
	h, link, err := handleIn(nsPath, dev)
	if err != nil {
		return nil, err
	}
	read := func() (uint64, error) {
		qdiscs, err := h.QdiscList(link)
		if err != nil {
			return 0, err
		}
		for _, q := range qdiscs {
			a := q.Attrs()
			if q.Type() == "tbf" && a.Parent == netlink.HANDLE_ROOT && (handle == 0 || a.Handle == handle) &&
				a.Statistics != nil && a.Statistics.Basic != nil {
				return a.Statistics.Basic.Bytes, nil
			}
		}
		return 0, fmt.Errorf("no root tbf on %s", dev)
	}
	return &Counter{Name: dev + " (tbf)", read: read, close: h.Close}, nil
}

// LinkCounter returns the transmitted (tx) or else received bytes of device
// dev in the network namespace at nsPath ("" = the caller's).
func LinkCounter(nsPath, dev string, tx bool) (*Counter, error) {
	h, link, err := handleIn(nsPath, dev)
	if err != nil {
		return nil, err
	}
	idx := link.Attrs().Index
	read := func() (uint64, error) {
		l, err := h.LinkByIndex(idx)
		if err != nil {
			return 0, err
		}
		if tx {
			return l.Attrs().Statistics.TxBytes, nil
		}
		return l.Attrs().Statistics.RxBytes, nil
	}
	return &Counter{Name: dev + " (link)", read: read, close: h.Close}, nil
}

// Sample is one reading of a byte counter.
type Sample struct {
	At    time.Time
	Bytes uint64
}

// Flow is one iperf3 TCP flow to measure.
type Flow struct {
	// Server runs "iperf3 -s -1", bound to Server.Addr; Client connects to
	// it (bound to Client.Addr unless "").
	Server, Client Endpoint
	Port           string // TCP port of the server
	// Reverse runs the client with -R: the server sends, and iperf3's
	// numbers are the client's, the receiver's.
	Reverse  bool
	CC       string        // TCP congestion control (-C), "" = the system's
	Duration time.Duration // of the flow, whole seconds
	// SteadyFrom is where the steady part begins, after the flow's first
	// byte; it ends 250 ms before the flow does.
	SteadyFrom time.Duration
	// Counter is sampled every 20 ms while the flow runs.
	Counter *Counter
	// Probes, unless nil, times RTT probes while the flow runs.
	Probes *ProbeConfig
}

// Result is what Run measured.
type Result struct {
	// FirstSecondBitsPerSec and SteadyBitsPerSec are rates of the counter:
	// on the wire when it is a tbf's.
	FirstSecondBitsPerSec, SteadyBitsPerSec float64
	// GoodputWireBitsPerSec is iperf3's receiver goodput over the whole
	// flow, scaled by (MSS+66)/MSS to the wire: a cross-check.
	GoodputWireBitsPerSec float64
	Retransmits           int
	RTT                   RTTStats // zero without probes
	Samples               []Sample
}

// Run runs flow f and measures it; ctx bounds it (Run adds a deadline of
// the flow's duration plus 30 s).
func Run(ctx context.Context, f Flow) (Result, error) {
	var res Result
	ctx, cancel := context.WithTimeout(ctx, f.Duration+30*time.Second)
	defer cancel()
	server := f.Server.command(ctx, "iperf3", "-s", "-1", "-B", f.Server.Addr, "-p", f.Port)
	var serverOut strings.Builder
	server.Stdout, server.Stderr = &serverOut, &serverOut
	if err := server.Start(); err != nil {
		return res, fmt.Errorf("start iperf3 server: %w", err)
	}
	defer func() { _ = server.Process.Kill(); _ = server.Wait() }()
	if err := waitListening(ctx, f.Server, f.Port); err != nil {
		return res, fmt.Errorf("iperf3 server: %w\n%s", err, serverOut.String())
	}

	sampleErr := make(chan error, 1)
	stopSampling := make(chan struct{})
	go func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			b, err := f.Counter.Read()
			if err != nil {
				sampleErr <- err
				return
			}
			res.Samples = append(res.Samples, Sample{time.Now(), b})
			select {
			case <-stopSampling:
				sampleErr <- nil
				return
			case <-tick.C:
			}
		}
	}()
	var probes *Prober
	if f.Probes != nil {
		var err error
		if probes, err = StartProbes(*f.Probes); err != nil {
			close(stopSampling)
			<-sampleErr
			return res, err
		}
	}

	args := []string{"-c", f.Server.Addr, "-p", f.Port, "-J", "-t", fmt.Sprint(int(f.Duration.Round(time.Second) / time.Second))}
	if f.Client.Addr != "" {
		args = append(args, "-B", f.Client.Addr)
	}
	if f.Reverse {
		args = append(args, "-R")
	}
	if f.CC != "" {
		args = append(args, "-C", f.CC)
	}
	out, runErr := f.Client.command(ctx, "iperf3", args...).Output()
	if probes != nil {
		res.RTT = probes.Stop()
	}
	close(stopSampling)
	if err := <-sampleErr; err != nil {
		return res, fmt.Errorf("read the byte counter of %s: %w", f.Counter.Name, err)
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
		return res, fmt.Errorf("iperf3 client: %v %s %v\n%.2000s\nserver: %s", runErr, report.Error, err, out, serverOut.String())
	}
	if report.Start.MSS > 0 {
		res.GoodputWireBitsPerSec = report.End.Received.BitsPerSec * float64(report.Start.MSS+66) / float64(report.Start.MSS)
	}
	res.Retransmits = report.End.Sent.Retransmits
	var err error
	res.FirstSecondBitsPerSec, res.SteadyBitsPerSec, err = WireRates(res.Samples, f.Duration, f.SteadyFrom)
	return res, err
}

// waitListening polls until something listens on TCP port in e's network
// namespace.
func waitListening(ctx context.Context, e Endpoint, port string) error {
	for {
		out, err := e.command(ctx, "ss", "-Hltn", "sport = :"+port).Output()
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

// WireRates finds a flow's first byte in the counter samples s (the sample
// before the first one two frames above the idle baseline, so that no burst
// can hide before it) and returns the rate of the first second and of the
// steady part, from steadyFrom to 250 ms before the end of the flow of
// duration d, in bit/s.
func WireRates(s []Sample, d, steadyFrom time.Duration) (first, steady float64, err error) {
	if len(s) < 3 {
		return 0, 0, errors.New("too few counter samples")
	}
	base := s[0].Bytes
	start := -1
	for i := range s {
		if s[i].Bytes-base >= 2*1514 {
			start = max(i-1, 0)
			break
		}
	}
	if start < 0 {
		return 0, 0, fmt.Errorf("no traffic seen (counter %d → %d)", base, s[len(s)-1].Bytes)
	}
	t0 := s[start].At
	at := func(t time.Time) (float64, error) {
		for i := 1; i < len(s); i++ {
			if !s[i].At.Before(t) {
				a, b := s[i-1], s[i]
				f := float64(t.Sub(a.At)) / float64(b.At.Sub(a.At))
				return float64(a.Bytes) + f*float64(b.Bytes-a.Bytes), nil
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
	if first, err = rate(0, time.Second); err != nil {
		return 0, 0, err
	}
	steady, err = rate(steadyFrom, d-250*time.Millisecond)
	return first, steady, err
}

// ProbeConfig says where RTT probes go and when.
type ProbeConfig struct {
	// Echo answers every datagram; Probe sends them. Both need an address.
	Echo, Probe Endpoint
	After       time.Duration // the first probe, after the start
	Every       time.Duration // then one per period
}

// RTTStats sums up the probes.
type RTTStats struct {
	Median, Max time.Duration // of the answered probes
	Sent, Lost  int           // Lost: sent without answer
}

// Prober sends 8-byte UDP datagrams from one endpoint to an echo socket on
// another and times the answers; under load one leg of the round trip
// queues behind the flow.
type Prober struct {
	server, client net.PacketConn
	done           chan struct{}
	wg             sync.WaitGroup
	mu             sync.Mutex
	sent           int
	rtts           []time.Duration
}

// StartProbes opens the echo and probe sockets and starts probing.
func StartProbes(c ProbeConfig) (*Prober, error) {
	var server, client net.PacketConn
	err := c.Echo.within(func() (err error) {
		server, err = net.ListenPacket("udp4", c.Echo.Addr+":0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("echo socket on %s: %w", c.Echo.Addr, err)
	}
	err = c.Probe.within(func() (err error) {
		client, err = net.ListenPacket("udp4", c.Probe.Addr+":0")
		return err
	})
	if err != nil {
		server.Close()
		return nil, fmt.Errorf("probe socket on %s: %w", c.Probe.Addr, err)
	}
	r := &Prober{server: server, client: client, done: make(chan struct{})}
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
	go func() { // probes
		defer r.wg.Done()
		select {
		case <-r.done:
			return
		case <-time.After(c.After):
		}
		tick := time.NewTicker(c.Every)
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

// Stop stops probing, waits 300 ms for late answers, closes the sockets
// and sums up.
func (r *Prober) Stop() RTTStats {
	close(r.done)
	time.Sleep(300 * time.Millisecond)
	r.server.Close()
	r.client.Close()
	r.wg.Wait()
	r.mu.Lock()
	defer r.mu.Unlock()
	st := RTTStats{Sent: r.sent, Lost: r.sent - len(r.rtts)}
	if len(r.rtts) == 0 {
		return st
	}
	slices.Sort(r.rtts)
	st.Median, st.Max = r.rtts[len(r.rtts)/2], r.rtts[len(r.rtts)-1]
	return st
}

// SystemCC is the system's default TCP congestion control.
func SystemCC() string {
	b, _ := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	return strings.TrimSpace(string(b))
}
