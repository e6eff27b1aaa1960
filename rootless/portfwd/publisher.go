package portfwd

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"

	"peapod/netns"
)

// Binder hands out host sockets: a *binder.Client in a rootless daemon,
// Local where the daemon itself is in the host's network namespace.
type Binder interface {
	Listen(network, addr string) (net.Listener, error)
	ListenPacket(network, addr string) (net.PacketConn, error)
}

// Local binds in the calling process's own network namespace.
type Local struct{}

func (Local) Listen(network, addr string) (net.Listener, error) { return net.Listen(network, addr) }

func (Local) ListenPacket(network, addr string) (net.PacketConn, error) {
	return net.ListenPacket(network, addr)
}

// NoHostSockets is a Binder that refuses every request with reason: for a
// daemon that cannot bind on the host (started without a peapod parent),
// so pods with hostPorts fail clearly instead of running unreachable.
func NoHostSockets(reason string) Binder { return noHostSockets(reason) }

type noHostSockets string

func (r noHostSockets) Listen(network, addr string) (net.Listener, error) {
	return nil, fmt.Errorf("bind %s %s: %s", network, addr, string(r))
}

func (r noHostSockets) ListenPacket(network, addr string) (net.PacketConn, error) {
	return nil, fmt.Errorf("bind %s %s: %s", network, addr, string(r))
}

// Publisher publishes the hostPorts of pods: one Forwarder per mapping,
// grouped by sandbox. It implements sandbox.PortPublisher.
type Publisher struct {
	b    Binder
	opts Options

	mu   sync.Mutex
	pods map[string][]*Forwarder
}

// NewPublisher returns a publisher that takes its sockets from b.
func NewPublisher(b Binder, opts Options) *Publisher {
	opts.defaults()
	return &Publisher{b: b, opts: opts, pods: map[string][]*Forwarder{}}
}

// Publish forwards every mapping of the sandbox to ip. Either all of them
// are published or, on error, none: the error names the mapping that
// failed and wraps the cause (errors.Is(err, syscall.EADDRINUSE) for a busy
// host port, syscall.EACCES for a privileged one). Publishing a sandbox
// again replaces its earlier mappings.
func (p *Publisher) Publish(sandboxID, ip string, mappings []netns.PortMapping) error {
	podIP := net.ParseIP(ip)
	if podIP == nil {
		return fmt.Errorf("publish hostPorts: pod IP %q is not an IP address", ip)
	}
	_ = p.Unpublish(sandboxID)
	var fws []*Forwarder
	fail := func(err error) error {
		for _, f := range fws {
			f.Close()
		}
		return err
	}
	for _, m := range mappings {
		f, err := p.publishOne(podIP, m)
		if err != nil {
			return fail(err)
		}
		fws = append(fws, f)
	}
	p.mu.Lock()
	p.pods[sandboxID] = fws
	p.mu.Unlock()
	p.opts.Log.Debug("hostPorts published", "sandbox", sandboxID, "ip", ip, "count", len(fws))
	return nil
}

// ErrProtocol is a mapping whose protocol the forwarder cannot carry.
var ErrProtocol = errors.New("unsupported hostPort protocol")

func (p *Publisher) publishOne(podIP net.IP, pm netns.PortMapping) (*Forwarder, error) {
	m, err := ParseMapping(pm)
	if err != nil {
		return nil, err
	}
	name, proto := m.Name, m.Proto
	if proto != "tcp" && proto != "udp" {
		return nil, fmt.Errorf("%s: %w: only tcp and udp are forwarded in rootless mode", name, ErrProtocol)
	}
	network, host := proto+m.Family(), ""
	if m.HostIP != nil && !m.HostIP.IsUnspecified() {
		host = m.HostIP.String() // 0.0.0.0: every IPv4 address; ::, every IPv6 one
	}
	addr := net.JoinHostPort(host, strconv.Itoa(m.HostPort))
	target := net.JoinHostPort(podIP.String(), strconv.Itoa(m.ContainerPort))
	if proto == "tcp" {
		l, err := p.b.Listen(network, addr)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return TCP(l, target, p.opts), nil
	}
	pc, err := p.b.ListenPacket(network, addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return UDP(pc, target, p.opts), nil
}

// Unpublish stops the sandbox's forwarders and frees their host ports.
// Unknown sandboxes are fine.
func (p *Publisher) Unpublish(sandboxID string) error {
	p.mu.Lock()
	fws := p.pods[sandboxID]
	delete(p.pods, sandboxID)
	p.mu.Unlock()
	for _, f := range fws {
		f.Close()
	}
	return nil
}

// Published returns the host addresses of a sandbox's forwarders.
func (p *Publisher) Published(sandboxID string) []net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []net.Addr
	for _, f := range p.pods[sandboxID] {
		out = append(out, f.Addr())
	}
	return out
}

// Close unpublishes every sandbox.
func (p *Publisher) Close() {
	p.mu.Lock()
	ids := make([]string, 0, len(p.pods))
	for id := range p.pods {
		ids = append(ids, id)
	}
	p.mu.Unlock()
	for _, id := range ids {
		_ = p.Unpublish(id)
	}
}
