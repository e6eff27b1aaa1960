package portfwd

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"peapod/netns"
)

// Mapping is a pod's hostPort mapping, checked: what a publisher (this
// package's, or RootlessKit's) needs of it.
type Mapping struct {
	Proto                   string // lower case; tcp when the pod named none
	HostIP                  net.IP // nil: every address
	HostPort, ContainerPort int
	// Name says which mapping an error is about: "host port 8080/tcp".
	Name string
}

// Family is "4" or "6" for a mapping bound to an address of that family,
// "" for one on every address.
func (m Mapping) Family() string {
	switch {
	case m.HostIP == nil:
		return ""
	case m.HostIP.To4() != nil:
		return "4"
	default:
		return "6"
	}
}

// ParseMapping checks pm: ports in range, a host IP that is an address.
// The protocol is left to the publisher, which knows what it can carry.
func ParseMapping(pm netns.PortMapping) (Mapping, error) {
	m := Mapping{Proto: strings.ToLower(pm.Protocol), HostPort: int(pm.HostPort), ContainerPort: int(pm.ContainerPort)}
	if m.Proto == "" {
		m.Proto = "tcp"
	}
	m.Name = fmt.Sprintf("host port %d/%s", pm.HostPort, m.Proto)
	if pm.HostIP != "" {
		m.Name = fmt.Sprintf("host port %s/%s", net.JoinHostPort(pm.HostIP, strconv.Itoa(int(pm.HostPort))), m.Proto)
	}
	if pm.HostPort <= 0 || pm.HostPort > 65535 || pm.ContainerPort <= 0 || pm.ContainerPort > 65535 {
		return m, fmt.Errorf("%s: ports out of range (host %d, container %d)", m.Name, pm.HostPort, pm.ContainerPort)
	}
	if pm.HostIP != "" {
		if m.HostIP = net.ParseIP(pm.HostIP); m.HostIP == nil {
			return m, fmt.Errorf("%s: host IP %q is not an IP address", m.Name, pm.HostIP)
		}
	}
	return m, nil
}
