package integration

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func shapedPod(name, ingress, egress string) *runtime.PodSandboxConfig {
	cfg := podConfig(name)
	cfg.Annotations = map[string]string{}
	if ingress != "" {
		cfg.Annotations["kubernetes.io/ingress-bandwidth"] = ingress
	}
	if egress != "" {
		cfg.Annotations["kubernetes.io/egress-bandwidth"] = egress
	}
	return cfg
}

// ifbs lists the IFB devices on the host whose name marks them as made by
// peapod (other tests and benches on the host may add their own).
func (d *daemon) ifbs(t testing.TB) []string {
	prefix := "pp" + d.instanceTag(t)
	out := run(t, "ip", "-o", "link", "show", "type", "ifb")
	var names []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && strings.HasPrefix(f[1], prefix) {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	return names
}

func TestShapedPodGetsTbfOnVethAndIFBAndLosesThemOnRemoval(t *testing.T) {
	d := startDaemon(t)
	before := d.snapshot(t)
	id := d.runPod(t, shapedPod("shaped", "10M", "5M"))
	_, v := d.status(t, id)
	if v.Bandwidth == nil || v.Bandwidth.HostVeth == "" || v.Bandwidth.IFB == "" {
		t.Fatalf("verbose info lacks the applied shaping: %+v", v.Bandwidth)
	}
	veth := run(t, "tc", "qdisc", "show", "dev", v.Bandwidth.HostVeth)
	if !strings.Contains(veth, "tbf") || !strings.Contains(veth, "rate 10Mbit") || !strings.Contains(veth, "ingress") {
		t.Errorf("host veth %s lacks tbf 10Mbit root and ingress qdisc:\n%s", v.Bandwidth.HostVeth, veth)
	}
	filters := run(t, "tc", "filter", "show", "dev", v.Bandwidth.HostVeth, "parent", "ffff:")
	if !strings.Contains(filters, "u32") || !strings.Contains(filters, "mirred") || !strings.Contains(filters, v.Bandwidth.IFB) {
		t.Errorf("no u32+mirred redirect to %s on %s:\n%s", v.Bandwidth.IFB, v.Bandwidth.HostVeth, filters)
	}
	ifb := run(t, "tc", "qdisc", "show", "dev", v.Bandwidth.IFB)
	if !strings.Contains(ifb, "tbf") || !strings.Contains(ifb, "rate 5Mbit") {
		t.Errorf("IFB %s lacks tbf 5Mbit:\n%s", v.Bandwidth.IFB, ifb)
	}
	// Shaping is on the host side: nothing inside the pod to remove.
	inside := string(mustOut(nsenterNet(v.Namespaces["net"], "tc", "qdisc", "show", "dev", "eth0")))
	if strings.Contains(inside, "tbf") {
		t.Errorf("shaping sits inside the pod where CAP_NET_ADMIN could remove it:\n%s", inside)
	}
	d.stopRemove(t, id)
	for _, name := range d.ifbs(t) {
		if name == v.Bandwidth.IFB {
			t.Errorf("IFB %s left after removal", name)
		}
	}
	assertNoLeaks(t, before, d.snapshot(t))
}

func mustOut(cmd *exec.Cmd) []byte {
	out, _ := cmd.CombinedOutput()
	return out
}

func TestBadBandwidthValuesAreInvalidArgumentAndLeakNothing(t *testing.T) {
	d := startDaemon(t)
	before := d.snapshot(t)
	ifbBefore := d.ifbs(t)
	for _, bad := range []string{"abc", "-1M", "0", "2P", "1", strings.Repeat("9", 10<<10), "10M ", "1e400"} {
		for _, dir := range []string{"ingress", "egress"} {
			cfg := podConfig("badbw")
			cfg.Annotations = map[string]string{"kubernetes.io/" + dir + "-bandwidth": bad}
			_, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: cfg})
			if status.Code(err) != codes.InvalidArgument {
				t.Errorf("%s-bandwidth=%.20q: got %v, want InvalidArgument", dir, bad, err)
				continue
			}
			if !strings.Contains(err.Error(), "kubernetes.io/"+dir+"-bandwidth") {
				t.Errorf("error does not name the annotation: %v", err)
			}
		}
	}
	hostNet := shapedPod("hostnet-bw", "10M", "")
	hostNet.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_NODE}}
	if _, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: hostNet}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("hostNetwork pod with bandwidth: %v, want InvalidArgument", err)
	}
	if got := d.ifbs(t); len(got) != len(ifbBefore) {
		t.Errorf("IFBs before %v, after %v", ifbBefore, got)
	}
	assertNoLeaks(t, before, d.snapshot(t))
}

func TestTwoShapedPodsKeepTheirOwnLimits(t *testing.T) {
	d := startDaemon(t)
	a := d.runPod(t, shapedPod("bw-a", "3M", "2M"))
	b := d.runPod(t, shapedPod("bw-b", "40M", "30M"))
	_, va := d.status(t, a)
	_, vb := d.status(t, b)
	if va.Bandwidth.IFB == vb.Bandwidth.IFB || va.Bandwidth.HostVeth == vb.Bandwidth.HostVeth {
		t.Fatalf("pods share shaping devices: %+v %+v", va.Bandwidth, vb.Bandwidth)
	}
	check := func(dev, rate string) {
		out := run(t, "tc", "qdisc", "show", "dev", dev)
		if !strings.Contains(out, "rate "+rate) {
			t.Errorf("%s: want rate %s:\n%s", dev, rate, out)
		}
	}
	check(va.Bandwidth.HostVeth, "3Mbit")
	check(va.Bandwidth.IFB, "2Mbit")
	check(vb.Bandwidth.HostVeth, "40Mbit")
	check(vb.Bandwidth.IFB, "30Mbit")
	// Removing one leaves the other's shaping intact.
	d.stopRemove(t, a)
	check(vb.Bandwidth.HostVeth, "40Mbit")
	check(vb.Bandwidth.IFB, "30Mbit")
	d.stopRemove(t, b)
}

func TestShapedPodCyclesLeaveNoIFBQdiscOrFilter(t *testing.T) {
	d := startDaemon(t)
	warm := d.runPod(t, shapedPod("warm", "10M", "10M"))
	d.stopRemove(t, warm)
	before := d.snapshot(t)
	ifbBefore := d.ifbs(t)
	for i := 0; i < 100; i++ {
		id := d.runPod(t, shapedPod(fmt.Sprintf("bwcycle-%d", i), "5M", "7M"))
		d.stopRemove(t, id)
	}
	if got := d.ifbs(t); len(got) != len(ifbBefore) {
		t.Errorf("IFBs before %v, after %v", ifbBefore, got)
	}
	assertNoLeaks(t, before, d.snapshot(t))
}

// TestKill9DuringShapedTeardownLeavesNothing kills the daemon while a
// shaped pod's stop is in its CNI DEL (made slow by a wrapper script around
// the real bridge plugin), then restarts it.
func TestKill9DuringShapedTeardownLeavesNothing(t *testing.T) {
	d := startDaemon(t)
	d.restartWith(withBinDirs(filepath.Join(d.Root, "..", "scriptbin") + ":" + cniBinDir))
	slowNetwork(t, d, `if [ "$CNI_COMMAND" = "DEL" ]; then sleep 2; fi`)
	warm := d.runPod(t, podConfig("warm"))
	d.stopRemove(t, warm)
	before := d.snapshot(t)
	ifbBefore := d.ifbs(t)
	id := d.runPod(t, shapedPod("dying", "10M", "5M"))
	_, v := d.status(t, id)
	go func() {
		_, _ = d.RT.StopPodSandbox(context.Background(), &runtime.StopPodSandboxRequest{PodSandboxId: id})
	}()
	time.Sleep(700 * time.Millisecond)
	d.kill9()
	time.Sleep(2 * time.Second)
	d.start()
	for _, name := range d.ifbs(t) {
		if name == v.Bandwidth.IFB {
			t.Errorf("IFB %s still there after restart", name)
		}
	}
	st, _ := d.status(t, id)
	if st.State != runtime.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("interrupted stop left the pod %v", st.State)
	}
	if _, err := d.RT.RemovePodSandbox(ctxT(t), &runtime.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		t.Fatal(err)
	}
	if got := d.ifbs(t); len(got) != len(ifbBefore) {
		t.Errorf("IFBs before %v, after %v", ifbBefore, got)
	}
	assertNoLeaks(t, before, d.snapshot(t))
}
