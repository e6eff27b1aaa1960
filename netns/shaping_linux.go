package netns

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// Everything here works in the network namespace of the calling thread
// (the host's, for the daemon): the netlink package opens a fresh socket per
// request in that namespace.

// ShapingState is what ApplyShaping installed: the lead persists it so a
// restarted daemon can remove it, and shows it in PodSandboxStatus.
// Limits holds the bursts actually used (chosen from the rate when the pod
// did not ask for one); the queue sizes are tbf's backlog limits.
type ShapingState struct {
	HostVeth          string          `json:"hostVeth"`
	IFB               string          `json:"ifb,omitempty"`
	Limits            BandwidthLimits `json:"limits"`
	IngressQueueBytes uint64          `json:"ingressQueueBytes,omitempty"`
	EgressQueueBytes  uint64          `json:"egressQueueBytes,omitempty"`
}

// Handles and priorities that mark the tc objects as peapod's. A qdisc added
// by anyone always has a non-zero handle (the kernel picks 8001: and up when
// none is given), so a root qdisc with handle 0 is the device default and a
// root tbf with shapingHandle is ours.
var shapingHandle = netlink.MakeHandle(0x50d, 0) // "pod"

const (
	redirectFilterPrio   = 0x50d
	redirectFilterHandle = 0x80000800 // u32 "800::800": table 800, node 800
	ingressQdiscHandle   = 0xffff0000 // "ffff:"
)

// ApplyShaping shapes the pod behind hostVeth (the host end of its veth):
//
//	into the pod:  tbf as root qdisc of hostVeth
//	out of the pod: ingress qdisc on hostVeth, u32 match-all filter with a
//	                mirred redirect to the IFB ifbName, tbf on the IFB
//
// Only the host side is touched, so a pod with CAP_NET_ADMIN in its own
// netns cannot lift the limit. The call converges: calling it again replaces
// the parameters in place, and a direction whose rate is now 0 loses its
// shaping (all zero limits remove everything). The IFB carries ifbAlias
// (IFLA_IFALIAS) so SweepOrphanIFBs can find it. A qdisc that peapod did not
// create (another tool, the CNI bandwidth plugin) on a hook a shaped
// direction needs, the root for ingress, the ingress/clsact hook for
// egress, is an error naming the device, and is never replaced; on a hook
// not needed it is left alone. On error, what this call created is removed
// again. The returned state holds the bursts and queue sizes really used.
func ApplyShaping(hostVeth, ifbName, ifbAlias string, l BandwidthLimits) (st ShapingState, err error) {
	link, err := netlink.LinkByName(hostVeth)
	if err != nil {
		return ShapingState{}, fmt.Errorf("shape pod traffic on %s: %w", hostVeth, err)
	}
	if l.EgressRateBitsPerSec > 0 && (ifbName == "" || len(ifbName) > unix.IFNAMSIZ-1) {
		return ShapingState{}, fmt.Errorf("shape pod traffic on %s: invalid IFB name %q", hostVeth, ifbName)
	}
	mtu := link.Attrs().MTU
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
			st = ShapingState{}
		}
	}()

	qdiscs, err := netlink.QdiscList(link)
	if err != nil {
		return ShapingState{}, fmt.Errorf("shape pod traffic on %s: list qdiscs: %w", hostVeth, err)
	}
	root, hook := rootAndIngressQdiscs(qdiscs)
	st = ShapingState{HostVeth: hostVeth}

	// Decide on both hooks before changing anything.
	rootOurs := root != nil && root.Attrs().Handle == shapingHandle && root.Type() == "tbf"
	if l.IngressRateBitsPerSec > 0 && root != nil && root.Attrs().Handle != 0 && !rootOurs {
		return ShapingState{}, fmt.Errorf("shape traffic into the pod on %s: the device already has a root %s qdisc (handle %s) that peapod did not create; remove it or drop the %s annotation",
			hostVeth, root.Type(), netlink.HandleStr(root.Attrs().Handle), IngressBandwidthAnnotation)
	}
	hookOurs := false
	if hook != nil {
		hookOurs, err = ingressHookIsOurs(link, hook, ifbName, ifbAlias)
		if err != nil {
			return ShapingState{}, err
		}
		if l.EgressRateBitsPerSec > 0 && !hookOurs {
			return ShapingState{}, fmt.Errorf("shape traffic out of the pod on %s: the device already has an %s qdisc that peapod did not create; remove it (tc qdisc del dev %s %s) or drop the %s annotation",
				hostVeth, hook.Type(), hostVeth, hook.Type(), EgressBandwidthAnnotation)
		}
	}

	if rate := l.IngressRateBitsPerSec; rate > 0 {
		tb := tokenBucketFor(rate, l.IngressBurstBytes, mtu)
		if err := replaceTBF(link.Attrs().Index, tb); err != nil {
			return ShapingState{}, fmt.Errorf("shape traffic into the pod on %s: %s: %w", hostVeth, tb.describe(), err)
		}
		if !rootOurs {
			undo = append(undo, func() { _ = deleteRootQdisc(link) })
		}
		st.Limits.IngressRateBitsPerSec = rate
		st.Limits.IngressBurstBytes = uint64(tb.BurstBytes)
		st.IngressQueueBytes = uint64(tb.LimitBytes)
	} else if rootOurs {
		if err := deleteRootQdisc(link); err != nil {
			return ShapingState{}, fmt.Errorf("unshape traffic into the pod on %s: %w", hostVeth, err)
		}
	}

	if rate := l.EgressRateBitsPerSec; rate > 0 {
		tb := tokenBucketFor(rate, l.EgressBurstBytes, mtu)
		ifb, created, err := ensureIFB(ifbName, ifbAlias, mtu)
		if err != nil {
			return ShapingState{}, fmt.Errorf("shape traffic out of the pod on %s: %w", hostVeth, err)
		}
		if created {
			undo = append(undo, func() { _ = netlink.LinkDel(ifb) })
		}
		if err := replaceTBF(ifb.Attrs().Index, tb); err != nil {
			return ShapingState{}, fmt.Errorf("shape traffic out of the pod on %s: IFB %s: %s: %w", hostVeth, ifbName, tb.describe(), err)
		}
		if hook == nil {
			if err := netlink.QdiscAdd(ingressQdisc(link)); err != nil {
				return ShapingState{}, fmt.Errorf("shape traffic out of the pod on %s: add ingress qdisc: %w", hostVeth, err)
			}
			// Deleting the ingress qdisc also deletes the filter below.
			undo = append(undo, func() { _ = netlink.QdiscDel(ingressQdisc(link)) })
		}
		if err := netlink.FilterReplace(redirectFilter(link, ifb)); err != nil {
			return ShapingState{}, fmt.Errorf("shape traffic out of the pod on %s: u32 filter redirecting to IFB %s: %w", hostVeth, ifbName, err)
		}
		st.IFB = ifbName
		st.Limits.EgressRateBitsPerSec = rate
		st.Limits.EgressBurstBytes = uint64(tb.BurstBytes)
		st.EgressQueueBytes = uint64(tb.LimitBytes)
	} else if hookOurs {
		if err := removeEgressShaping(link, ifbName); err != nil {
			return ShapingState{}, fmt.Errorf("unshape traffic out of the pod on %s: %w", hostVeth, err)
		}
	}
	return st, nil
}

// RemoveShaping undoes ApplyShaping: our qdiscs on the host veth, then the
// IFB. It is idempotent, and the host veth may already be gone (deleting the
// pod netns deletes the veth pair and its qdiscs with it; the IFB stays).
// A qdisc someone else put on the veth is left alone.
func RemoveShaping(st ShapingState) error {
	var errs []error
	if st.HostVeth != "" {
		link, err := netlink.LinkByName(st.HostVeth)
		switch {
		case isLinkNotFound(err):
		case err != nil:
			errs = append(errs, fmt.Errorf("remove shaping from %s: %w", st.HostVeth, err))
		default:
			if err := removeVethShaping(link, st.IFB); err != nil {
				errs = append(errs, fmt.Errorf("remove shaping from %s: %w", st.HostVeth, err))
			}
		}
	}
	if st.IFB != "" {
		if err := deleteIFB(st.IFB); err != nil {
			errs = append(errs, fmt.Errorf("remove shaping of %s: %w", st.HostVeth, err))
		}
	}
	return errors.Join(errs...)
}

// SweepOrphanIFBs deletes the IFB devices of instance instanceTag (alias
// "peapod:<instanceTag>:<sandboxID>") whose sandbox keep does not want, and
// returns their names. Run it when no ApplyShaping of this instance is in
// flight (at daemon start, during reconcile).
func SweepOrphanIFBs(instanceTag string, keep func(sandboxID string) bool) ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("sweep orphan IFBs: list links: %w", err)
	}
	prefix := ifbAliasPrefix(instanceTag)
	var removed []string
	var errs []error
	for _, link := range links {
		a := link.Attrs()
		if link.Type() != "ifb" || !strings.HasPrefix(a.Alias, prefix) {
			continue
		}
		if keep(strings.TrimPrefix(a.Alias, prefix)) {
			continue
		}
		if err := netlink.LinkDel(link); err != nil && !isLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("sweep orphan IFB %s (%s): %w", a.Name, a.Alias, err))
			continue
		}
		removed = append(removed, a.Name)
	}
	return removed, errors.Join(errs...)
}

// rootAndIngressQdiscs picks the root qdisc and the qdisc on the ingress
// hook (ingress or clsact, both hang at ffff:fff1) of one device.
func rootAndIngressQdiscs(qdiscs []netlink.Qdisc) (root, hook netlink.Qdisc) {
	for _, q := range qdiscs {
		switch q.Attrs().Parent {
		case netlink.HANDLE_ROOT:
			root = q
		case netlink.HANDLE_INGRESS:
			hook = q
		}
	}
	return root, hook
}

// ingressHookIsOurs decides whether the ingress or clsact qdisc hook on link
// was made by ApplyShaping for this IFB: an ingress qdisc whose only filter
// is our redirect to ifbName (or to a device that no longer exists), or an
// empty ingress qdisc while our IFB exists (a daemon killed between the two
// steps). peapod never creates clsact.
func ingressHookIsOurs(link netlink.Link, hook netlink.Qdisc, ifbName, ifbAlias string) (bool, error) {
	if hook.Type() != "ingress" {
		return false, nil
	}
	filters, err := netlink.FilterList(link, ingressQdiscHandle)
	if err != nil {
		return false, fmt.Errorf("shape pod traffic on %s: list ingress filters: %w", link.Attrs().Name, err)
	}
	ifbIndex := 0
	if ifb, err := netlink.LinkByName(ifbName); err == nil && ifb.Type() == "ifb" && (ifbAlias == "" || ifb.Attrs().Alias == ifbAlias) {
		ifbIndex = ifb.Attrs().Index
	}
	ours := 0
	for _, f := range filters {
		if isU32HashTable(f) {
			continue
		}
		target, ok := ourRedirectTarget(f)
		if !ok {
			return false, nil
		}
		if target != ifbIndex {
			if _, err := netlink.LinkByIndex(target); err == nil {
				return false, nil // redirects to some other live device
			}
		}
		ours++
	}
	return ours > 0 || ifbIndex != 0, nil
}

// isU32HashTable reports the "800: ht divisor 1" entry the kernel lists
// next to every u32 filter: a hash table, not a filter (node part 0).
func isU32HashTable(f netlink.Filter) bool {
	u, ok := f.(*netlink.U32)
	return ok && u.Attrs().Handle&0xfff == 0
}

// ourRedirectTarget returns the ifindex our redirect filter f sends to, and
// whether f is that filter at all.
func ourRedirectTarget(f netlink.Filter) (int, bool) {
	u, ok := f.(*netlink.U32)
	if !ok || u.Attrs().Priority != redirectFilterPrio || u.Attrs().Handle != redirectFilterHandle {
		return 0, false
	}
	for _, a := range u.Actions {
		if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
			return int(m.Ifindex), true
		}
	}
	return 0, false
}

func ingressQdisc(link netlink.Link) *netlink.Ingress {
	return &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: link.Attrs().Index,
		Handle:    ingressQdiscHandle,
		Parent:    netlink.HANDLE_INGRESS,
	}}
}

// redirectFilter is
//
//	tc filter replace dev <veth> parent ffff: protocol all prio 0x50d \
//	    handle 800::800 u32 match u32 0 0 action mirred egress redirect dev <ifb>
//
// A fixed handle makes "replace" update the filter in place (a second
// ApplyShaping, or an IFB recreated with a new ifindex) instead of adding a
// second one.
func redirectFilter(link, ifb netlink.Link) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: link.Attrs().Index,
			Parent:    ingressQdiscHandle,
			Handle:    redirectFilterHandle,
			Priority:  redirectFilterPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		// Sel nil: netlink encodes one key matching everything.
		Actions: []netlink.Action{netlink.NewMirredAction(ifb.Attrs().Index)},
	}
}

// replaceTBF is
//
//	tc qdisc replace dev <link> root handle 50d: tbf rate R burst B limit L
//
// written by hand because netlink.Tbf only sends the burst as a buffer time
// in ticks, which the kernel caps at ~4.3 s: at low rates the bucket would
// then be smaller than one packet and tbf would drop everything. The burst
// in bytes (TCA_TBF_BURST, what tc sends too) has no such cap.
func replaceTBF(linkIndex int, tb tokenBucket) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	req.AddData(&nl.TcMsg{
		Family:  nl.FAMILY_ALL,
		Ifindex: int32(linkIndex),
		Handle:  shapingHandle,
		Parent:  netlink.HANDLE_ROOT,
	})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("tbf")))
	var opt nl.TcTbfQopt
	opt.Rate.Rate = uint32(min(tb.RateBytesPerSec, math.MaxUint32))
	opt.Rate.Linklayer = nl.LINKLAYER_ETHERNET
	opt.Limit = tb.LimitBytes
	opt.Buffer = bufferTicks(tb)
	options := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	options.AddRtAttr(nl.TCA_TBF_PARMS, opt.Serialize())
	options.AddRtAttr(nl.TCA_TBF_BURST, nl.Uint32Attr(tb.BurstBytes))
	if tb.RateBytesPerSec > math.MaxUint32 {
		options.AddRtAttr(nl.TCA_TBF_RATE64, nl.Uint64Attr(tb.RateBytesPerSec))
	}
	req.AddData(options)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// bufferTicks is the burst as a time in scheduler ticks, for the legacy
// field that tc and netlink read back; the kernel uses TCA_TBF_BURST.
func bufferTicks(tb tokenBucket) uint32 {
	usec := float64(tb.BurstBytes) / float64(tb.RateBytesPerSec) * 1e6
	return uint32(min(usec*netlink.TickInUsec(), math.MaxUint32))
}

func deleteRootQdisc(link netlink.Link) error {
	err := netlink.QdiscDel(&netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: link.Attrs().Index, Handle: shapingHandle, Parent: netlink.HANDLE_ROOT},
		QdiscType:  "tbf",
	})
	if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete root tbf: %w", err)
	}
	return nil
}

// ensureIFB returns the IFB ifbName with alias ifbAlias, up and with the
// host veth's MTU, creating it if needed. An existing device of that name
// that is not an IFB, or is the IFB of another sandbox, is an error.
func ensureIFB(ifbName, ifbAlias string, mtu int) (ifb netlink.Link, created bool, err error) {
	ifb, err = netlink.LinkByName(ifbName)
	switch {
	case err == nil:
		if ifb.Type() != "ifb" {
			return nil, false, fmt.Errorf("device %s exists and is a %s, not an IFB", ifbName, ifb.Type())
		}
		if a := ifb.Attrs().Alias; a != ifbAlias {
			return nil, false, fmt.Errorf("IFB %s exists with alias %q, not %q (another sandbox or runtime owns it)", ifbName, a, ifbAlias)
		}
	case isLinkNotFound(err):
		attrs := netlink.NewLinkAttrs()
		attrs.Name = ifbName
		attrs.MTU = mtu
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: attrs}); err != nil {
			return nil, false, fmt.Errorf("create IFB %s: %w", ifbName, err)
		}
		created = true
		if ifb, err = netlink.LinkByName(ifbName); err != nil {
			return nil, false, fmt.Errorf("find new IFB %s: %w", ifbName, err)
		}
	default:
		return nil, false, fmt.Errorf("find IFB %s: %w", ifbName, err)
	}
	defer func() {
		if err != nil && created {
			_ = netlink.LinkDel(ifb)
		}
	}()
	// The alias cannot be given to RTM_NEWLINK (the kernel ignores it on
	// create), hence a second call right after.
	if ifb.Attrs().Alias != ifbAlias {
		if err := netlink.LinkSetAlias(ifb, ifbAlias); err != nil {
			return nil, false, fmt.Errorf("set alias of IFB %s: %w", ifbName, err)
		}
	}
	if ifb.Attrs().MTU != mtu {
		if err := netlink.LinkSetMTU(ifb, mtu); err != nil {
			return nil, false, fmt.Errorf("set MTU of IFB %s: %w", ifbName, err)
		}
	}
	if ifb.Attrs().Flags&unix.IFF_UP == 0 {
		if err := netlink.LinkSetUp(ifb); err != nil {
			return nil, false, fmt.Errorf("set IFB %s up: %w", ifbName, err)
		}
	}
	return ifb, created, nil
}

// removeEgressShaping deletes our redirect (with the ingress qdisc when
// nothing else hangs there) and the IFB.
func removeEgressShaping(link netlink.Link, ifbName string) error {
	if err := removeRedirect(link); err != nil {
		return err
	}
	return deleteIFB(ifbName)
}

// removeVethShaping deletes our root tbf and our redirect from link.
func removeVethShaping(link netlink.Link, ifbName string) error {
	qdiscs, err := netlink.QdiscList(link)
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	root, hook := rootAndIngressQdiscs(qdiscs)
	var errs []error
	if root != nil && root.Attrs().Handle == shapingHandle && root.Type() == "tbf" {
		if err := deleteRootQdisc(link); err != nil {
			errs = append(errs, err)
		}
	}
	if hook != nil && hook.Type() == "ingress" {
		if err := removeRedirect(link); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeRedirect deletes our redirect filter from link's ingress qdisc, and
// the qdisc itself when no other filter is left on it.
func removeRedirect(link netlink.Link) error {
	filters, err := netlink.FilterList(link, ingressQdiscHandle)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // no ingress qdisc
		}
		return fmt.Errorf("list ingress filters: %w", err)
	}
	others := 0
	for _, f := range filters {
		if isU32HashTable(f) {
			continue
		}
		if _, ok := ourRedirectTarget(f); ok {
			if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("delete u32 redirect filter: %w", err)
			}
			continue
		}
		others++
	}
	if others > 0 {
		return nil
	}
	if err := netlink.QdiscDel(ingressQdisc(link)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("delete ingress qdisc: %w", err)
	}
	return nil
}

// deleteIFB deletes the IFB name if it exists. A device of that name that
// is not an IFB is left alone.
func deleteIFB(name string) error {
	ifb, err := netlink.LinkByName(name)
	if isLinkNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("find IFB %s: %w", name, err)
	}
	if ifb.Type() != "ifb" {
		return fmt.Errorf("device %s is a %s, not an IFB: not deleting it", name, ifb.Type())
	}
	if err := netlink.LinkDel(ifb); err != nil && !isLinkNotFound(err) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("delete IFB %s: %w", name, err)
	}
	return nil
}

func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf)
}

// CheckShapingSupport tries every kernel feature shaping uses (IFB devices
// with an alias, tbf, the ingress qdisc, u32 filters, the mirred action) on
// throwaway IFB devices in a private network namespace that disappears with
// the check. It returns one line per problem, saying what to do; none means
// shaping works. Run it where the daemon runs (in rootless mode, inside its
// user and network namespace: there the kernel cannot load modules on
// demand, so they must be loaded on the host beforehand).
func CheckShapingSupport() []string {
	res := make(chan []string, 1)
	go func() {
		// Never unlocked: the thread leaves the host netns and must die
		// with this goroutine rather than go back to the scheduler.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			res <- []string{fmt.Sprintf("bandwidth shaping: cannot create a private network namespace to test tc (%v); needs CAP_SYS_ADMIN", err)}
			return
		}
		res <- checkShapingHere()
	}()
	return <-res
}

// checkShapingHere runs the checks in the current (private, empty) netns.
// Its devices vanish with the namespace, but are deleted anyway.
func checkShapingHere() []string {
	var problems []string
	fail := func(what string, err error, fix string) {
		problems = append(problems, fmt.Sprintf("bandwidth shaping: %s: %v; %s", what, err, fix))
	}
	addIFB := func(name string) netlink.Link {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: attrs}); err != nil {
			fail("create IFB device", err, "load the ifb module (modprobe ifb; kernel option CONFIG_IFB)")
			return nil
		}
		link, err := netlink.LinkByName(name)
		if err != nil {
			fail("find new IFB device", err, "check netlink access")
			return nil
		}
		if err := netlink.LinkSetUp(link); err != nil {
			fail("set IFB device up", err, "check CAP_NET_ADMIN")
		}
		return link
	}
	dev := addIFB("ppchk0") // stands in for the host veth
	if dev == nil {
		return problems
	}
	defer netlink.LinkDel(dev)
	ifb := addIFB("ppchk1")
	if ifb == nil {
		return problems
	}
	defer netlink.LinkDel(ifb)
	if err := netlink.LinkSetAlias(ifb, "peapod:check:0"); err != nil {
		fail("set interface alias (IFLA_IFALIAS)", err, "orphan IFBs cannot be found after a crash; use a newer kernel")
	}
	if err := replaceTBF(dev.Attrs().Index, tokenBucketFor(10_000_000, 0, dev.Attrs().MTU)); err != nil {
		fail("add tbf qdisc", err, "load sch_tbf (modprobe sch_tbf; CONFIG_NET_SCH_TBF)")
	} else if err := deleteRootQdisc(dev); err != nil {
		fail("delete tbf qdisc", err, "check the kernel's tc support")
	}
	if err := netlink.QdiscAdd(ingressQdisc(dev)); err != nil {
		fail("add ingress qdisc", err, "load sch_ingress (modprobe sch_ingress; CONFIG_NET_SCH_INGRESS)")
		return problems
	}
	// u32 alone first, so a missing mirred is told apart from a missing u32.
	plain := redirectFilter(dev, ifb)
	plain.Actions = nil
	plain.ClassId = netlink.MakeHandle(1, 1)
	if err := netlink.FilterReplace(plain); err != nil {
		fail("add u32 filter", err, "load cls_u32 (modprobe cls_u32; CONFIG_NET_CLS_U32)")
	} else if err := netlink.FilterReplace(redirectFilter(dev, ifb)); err != nil {
		fail("add mirred redirect action", err, "load act_mirred (modprobe act_mirred; CONFIG_NET_ACT_MIRRED)")
	}
	if err := netlink.QdiscDel(ingressQdisc(dev)); err != nil {
		fail("delete ingress qdisc", err, "check the kernel's tc support")
	}
	return problems
}
