package netns

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"peapod/internal/usernstest"
)

// Rootless peapod is root of a user namespace with its own network
// namespace: it pins namespaces in its own mount namespace, creates veths
// and IFBs and shapes with tc there. TestInUserNamespace runs this
// package's tests again as root of such a namespace (usernstest).

func TestMain(m *testing.M) {
	if usernstest.InChild() {
		// `ip netns` keeps its names under /run/netns, which is the
		// host's and not ours: give this mount namespace its own /run.
		if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=755"); err != nil {
			fmt.Fprintln(os.Stderr, "mount a private /run:", err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}

// usernsTests run as root of a user namespace: pins, Do, network stats,
// and shaping with IFBs (not the throughput measurement, which belongs to
// a quiet machine).
var usernsTests = []string{
	"TestPinOutlivesTheProcessAndUnpinIsIdempotent",
	"TestPinFailureLeavesNothing",
	"TestDoRejectsProcessWideNamespaces",
	"TestNetworkStatsCountsTrafficPerInterface",
	"TestApplyShapingTwiceIsIdempotent",
	"TestApplyShapingLowAndHighRates",
	"TestApplyShapingRefusesForeignQdiscs",
	"TestApplyShapingLeavesUnneededForeignHookAlone",
	"TestApplyShapingRollsBackOnError",
	"TestApplyShapingAdoptsItsInterruptedSetup",
	"TestRemoveShapingAfterPodNetnsIsGone",
	"TestRemoveShapingLeavesForeignFiltersAlone",
	"TestSweepOrphanIFBs",
	"TestHostVethOf",
	"TestCheckShapingSupport",
	"TestRootlessChildIsInUserNamespace",
}

func TestInUserNamespace(t *testing.T) {
	usernstest.RequireRoot(t)
	out := usernstest.Run(t, "^("+strings.Join(usernsTests, "|")+")$", usernstest.Options{
		Net:     true,
		Args:    []string{"-test.v"},
		Timeout: 4 * time.Minute,
	})
	for _, name := range usernsTests {
		if !regexp.MustCompile(`--- PASS: ` + name + ` `).MatchString(out) {
			t.Errorf("%s did not pass in the user namespace:\n%s", name, out)
		}
	}
}

// TestRootlessChildIsInUserNamespace guards the setup: the tests above
// ran as root of a user namespace that is not the host's.
func TestRootlessChildIsInUserNamespace(t *testing.T) {
	usernstest.RequireChild(t)
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0 %d %d", usernstest.HostID, usernstest.Size)
	if got := strings.Join(strings.Fields(string(b)), " "); got != want || os.Geteuid() != 0 {
		t.Fatalf("uid_map %q, euid %d: want %q as uid 0", got, os.Geteuid(), want)
	}
}
