package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"peapod/internal/usernstest"
)

// Rootless peapod runs the shim as uid 0 of a user namespace whose ids map
// to the user's subordinate range. TestInUserNamespace runs the shim's
// tests again there (usernstest), over a cgroup subtree delegated to that
// namespace, plus the rootless-only cases below.

const (
	usernsBinEnv     = "PEAPOD_SHIMTEST_BIN"
	usernsLCEnv      = "PEAPOD_SHIMTEST_LC"
	usernsRootfsEnv  = "PEAPOD_SHIMTEST_ROOTFS"
	usernsCgroupEnv  = "PEAPOD_SHIMTEST_CGROUP"
	usernsPartialEnv = "PEAPOD_SHIMTEST_PARTIAL_CGROUP"
)

// usernsTests run as root of a user namespace.
var usernsTests = []string{
	"TestContainerOutputIsLoggedInCRIFormat",
	"TestExitCodes",
	"TestExec",
	"TestTtyContainerLogsAsStdout",
	"TestContainersShareNetworkAndPID",
	"TestOOMKillIsReported",
	"TestDeleteIsIdempotent",
	"TestCreateErrorsLeaveNothing",
	"TestShutdownLeavesNothing",
	"TestUserAndOOMScoreAdj",
	"TestSeccompProfileIsApplied",
	"TestAttachStreamsStdio",
	"TestUpdateResources",
	"TestRootlessChildPartialDelegation",
	"TestRootlessChildDevicesAreBindMounted",
	"TestRootlessChildWithoutDelegation",
}

func TestInUserNamespace(t *testing.T) {
	usernstest.RequireRoot(t)
	full := "/peapod-shimtest-rl-" + randHex(4)
	partial := full + "-partial"
	usernstest.Delegate(t, full)
	usernstest.Delegate(t, partial, "memory", "devices")
	out := usernstest.Run(t, "^("+strings.Join(usernsTests, "|")+")$", usernstest.Options{
		Net: true,
		Env: []string{
			usernsBinEnv + "=" + peapodBin,
			usernsLCEnv + "=" + lcBin,
			usernsRootfsEnv + "=" + rootfs,
			usernsCgroupEnv + "=" + full,
			usernsPartialEnv + "=" + partial,
		},
		Args:    []string{"-test.v"},
		Timeout: 5 * time.Minute,
	})
	for _, name := range usernsTests {
		if !regexp.MustCompile(`--- PASS: ` + name + ` `).MatchString(out) {
			t.Errorf("%s did not pass in the user namespace:\n%s", name, out)
		}
	}
	// Nothing of the namespace is left running (shims, containers). The
	// last kills may still be landing on a loaded host: a leak is what
	// is still there 10 s later.
	pids := processesOfMappedIDs()
	for deadline := time.Now().Add(10 * time.Second); len(pids) > 0 && time.Now().Before(deadline); pids = processesOfMappedIDs() {
		time.Sleep(100 * time.Millisecond)
	}
	if len(pids) > 0 {
		t.Errorf("processes of the namespace's ids left: %v", pids)
	}
}

// processesOfMappedIDs lists the live processes whose real uid lies in
// usernstest's mapped range.
func processesOfMappedIDs() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f, ok := strings.CutPrefix(line, "Uid:"); ok {
				if uid, err := strconv.Atoi(strings.Fields(f)[0]); err == nil &&
					uid >= usernstest.HostID && uid < usernstest.HostID+usernstest.Size {
					cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
					out = append(out, fmt.Sprintf("%s (uid %d): %q", e.Name(), uid, cmd))
				}
			}
		}
	}
	return out
}

// TestRootlessChildPartialDelegation: the memory and devices hierarchies
// are not delegated. A container with a memory limit still runs (the
// limit is dropped), gets its cgroup where it can, and killing it kills
// all of its processes although the devices hierarchy, where libcontainer
// lists them, is not there.
func TestRootlessChildPartialDelegation(t *testing.T) {
	usernstest.RequireChild(t)
	if !inUserNS() {
		t.Fatal("not in a user namespace")
	}
	old := cgroupParent
	cgroupParent = os.Getenv(usernsPartialEnv)
	defer func() { cgroupParent = old }()
	p := newPod(t)
	ctx := context.Background()

	spec := p.spec("forks", true, "sh", "-c", "sleep 1000 & exec sleep 1001")
	limit, shares := int64(64<<20), uint64(512)
	spec.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, CPU: &specs.LinuxCPU{Shares: &shares}}
	p.run(spec)

	cpuDir := filepath.Join("/sys/fs/cgroup/cpu", p.cgroup, "forks")
	if b, err := os.ReadFile(filepath.Join(cpuDir, "cpu.shares")); err != nil || strings.TrimSpace(string(b)) != "512" {
		t.Errorf("cpu.shares of the delegated cpu hierarchy: %q, %v", b, err)
	}
	for _, h := range []string{"memory", "devices"} {
		if dir := filepath.Join("/sys/fs/cgroup", h, p.cgroup); exists(dir) {
			t.Errorf("%s: created in a hierarchy that is not delegated", dir)
		}
	}
	procs := func() []string {
		b, _ := os.ReadFile(filepath.Join(cpuDir, "cgroup.procs"))
		return strings.Fields(string(b))
	}
	waitFor(t, func() bool { return len(procs()) == 2 })
	var stdout strings.Builder
	if code, err := p.client.Exec(ctx, "forks", ExecSpec{Args: []string{"sh", "-c", "cat /proc/self/cgroup"}, Stdout: &stdout}); err != nil || code != 0 ||
		!strings.Contains(stdout.String(), ":cpu:"+p.cgroup+"/forks") {
		state, _ := os.ReadFile(filepath.Join(p.shimDir, "runc", "forks", "state.json"))
		t.Errorf("exec in the container: %d, %v, cgroups %q; state %s", code, err, stdout.String(), state)
	}

	// Limits of a controller that is not delegated are dropped, the
	// others applied.
	shares = 256
	if err := p.client.UpdateResources(ctx, "forks", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}, CPU: &specs.LinuxCPU{Shares: &shares}}); err != nil {
		t.Errorf("update: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(cpuDir, "cpu.shares")); strings.TrimSpace(string(b)) != "256" {
		t.Errorf("cpu.shares after update: %q", b)
	}

	if err := p.client.Signal(ctx, "forks", syscall.SIGKILL, true); err != nil {
		t.Fatal(err)
	}
	p.wait("forks")
	waitFor(t, func() bool { return len(procs()) == 0 })
	if err := p.client.Delete(ctx, "forks"); err != nil {
		t.Fatal(err)
	}
	if exists(cpuDir) {
		t.Errorf("%s left after delete", cpuDir)
	}
}

// TestRootlessChildDevicesAreBindMounted: in a user namespace device
// nodes cannot be created; the container's /dev holds the host's nodes,
// bind-mounted, and they work.
func TestRootlessChildDevicesAreBindMounted(t *testing.T) {
	usernstest.RequireChild(t)
	p := newPod(t)
	spec := p.spec("dev", false, "sh", "-c", "echo x > /dev/null && head -c 4 /dev/zero | wc -c && head -c 8 /dev/urandom | wc -c && grep -c ' /dev/null ' /proc/self/mountinfo")
	p.run(spec)
	if st := p.wait("dev"); st.ExitCode != 0 {
		t.Fatalf("state %+v, log %+v", st, readLog(t, spec.LogPath))
	}
	var got []string
	for _, r := range readLog(t, spec.LogPath) {
		got = append(got, r.content)
	}
	if strings.Join(got, ",") != "4,8,1" {
		t.Errorf("output %v: want 4 zero bytes, 8 random bytes, /dev/null a bind mount", got)
	}
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// TestRootlessChildWithoutDelegation: nothing is delegated, so containers
// get no cgroup at all; they still run, exec, stop and go.
func TestRootlessChildWithoutDelegation(t *testing.T) {
	usernstest.RequireChild(t)
	old := cgroupParent
	cgroupParent = "/peapod-shimtest-nowhere-" + randHex(4)
	defer func() { cgroupParent = old }()
	p := newPod(t)
	ctx := context.Background()
	spec := p.spec("free", false, "sleep", "1000")
	limit := int64(64 << 20)
	spec.Resources = &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}
	p.run(spec)
	for _, dir := range cgroupDirs(p.cgroup) {
		if exists(dir) {
			t.Errorf("%s created without delegation", dir)
		}
	}
	var stdout strings.Builder
	if code, err := p.client.Exec(ctx, "free", ExecSpec{Args: []string{"echo", "in"}, Stdout: &stdout}); err != nil || code != 0 || stdout.String() != "in\n" {
		t.Errorf("exec: %d, %v, %q", code, err, stdout.String())
	}
	st, err := p.client.Stop(ctx, "free", time.Second)
	if err != nil || st.Status != StatusExited {
		t.Fatalf("stop: %+v, %v", st, err)
	}
	if err := p.client.Delete(ctx, "free"); err != nil {
		t.Fatal(err)
	}
}
