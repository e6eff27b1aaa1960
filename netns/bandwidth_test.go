package netns

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseBandwidthAnnotationsAcceptsKubeletRange(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  uint64
	}{
		{"1k", 1_000},
		{"3M", 3_000_000},
		{"10M", 10_000_000},
		{"10Mi", 10 << 20},
		{"1G", 1_000_000_000},
		{"1.5M", 1_500_000},
		{"1P", 1_000_000_000_000_000},
	} {
		for _, ann := range []string{IngressBandwidthAnnotation, EgressBandwidthAnnotation} {
			l, err := ParseBandwidthAnnotations(map[string]string{ann: tc.value})
			if err != nil {
				t.Errorf("%s=%q: %v", ann, tc.value, err)
				continue
			}
			got := l.IngressRateBitsPerSec
			if ann == EgressBandwidthAnnotation {
				got = l.EgressRateBitsPerSec
			}
			if got != tc.want || !l.Shaped() {
				t.Errorf("%s=%q: got %+v, want rate %d", ann, tc.value, l, tc.want)
			}
		}
	}
}

func TestParseBandwidthAnnotationsRejectsNonsense(t *testing.T) {
	long := strings.Repeat("9", 10<<10) // a 10 kB value
	for _, tc := range []struct {
		value, reason string
	}{
		{"abc", "not a resource quantity (use e.g. 10M for 10 Mbit/s)"},
		{"-1M", "must be positive"},
		{"0", "must be positive"},
		{"2P", "above the maximum of 1P"},
		{"1", "below the minimum of 1k"},
		{"999", "below the minimum of 1k"},
		{"500m", "below the minimum of 1k"},
		{"10 M", "not a resource quantity"},
		{"", "empty"},
		{long, "10240 bytes long"},
	} {
		_, err := ParseBandwidthAnnotations(map[string]string{IngressBandwidthAnnotation: tc.value})
		var be *BandwidthError
		if !errors.As(err, &be) {
			t.Errorf("%q: got %v, want a *BandwidthError", shortValue(tc.value), err)
			continue
		}
		if be.Annotation != IngressBandwidthAnnotation || !strings.Contains(be.Reason, tc.reason) {
			t.Errorf("%q: got %+v, want reason containing %q", shortValue(tc.value), be, tc.reason)
		}
		if len(be.Value) > maxEchoedValueLen+3 || len(err.Error()) > 250 {
			t.Errorf("%q: error echoes too much: %d bytes", shortValue(tc.value), len(err.Error()))
		}
	}
}

func TestBandwidthErrorMessage(t *testing.T) {
	_, err := ParseBandwidthAnnotations(map[string]string{IngressBandwidthAnnotation: "abc"})
	want := `annotation kubernetes.io/ingress-bandwidth="abc": not a resource quantity (use e.g. 10M for 10 Mbit/s)`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
	_, err = ParseBandwidthAnnotations(map[string]string{EgressBandwidthAnnotation: strings.Repeat("x", 100) + "é"})
	if err == nil || !strings.Contains(err.Error(), `="`+strings.Repeat("x", 64)+`..."`) {
		t.Fatalf("long value not cut to 64 characters: %v", err)
	}
}

func TestParseBandwidthAnnotationsBursts(t *testing.T) {
	l, err := ParseBandwidthAnnotations(map[string]string{
		IngressBandwidthAnnotation: "10M", IngressBurstAnnotation: "64Ki",
		EgressBandwidthAnnotation: "5M", EgressBurstAnnotation: "1M",
		"unrelated": "x",
	})
	want := BandwidthLimits{IngressRateBitsPerSec: 10e6, IngressBurstBytes: 64 << 10, EgressRateBitsPerSec: 5e6, EgressBurstBytes: 1e6}
	if err != nil || l != want {
		t.Fatalf("got %+v, %v; want %+v", l, err, want)
	}
	for _, tc := range []struct {
		ann    map[string]string
		reason string
	}{
		{map[string]string{IngressBandwidthAnnotation: "10M", IngressBurstAnnotation: "100"}, "below the minimum"},
		{map[string]string{IngressBandwidthAnnotation: "10M", IngressBurstAnnotation: "4Gi"}, "above the maximum"},
		{map[string]string{IngressBandwidthAnnotation: "10M", IngressBurstAnnotation: "lots"}, "not a resource quantity"},
		{map[string]string{EgressBurstAnnotation: "64Ki"}, "needs the rate annotation " + EgressBandwidthAnnotation},
	} {
		_, err := ParseBandwidthAnnotations(tc.ann)
		var be *BandwidthError
		if !errors.As(err, &be) || !strings.Contains(be.Reason, tc.reason) {
			t.Errorf("%v: got %v, want reason %q", tc.ann, err, tc.reason)
		}
	}
}

func TestParseBandwidthAnnotationsNoneIsUnshaped(t *testing.T) {
	l, err := ParseBandwidthAnnotations(map[string]string{"kubernetes.io/config.seen": "x"})
	if err != nil || l.Shaped() || l != (BandwidthLimits{}) {
		t.Fatalf("got %+v, %v", l, err)
	}
	if l, err := ParseBandwidthAnnotations(nil); err != nil || l.Shaped() {
		t.Fatalf("nil map: got %+v, %v", l, err)
	}
}

func TestIFBNameIsShortAndDeterministic(t *testing.T) {
	id := "3f9c2a7be01d44c5a9e8f7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c6b5a4938"
	if got := IFBName("t0t0", id); got != "ppt0t03f9c2a7be" {
		t.Errorf("IFBName = %q", got)
	}
	if IFBName("t0t0", id) != IFBName("t0t0", id) {
		t.Error("not deterministic")
	}
	if IFBName("t0t0", id) == IFBName("t1t1", id) {
		t.Error("two instances share an IFB name")
	}
	for _, tc := range []struct{ tag, id string }{
		{"t0t0", id}, {"", id}, {"abcd", "x"}, {"a-very-long-tag", id}, {"t0t0", "../../etc"},
		{"t0t0", ""}, {"tag with space", "id/with/slash"},
	} {
		n := IFBName(tc.tag, tc.id)
		if len(n) == 0 || len(n) > 15 || !isIfnameSafe(n) {
			t.Errorf("IFBName(%q, %q) = %q: not a valid interface name", tc.tag, tc.id, n)
		}
		if n != IFBName(tc.tag, tc.id) {
			t.Errorf("IFBName(%q, %q) not deterministic", tc.tag, tc.id)
		}
	}
	if IFBName("a-very-long-tag", "1") == IFBName("a-very-long-tag", "2") {
		t.Error("hashed names collide")
	}
}

// TestTokenBucketLimitsTheFirstSecond checks the formula's promises for
// every rate kubelet accepts: the bucket holds at least one full frame (or
// tbf drops it), at most half a second of traffic once the rate is high
// enough for that to exceed the frame floor (so the first second of a flow
// is at most 1.5× the limit), and the backlog adds bounded latency.
func TestTokenBucketLimitsTheFirstSecond(t *testing.T) {
	for _, mtu := range []int{1500, 1450, 9000} {
		frame := uint64(mtu + ethernetHeaderLen)
		var prev tokenBucket
		for rate := uint64(minRateBitsPerSec); rate <= maxRateBitsPerSec; rate = rate*5/4 + 1 {
			tb := tokenBucketFor(rate, 0, mtu)
			bytesPerSec := float64(rate) / 8
			if tb.RateBytesPerSec != rate/8 {
				t.Fatalf("rate %d: tbf rate %d bytes/s", rate, tb.RateBytesPerSec)
			}
			if uint64(tb.BurstBytes) < burstMinFrames*frame && uint64(tb.BurstBytes) != math.MaxUint32 {
				t.Fatalf("rate %d mtu %d: burst %d is below %d frames", rate, mtu, tb.BurstBytes, burstMinFrames)
			}
			if tb.LimitBytes < tb.BurstBytes || uint64(tb.LimitBytes-tb.BurstBytes) < queueMinFrames*frame && tb.LimitBytes != math.MaxUint32 {
				t.Fatalf("rate %d: limit %d leaves no room beyond burst %d", rate, tb.LimitBytes, tb.BurstBytes)
			}
			floorRate := float64(burstMinFrames*frame) * 2 * 8 // rate above which half a second holds the floor
			if float64(rate) >= floorRate && float64(tb.BurstBytes) > 0.5*bytesPerSec {
				t.Fatalf("rate %d: burst %d is more than half a second", rate, tb.BurstBytes)
			}
			if float64(rate) >= 1e6 {
				// Queueing delay of a full backlog, beyond one frame time.
				delay := time.Duration(float64(tb.LimitBytes) / bytesPerSec * float64(time.Second))
				if max := burstTime + queueTime + time.Duration(float64((burstMinFrames+queueMinFrames)*frame)/bytesPerSec*float64(time.Second)); delay > max {
					t.Fatalf("rate %d: a full backlog is %v of queue, more than %v", rate, delay, max)
				}
			}
			if tb.BurstBytes < prev.BurstBytes || tb.LimitBytes < prev.LimitBytes {
				t.Fatalf("rate %d: bucket %+v shrinks from %+v", rate, tb, prev)
			}
			prev = tb
		}
		if top := tokenBucketFor(maxRateBitsPerSec, 0, mtu); top.RateBytesPerSec != maxRateBitsPerSec/8 || top.LimitBytes < top.BurstBytes {
			t.Fatalf("1P: %+v", top)
		}
	}
}

func TestTokenBucketExamples(t *testing.T) {
	for _, tc := range []struct {
		rate, override uint64
		mtu            int
		want           tokenBucket
	}{
		// Rates where the frame floors hold.
		{1_000, 0, 1500, tokenBucket{125, 3028, 9084}},
		{1_000_000, 0, 1500, tokenBucket{125_000, 3028, 9084}},
		// 10 Mbit/s: 4 ms is 5000 bytes, 25 ms of queue is 31250.
		{10_000_000, 0, 1500, tokenBucket{1_250_000, 5000, 36250}},
		{100_000_000, 0, 1500, tokenBucket{12_500_000, 50_000, 362_500}},
		// The pod's own burst, raised to one frame if smaller.
		{10_000_000, 1 << 20, 1500, tokenBucket{1_250_000, 1 << 20, 1<<20 + 31250}},
		{10_000_000, 1024, 1500, tokenBucket{1_250_000, 1514, 1514 + 31250}},
		{1_000_000_000_000_000, 0, 1500, tokenBucket{125_000_000_000_000, math.MaxUint32, math.MaxUint32}},
	} {
		if got := tokenBucketFor(tc.rate, tc.override, tc.mtu); got != tc.want {
			t.Errorf("tokenBucketFor(%d, %d, %d) = %+v, want %+v", tc.rate, tc.override, tc.mtu, got, tc.want)
		}
	}
}

func shortValue(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}
