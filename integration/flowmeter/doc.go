// Package flowmeter measures shaped TCP flows on the wire, for peapod's
// bandwidth-shaping tests and benchmark. It runs one iperf3 flow between two
// endpoints (each a network namespace, or the caller's own, and an address),
// samples a byte counter every 20 ms meanwhile — the root tbf that shapes
// the direction, which counts every segment with its Ethernet, IP and TCP
// headers on dequeue, or a link's own counter when nothing shapes it — and
// derives from the samples the rate of the flow's first second (what a
// large bucket inflates) and its steady rate. Small UDP probes timed from
// one namespace to an echo socket in another and back give the RTT that a
// packet sees queued behind the flow.
//
// The package knows nothing of peapod's own types (in particular it does
// not import peapod's netns package, whose tests use it); callers say which
// device and which namespaces to look at.
package flowmeter
