package sandbox

import (
	"errors"
	"fmt"
	"strings"

	"peapod/netns"
)

// PortPublisher publishes the hostPorts of pods when the CNI portmap
// plugin cannot: in a rootless daemon, whose network namespace is not the
// host's, a userspace forwarder (rootless/portfwd) listens on the host's
// ports and forwards to the pod IP. Nil in Config in root mode.
type PortPublisher interface {
	// Publish makes every mapping of the sandbox reach ip: all of them,
	// or none when it fails. A busy host port wraps syscall.EADDRINUSE,
	// a privileged one syscall.EACCES. Publishing a sandbox again
	// replaces what it had.
	Publish(sandboxID, ip string, mappings []netns.PortMapping) error
	// Unpublish frees the sandbox's host ports. Unknown ids are fine.
	Unpublish(sandboxID string) error
}

// ErrHostPort is a hostPort that cannot be had: in use on the host
// (wraps syscall.EADDRINUSE), privileged (syscall.EACCES), an address the
// host does not have, or no way to bind host sockets at all.
var ErrHostPort = errors.New("host port unavailable")

// publishPorts publishes the pod's hostPorts through the PortPublisher,
// after the CNI ADD gave the pod its IP. Without a publisher (root mode)
// CNI portmap has done it already.
func (m *Manager) publishPorts(rec *Sandbox) error {
	if m.cfg.Ports == nil || rec.Spec.NetworkMode == ModeNode || len(rec.Spec.PortMappings) == 0 {
		return nil
	}
	for _, pm := range rec.Spec.PortMappings {
		if p := strings.ToLower(pm.Protocol); p != "tcp" && p != "udp" && p != "" {
			return fmt.Errorf("%w: hostPort %d/%s: only tcp and udp hostPorts are supported in rootless mode", ErrInvalid, pm.HostPort, pm.Protocol)
		}
	}
	ip := rec.IP()
	if ip == "" {
		return fmt.Errorf("hostPorts: the pod network gave the pod no IP to forward to")
	}
	if err := m.cfg.Ports.Publish(rec.ID, ip, rec.Spec.PortMappings); err != nil {
		return fmt.Errorf("%w: %w", ErrHostPort, err)
	}
	return nil
}

// unpublishPorts frees the sandbox's host ports; a no-op without a
// publisher or when nothing was published.
func (m *Manager) unpublishPorts(rec *Sandbox) error {
	if m.cfg.Ports == nil {
		return nil
	}
	if err := m.cfg.Ports.Unpublish(rec.ID); err != nil {
		return fmt.Errorf("hostPorts: %w", err)
	}
	return nil
}

// republishPorts publishes a ready sandbox's hostPorts again in a
// restarted daemon (the host sockets died with the old one). A port taken
// meanwhile is logged; the pod keeps running without it.
func (m *Manager) republishPorts(rec *Sandbox) {
	if err := m.publishPorts(rec); err != nil {
		m.log.Error("hostPorts of a running pod could not be published again", "sandbox", rec.ID, "pod", rec.Spec.Namespace+"/"+rec.Spec.Name, "err", err)
	}
}
