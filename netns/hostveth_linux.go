package netns

import (
	"fmt"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
)

// HostVethOf returns the name of the host end of the veth ifName inside the
// network namespace pinned at netnsPath. The pod end's IFLA_LINK is the
// peer's ifindex, but an ifindex only means something in the peer's own
// namespace, so the device found at that index here is checked to really be
// the peer (a veth whose own IFLA_LINK points back, in the pod's namespace).
func HostVethOf(netnsPath, ifName string) (string, error) {
	ns, err := vns.GetFromPath(netnsPath)
	if err != nil {
		return "", fmt.Errorf("find host veth of %s: open netns %s: %w", ifName, netnsPath, err)
	}
	defer ns.Close()
	inside, err := netlink.NewHandleAt(ns)
	if err != nil {
		return "", fmt.Errorf("find host veth of %s: netlink in %s: %w", ifName, netnsPath, err)
	}
	defer inside.Close()
	pod, err := inside.LinkByName(ifName)
	if err != nil {
		return "", fmt.Errorf("find host veth of %s in %s: %w", ifName, netnsPath, err)
	}
	if pod.Type() != "veth" {
		return "", fmt.Errorf("find host veth of %s in %s: %s is a %s device, not a veth", ifName, netnsPath, ifName, pod.Type())
	}
	peerIndex := pod.Attrs().ParentIndex
	if peerIndex == 0 {
		return "", fmt.Errorf("find host veth of %s in %s: the kernel reports no peer for it", ifName, netnsPath)
	}
	host, err := netlink.LinkByIndex(peerIndex)
	if err != nil {
		return "", fmt.Errorf("find host veth of %s in %s: peer ifindex %d is not in this network namespace: %w", ifName, netnsPath, peerIndex, err)
	}
	notPeer := func(why string) error {
		return fmt.Errorf("find host veth of %s in %s: %s (ifindex %d here) is not its peer: %s", ifName, netnsPath, host.Attrs().Name, peerIndex, why)
	}
	if host.Type() != "veth" {
		return "", notPeer("it is a " + host.Type())
	}
	if host.Attrs().ParentIndex != pod.Attrs().Index {
		return "", notPeer(fmt.Sprintf("its peer is ifindex %d, not %d", host.Attrs().ParentIndex, pod.Attrs().Index))
	}
	// Same ifindexes can pair up in unrelated namespaces (every fresh one
	// numbers from 1), so the candidate's peer must also live in the pod's
	// namespace: the netns id this namespace knows the pod's by must be the
	// one reported for the candidate's peer. Reading the candidate above
	// made the kernel assign an id to its peer's namespace, so a genuine
	// peer always has one.
	id, err := netlink.GetNetNsIdByFd(int(ns))
	if err != nil {
		return "", fmt.Errorf("find host veth of %s in %s: netns id: %w", ifName, netnsPath, err)
	}
	if id < 0 || host.Attrs().NetNsID != id {
		return "", notPeer("its peer lives in another network namespace")
	}
	return host.Attrs().Name, nil
}
