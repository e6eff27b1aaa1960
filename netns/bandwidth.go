package netns

import (
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/api/resource"
)

// Pod annotations that ask for bandwidth shaping. The two kubernetes.io
// ones are the ones kubelet users know (rates in bits per second); the
// peapod.io ones override the burst peapod computes (bytes).
const (
	IngressBandwidthAnnotation = "kubernetes.io/ingress-bandwidth"
	EgressBandwidthAnnotation  = "kubernetes.io/egress-bandwidth"
	IngressBurstAnnotation     = "peapod.io/ingress-burst"
	EgressBurstAnnotation      = "peapod.io/egress-burst"
)

// BandwidthLimits is what the annotations ask for. A zero rate leaves that
// direction unshaped; a zero burst means "choose it from the rate" (see
// tokenBucketFor). Ingress is traffic into the pod, egress out of it.
type BandwidthLimits struct {
	IngressRateBitsPerSec uint64 `json:"ingressRateBitsPerSec,omitempty"`
	IngressBurstBytes     uint64 `json:"ingressBurstBytes,omitempty"`
	EgressRateBitsPerSec  uint64 `json:"egressRateBitsPerSec,omitempty"`
	EgressBurstBytes      uint64 `json:"egressBurstBytes,omitempty"`
}

// Shaped reports whether any direction is limited.
func (l BandwidthLimits) Shaped() bool {
	return l.IngressRateBitsPerSec > 0 || l.EgressRateBitsPerSec > 0
}

// BandwidthError says which annotation is wrong and why. Value is the
// annotation's value, cut to maxEchoedValueLen characters so that a huge
// value never ends up in logs or in a CRI error.
type BandwidthError struct {
	Annotation string
	Value      string
	Reason     string
}

func (e *BandwidthError) Error() string {
	return fmt.Sprintf("annotation %s=%q: %s", e.Annotation, e.Value, e.Reason)
}

// The range of accepted values. The rate bounds are kubelet's own
// (pkg/util/bandwidth: "unreasonably small (< 1kbit)" / "large (> 1Pbit)"),
// so a pod that kubelet would accept with another runtime is accepted here.
// A burst is the size of tbf's bucket and of the largest packet it lets
// through whole, which the kernel holds in a u32.
const (
	minRateBitsPerSec     = 1_000
	maxRateBitsPerSec     = 1_000_000_000_000_000
	minBurstOverrideBytes = 1 << 10
	maxBurstOverrideBytes = math.MaxUint32
	maxAnnotationValueLen = 64
	maxEchoedValueLen     = 64
)

// ParseBandwidthAnnotations reads the bandwidth annotations of a pod. Rates
// are resource quantities in bits per second between 1k and 1P ("10M" is 10
// Mbit/s, "10Mi" is 10×2^20 bit/s); bursts are quantities in bytes and need
// the rate of their direction. The first problem found, in the order
// ingress rate, egress rate, ingress burst, egress burst, is returned as a
// *BandwidthError. Annotations that are absent leave their field zero.
func ParseBandwidthAnnotations(annotations map[string]string) (BandwidthLimits, error) {
	var l BandwidthLimits
	var err error
	if l.IngressRateBitsPerSec, err = parseRate(annotations, IngressBandwidthAnnotation); err != nil {
		return BandwidthLimits{}, err
	}
	if l.EgressRateBitsPerSec, err = parseRate(annotations, EgressBandwidthAnnotation); err != nil {
		return BandwidthLimits{}, err
	}
	if l.IngressBurstBytes, err = parseBurst(annotations, IngressBurstAnnotation, IngressBandwidthAnnotation, l.IngressRateBitsPerSec); err != nil {
		return BandwidthLimits{}, err
	}
	if l.EgressBurstBytes, err = parseBurst(annotations, EgressBurstAnnotation, EgressBandwidthAnnotation, l.EgressRateBitsPerSec); err != nil {
		return BandwidthLimits{}, err
	}
	return l, nil
}

func parseRate(annotations map[string]string, name string) (uint64, error) {
	v, ok := annotations[name]
	if !ok {
		return 0, nil
	}
	q, err := parseQuantity(name, v, "use e.g. 10M for 10 Mbit/s")
	if err != nil {
		return 0, err
	}
	if q.CmpInt64(minRateBitsPerSec) < 0 {
		return 0, bandwidthError(name, v, "below the minimum of 1k (1 kbit/s)")
	}
	if q.CmpInt64(maxRateBitsPerSec) > 0 {
		return 0, bandwidthError(name, v, "above the maximum of 1P (1 Pbit/s)")
	}
	return uint64(q.Value()), nil
}

func parseBurst(annotations map[string]string, name, rateName string, rateBitsPerSec uint64) (uint64, error) {
	v, ok := annotations[name]
	if !ok {
		return 0, nil
	}
	q, err := parseQuantity(name, v, "use e.g. 64Ki for 64 KiB")
	if err != nil {
		return 0, err
	}
	if q.CmpInt64(minBurstOverrideBytes) < 0 {
		return 0, bandwidthError(name, v, "below the minimum of 1Ki (1024 bytes)")
	}
	if q.CmpInt64(maxBurstOverrideBytes) > 0 {
		return 0, bandwidthError(name, v, "above the maximum of 4294967295 bytes (just under 4Gi)")
	}
	if rateBitsPerSec == 0 {
		return 0, bandwidthError(name, v, "a burst needs the rate annotation "+rateName+" as well")
	}
	return uint64(q.Value()), nil
}

func parseQuantity(name, v, example string) (resource.Quantity, error) {
	if v == "" {
		return resource.Quantity{}, bandwidthError(name, v, "empty ("+example+")")
	}
	if len(v) > maxAnnotationValueLen {
		return resource.Quantity{}, bandwidthError(name, v,
			fmt.Sprintf("%d bytes long, not a resource quantity (%s)", len(v), example))
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return resource.Quantity{}, bandwidthError(name, v, "not a resource quantity ("+example+")")
	}
	if q.Sign() <= 0 {
		return resource.Quantity{}, bandwidthError(name, v, "must be positive ("+example+")")
	}
	return q, nil
}

func bandwidthError(name, v, reason string) *BandwidthError {
	return &BandwidthError{Annotation: name, Value: truncateValue(v), Reason: reason}
}

// truncateValue cuts v to maxEchoedValueLen bytes on a rune boundary and
// marks the cut.
func truncateValue(v string) string {
	if len(v) <= maxEchoedValueLen {
		return v
	}
	cut := maxEchoedValueLen
	for cut > 0 && !utf8.RuneStart(v[cut]) {
		cut--
	}
	return v[:cut] + "..."
}

// IFBName is the name of the IFB device that shapes the egress of sandbox
// sandboxID for the peapod instance instanceTag: "pp" + tag + the first
// characters of the id, at most 15 bytes (IFNAMSIZ-1). With a 4-character
// tag, 9 hex characters of the id remain (36 bits: a collision between two
// live pods of one host is negligible, and ApplyShaping refuses an IFB that
// carries another sandbox's alias rather than sharing it). A tag or id that
// would not fit, or holds characters an interface name should not, is
// hashed instead, so the result is always a valid, deterministic name.
func IFBName(instanceTag, sandboxID string) string {
	const maxLen = 15
	if len(instanceTag) <= 4 && isIfnameSafe(instanceTag) && isIfnameSafe(sandboxID) && sandboxID != "" {
		n := "pp" + instanceTag + sandboxID
		if len(n) > maxLen {
			n = n[:maxLen]
		}
		return n
	}
	// FNV-1a over tag, a separator and id, shown as 13 hex digits (52 bits).
	h := uint64(14695981039346656037)
	for _, b := range []byte(instanceTag + "\x00" + sandboxID) {
		h ^= uint64(b)
		h *= 1099511628211
	}
	return fmt.Sprintf("pp%013x", h&(1<<52-1))
}

func isIfnameSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// ifbAliasPrefix starts the IFLA_IFALIAS of every IFB of instance tag; the
// sandbox id follows it.
func ifbAliasPrefix(instanceTag string) string {
	return "peapod:" + instanceTag + ":"
}

// tokenBucket is the tbf configuration of one direction.
type tokenBucket struct {
	RateBytesPerSec uint64
	// BurstBytes is the bucket size: what may leave at line rate after an
	// idle period, and the largest packet tbf passes whole (larger GSO
	// packets are split by the kernel, larger plain packets are dropped).
	BurstBytes uint32
	// LimitBytes is the backlog tbf queues while waiting for tokens; beyond
	// it packets are dropped, which is the signal TCP slows down on.
	LimitBytes uint32
}

// Constants of the token bucket formula; see tokenBucketFor.
const (
	burstTime         = 4 * time.Millisecond
	burstMinFrames    = 2
	queueTime         = 25 * time.Millisecond
	queueMinFrames    = 4
	ethernetHeaderLen = 14 // tbf counts frames with their L2 header
)

// tokenBucketFor chooses tbf's bucket and backlog for a rate, the burst the
// pod asked for (0: choose) and the device MTU:
//
//	frame = MTU + 14
//	burst = max(rate × 4 ms, 2 frames)      (or the pod's, at least 1 frame)
//	limit = burst + max(rate × 25 ms, 4 frames)
//
// Why the burst is this small. After an idle period tbf lets a whole bucket
// out at line rate, so the first second of a flow carries up to burst +
// rate × 1 s: with containerd's ~512 MiB the first second of a 10M flow
// measured 430× the limit (CRI-O's ~4 GiB is worse). Staying at most 1.5×
// the limit in the first second only needs burst ≤ rate × 500 ms; the lower
// bound is what matters, and it was measured (veth pairs between two netns,
// iperf3, cubic and bbr, this 2-core VM):
//   - one frame is not enough at high rates: tbf sleeps on an hrtimer until
//     the next packet's tokens are there, and the tokens that would have
//     accumulated while the timer and softirq run late are lost when the
//     bucket is already full. With burst = 1 frame the steady rate was
//     0.88× the limit at 100M and 0.49× at 1G; with 2 frames 1.00× at 100M
//     but 0.90× at 1G; with 16 KiB (130 µs at 1G) 1.00× at 1G. The margin
//     needed grows when the CPU is busy: with both cores spinning, a 1 ms
//     bucket gave 0.99× at 100M and 1G, a 4 ms one 1.00×. So the bucket
//     holds rate × 4 ms, which costs only 0.4 % extra in the first second.
//   - two frames are the floor so that at low rates the bucket never holds
//     less than a full frame plus one (a plain packet larger than the bucket
//     is dropped). Below ~48 kbit/s two frames are more than half a second
//     of traffic, so the first second may exceed 1.5× there; below ~24
//     kbit/s no bucket that passes a full frame can meet 1.5×.
//   - GSO/TSO packets (up to 64 KiB on a veth) do not need a 64 KiB bucket:
//     tbf segments a GSO packet larger than the bucket (tbf_segment) instead
//     of dropping it, and TCP sizes its GSO packets to about 1 ms of its
//     pacing rate, so at the rates where 4 ms is below 64 KiB (< 130 Mbit/s)
//     segmentation is rare; measured: 1M with 3 KiB and 100M with 12 KiB
//     buckets reached 0.99-1.00× the limit. A 64 KiB bucket at 1M even hurt:
//     0.5 s line-rate bursts made the rate swing 0.1-2× per half second.
//   - no peakrate: it would pace each packet (a timer per frame) to cap the
//     4 ms burst, which no one can notice, at real CPU cost.
//
// The backlog (bfifo limit) is where a TCP sender's excess waits before tbf
// drops it; the drop is what slows the sender down (traffic out of the pod
// crosses the veth, so the pod's socket feels no backpressure from the IFB).
// 25 ms of traffic lets cubic (which backs off to 0.7× its window) keep the
// link full for round trips up to ~60 ms, while a full queue adds at most
// 25 ms to every RTT through the pod (the same latency the CNI bandwidth
// plugin uses). Measured median RTT of a probe under load: 1M 20-30 ms,
// 10M ~18 ms with cubic and ~9 ms with bbr, 100M ~5 ms. The burst is added so that any packet the
// bucket passes whole (≤ burst) also fits in the queue, otherwise such a
// packet would be dropped every time. The floor is four frames because bbr
// keeps at least four packets in flight however small the path's BDP: at
// 1M (where 25 ms is only two frames) a two-frame floor held bbr to
// 0.95× the limit, four frames gave 0.99× (cubic: 0.99× either way), for a
// worst-case queueing delay of 73 ms at 1M, where one frame alone takes 12 ms.
func tokenBucketFor(rateBitsPerSec, burstOverrideBytes uint64, mtu int) tokenBucket {
	rate := rateBitsPerSec / 8
	if rate == 0 {
		rate = 1
	}
	frame := uint64(mtu) + ethernetHeaderLen
	burst := burstOverrideBytes
	if burst == 0 {
		burst = max(bytesIn(rate, burstTime), burstMinFrames*frame)
	}
	burst = min(max(burst, frame), math.MaxUint32)
	limit := burst + max(bytesIn(rate, queueTime), queueMinFrames*frame)
	limit = min(limit, math.MaxUint32)
	return tokenBucket{RateBytesPerSec: rate, BurstBytes: uint32(burst), LimitBytes: uint32(limit)}
}

// bytesIn is how many bytes leave at rate (bytes/s) in d, without overflow
// for rates up to 1P bit/s and times up to a second.
func bytesIn(rateBytesPerSec uint64, d time.Duration) uint64 {
	return uint64(float64(rateBytesPerSec) * d.Seconds())
}

// describe is the one-line tc-like summary used in errors and logs.
func (b tokenBucket) describe() string {
	return fmt.Sprintf("tbf rate %dbit burst %db limit %db", b.RateBytesPerSec*8, b.BurstBytes, b.LimitBytes)
}
