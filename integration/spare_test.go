package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/internal/nettest"
)

// The spare network attachment (sandbox/spare.go): a network namespace the
// daemon attaches to the embedded network ahead of the next pod.

// spareInfo is one spare, from its record.
type spareInfo struct {
	id, veth, ip string
	attached     bool
}

// spareRecords reads the instance's spare records, attached or still
// being made.
func (d *daemon) spareRecords(t testing.TB) []spareInfo {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(d.State, "spares", "*", "spare.json"))
	var out []spareInfo
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // just taken or deleted
		}
		var r struct {
			ID       string `json:"id"`
			Attached bool   `json:"attached"`
			Network  struct {
				CNIID  string `json:"cniId"`
				Result struct {
					Interfaces []struct {
						Name    string `json:"name"`
						Sandbox string `json:"sandbox"`
					} `json:"interfaces"`
					IPs []struct {
						Address string `json:"address"`
					} `json:"ips"`
				} `json:"result"`
			} `json:"network"`
		}
		if json.Unmarshal(b, &r) != nil {
			out = append(out, spareInfo{}) // half-written: not attached
			continue
		}
		if r.Attached && r.Network.CNIID != r.ID {
			t.Errorf("spare %s is attached as %q", r.ID, r.Network.CNIID)
		}
		s := spareInfo{id: r.ID, attached: r.Attached}
		for _, i := range r.Network.Result.Interfaces {
			if i.Sandbox == "" && strings.HasPrefix(i.Name, "veth") {
				s.veth = i.Name
			}
		}
		if len(r.Network.Result.IPs) > 0 {
			s.ip = strings.SplitN(r.Network.Result.IPs[0].Address, "/", 2)[0]
		}
		out = append(out, s)
	}
	return out
}

// spares is the instance's attached spares.
func (d *daemon) spares(t testing.TB) []spareInfo {
	t.Helper()
	var out []spareInfo
	for _, s := range d.spareRecords(t) {
		if s.attached {
			out = append(out, s)
		}
	}
	return out
}

// waitSpare waits for an attached spare other than those in not.
func (d *daemon) waitSpare(t testing.TB, not ...string) spareInfo {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		for _, s := range d.spares(t) {
			if !slices.Contains(not, s.id) {
				if s.veth == "" || s.ip == "" {
					t.Fatalf("spare %s has no host veth or address in its record: %+v", s.id, s)
				}
				return s
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(d.logPath)
			t.Fatalf("no spare network attachment (other than %v) after 15s; log:\n%s", not, tail(string(b), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bridgeVeths lists the veths on the instance's bridge.
func (d *daemon) bridgeVeths(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(d.hostOut(t, "ip", "-o", "link", "show", "master", d.Bridge), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			out = append(out, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	sort.Strings(out)
	return out
}

// allocated lists the addresses host-local has handed out on the
// instance's network.
func (d *daemon) allocated() []string {
	ips, _ := filepath.Glob(filepath.Join(d.Root, "cni", "networks", d.Bridge, "*.*.*.*"))
	for i, p := range ips {
		ips[i] = filepath.Base(p)
	}
	sort.Strings(ips)
	return ips
}

// assertOnlySpareLeft checks that, with no pod, the network holds the
// spare's veth and address and nothing else.
func (d *daemon) assertOnlySpareLeft(t testing.TB, sp spareInfo) {
	t.Helper()
	if v := d.bridgeVeths(t); !slices.Equal(v, []string{sp.veth}) {
		t.Errorf("veths with no pod: %v, want only the spare's [%s]", v, sp.veth)
	}
	if a := d.allocated(); !slices.Equal(a, []string{sp.ip}) {
		t.Errorf("addresses with no pod: %v, want only the spare's [%s]", a, sp.ip)
	}
}

// assertNoSpareDirs checks that a daemon that stopped left no spare's
// record or pin behind.
func (d *daemon) assertNoSpareDirs(t testing.TB) {
	t.Helper()
	if left, _ := os.ReadDir(filepath.Join(d.State, "spares")); len(left) > 0 {
		t.Errorf("spare network attachment left after the daemon stopped: %v", left)
	}
}

// assertStoppedClean checks what a daemon that stopped with no pods must
// have taken along: its spare's veth, address, pin and record.
func (d *daemon) assertStoppedClean(t testing.TB) {
	t.Helper()
	d.assertNoSpareDirs(t)
	if v := d.bridgeVeths(t); len(v) > 0 {
		t.Errorf("veths left on %s after the daemon stopped: %v", d.Bridge, v)
	}
	if a := d.allocated(); len(a) > 0 {
		t.Errorf("addresses left allocated after the daemon stopped: %v", a)
	}
	if m := d.mountsUnder(t, d.State); len(m) > 0 {
		t.Errorf("mounts left under the state dir after the daemon stopped: %v", m)
	}
}

// sandboxRecord reads the part of a sandbox's record these tests look at.
func (d *daemon) sandboxRecord(t testing.TB, id string) (r struct {
	Network struct {
		CNIID string `json:"cniId"`
	} `json:"network"`
}) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.Root, "sandboxes", id, "sandbox.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// waitNoFile waits for path to be gone.
func waitNoFile(t testing.TB, path string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		if _, err := os.Lstat(path); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still there after %v", path, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mountsUnder lists the mount points under dir.
func (d *daemon) mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(d.mountinfo(t), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

func TestPodTakesOverTheSpareAttachment(t *testing.T) {
	d := startDaemon(t)
	sp := d.waitSpare(t)
	if v := d.bridgeVeths(t); !slices.Equal(v, []string{sp.veth}) {
		t.Fatalf("veths on the bridge with only the spare: %v, want [%s]", v, sp.veth)
	}
	id := d.runPod(t, podConfig("spare-taker"))
	st, v := d.status(t, id)
	if st.Network.Ip != sp.ip {
		t.Fatalf("pod got %s, not the spare's address %s", st.Network.Ip, sp.ip)
	}
	// The pod's namespace is the spare's: its eth0 is the peer of the
	// spare's host veth, and the address answers.
	if out := run(t, "nsenter", "-t", strconv.Itoa(v.PID), "-n", "ip", "-o", "addr", "show", "eth0"); !strings.Contains(out, sp.ip+"/") {
		t.Errorf("eth0 of the pod's namespace: %s, want %s", out, sp.ip)
	}
	run(t, "ping", "-c", "1", "-W", "2", sp.ip)
	rec := d.sandboxRecord(t, id)
	if rec.Network.CNIID != sp.id {
		t.Errorf("pod's attachment is known to the plugins as %q, want the spare's %q", rec.Network.CNIID, sp.id)
	}
	// The spare's own record and pin are gone; a new spare replaces it.
	sp2 := d.waitSpare(t, sp.id)
	waitNoFile(t, filepath.Join(d.State, "spares", sp.id), 5*time.Second)
	if sp2.ip == sp.ip || sp2.veth == sp.veth {
		t.Errorf("new spare %+v reuses the taken one's %+v", sp2, sp)
	}

	// The pod's CNI DEL (under the spare's id) removes its veth and
	// address; the new spare stays.
	d.stopRemove(t, id)
	d.assertOnlySpareLeft(t, sp2)
	d.stop()
	d.assertStoppedClean(t)
}

func TestSpareOfAKilledDaemonIsDeletedAtRestart(t *testing.T) {
	d := startDaemon(t)
	sp := d.waitSpare(t)
	id := d.runPod(t, podConfig("spare-kill9"))
	sp2 := d.waitSpare(t, sp.id)
	d.kill9()
	if v := d.bridgeVeths(t); !slices.Contains(v, sp2.veth) {
		t.Fatalf("the spare's veth %s went with the daemon: %v", sp2.veth, v)
	}
	d.start()
	// Recovery runs before the daemon serves: the old spare is gone.
	if v := d.bridgeVeths(t); slices.Contains(v, sp2.veth) {
		t.Errorf("spare veth %s of the killed daemon still there after restart: %v", sp2.veth, v)
	}
	if a := d.allocated(); slices.Contains(a, sp2.ip) {
		t.Errorf("address %s of the killed daemon's spare still allocated: %v", sp2.ip, a)
	}
	if _, err := os.Stat(filepath.Join(d.State, "spares", sp2.id)); err == nil {
		t.Errorf("spare dir %s of the killed daemon still there", sp2.id)
	}
	// The pod that took the first spare kept it.
	st, _ := d.status(t, id)
	if st.State != runtime.PodSandboxState_SANDBOX_READY || st.Network.Ip != sp.ip {
		t.Errorf("after restart the pod is %v with %s, want READY with %s", st.State, st.Network.Ip, sp.ip)
	}
	sp3 := d.waitSpare(t, sp2.id)
	d.stopRemove(t, id)
	d.assertOnlySpareLeft(t, sp3)
	d.stop()
	d.assertStoppedClean(t)
}

func TestPodWithHostPortsAttachesItsOwn(t *testing.T) {
	d := startDaemon(t)
	sp := d.waitSpare(t)
	cfg := podConfig("spare-ports")
	cfg.PortMappings = []*runtime.PortMapping{{Protocol: runtime.Protocol_TCP, ContainerPort: 80, HostPort: nettest.FreePort(t, "tcp")}}
	id := d.runPod(t, cfg)
	st, _ := d.status(t, id)
	if st.Network.Ip == sp.ip {
		t.Fatalf("pod with hostPorts took the spare (%s)", sp.ip)
	}
	if s := d.spares(t); len(s) != 1 || s[0].id != sp.id {
		t.Errorf("spares after a pod with hostPorts: %+v, want the same %s", s, sp.id)
	}
	d.stopRemove(t, id)
	d.stop()
	d.assertStoppedClean(t)
}

func TestNoSpareWhenTurnedOff(t *testing.T) {
	d := startDaemon(t, withArgs("--network-spare=false"))
	id := d.runPod(t, podConfig("no-spare"))
	time.Sleep(800 * time.Millisecond) // a spare would be on its way (spareQuiet)
	if left, _ := os.ReadDir(filepath.Join(d.State, "spares")); len(left) > 0 {
		t.Errorf("spares with --network-spare=false: %v", left)
	}
	if v := d.bridgeVeths(t); len(v) != 1 {
		t.Errorf("veths with one pod and no spare: %v", v)
	}
	d.stopRemove(t, id)
}

// TestSpareOfAnEarlierNetworkIsDeleted: a network config dropped into the
// conf dir while the daemon runs replaces the embedded network; the spare
// made for the embedded one must not serve the next pod, and goes.
func TestSpareOfAnEarlierNetworkIsDeleted(t *testing.T) {
	d := startDaemon(t)
	sp := d.waitSpare(t)
	// The same bridge and subnet (one gateway address), its own range.
	prefix := strings.TrimSuffix(d.Subnet, "0/24")
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"other-%s","plugins":[{"type":"bridge","bridge":"%s","isGateway":true,"ipam":{"type":"host-local","dataDir":"%s","ranges":[[{"subnet":"%s","rangeStart":"%s200","rangeEnd":"%s250"}]]}}]}`,
		d.Bridge, d.Bridge, filepath.Join(d.Root, "cni", "networks"), d.Subnet, prefix, prefix)
	confFile := filepath.Join(d.ConfDir, "10-other.conflist")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	id := d.runPod(t, podConfig("spare-other-net"))
	st, _ := d.status(t, id)
	if st.Network.Ip == sp.ip || !strings.HasPrefix(st.Network.Ip, prefix+"2") || len(st.Network.Ip) != len(prefix)+3 {
		t.Fatalf("pod on the configured network got %s (spare %s), want one of %s200-250", st.Network.Ip, sp.ip, prefix)
	}
	waitNoFile(t, filepath.Join(d.State, "spares", sp.id), 10*time.Second)
	if v := d.bridgeVeths(t); slices.Contains(v, sp.veth) {
		t.Errorf("veth %s of the dropped spare still on the bridge: %v", sp.veth, v)
	}
	if a := d.allocated(); slices.Contains(a, sp.ip) {
		t.Errorf("address %s of the dropped spare still allocated: %v", sp.ip, a)
	}
	time.Sleep(800 * time.Millisecond) // a new spare would be on its way (spareQuiet)
	if s := d.spareRecords(t); len(s) > 0 {
		t.Errorf("spares made for a configured network: %+v", s)
	}
	d.stopRemove(t, id)
	// Back on the embedded network, spares come back.
	if err := os.Remove(confFile); err != nil {
		t.Fatal(err)
	}
	id2 := d.runPod(t, podConfig("spare-embedded-again"))
	d.waitSpare(t, sp.id)
	d.stopRemove(t, id2)
	d.stop()
	d.assertStoppedClean(t)
	if left, _ := filepath.Glob(filepath.Join(d.Root, "cni", "networks", "other-"+d.Bridge, "*.*.*.*")); len(left) > 0 {
		t.Errorf("addresses left on the configured network: %v", left)
	}
}
