package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// userNamespaceOf returns the user namespace of pid, as the link text.
func userNamespaceOf(pid int) string {
	l, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/user", pid))
	return l
}

// assertNothingRunsAsRoot checks the real uid of every process of a
// rootless instance: the parent, the daemon, the namespace holder, the
// network helper, shims, pauses and containers. The last ones are found as
// the processes in the holder's user namespace; host uids there are the
// user's own or its subordinate ids, never 0.
func assertNothingRunsAsRoot(t *testing.T, d *daemon) int {
	t.Helper()
	ns := userNamespaceOf(d.holder(t))
	if ns == "" || ns == userNamespaceOf(os.Getpid()) {
		t.Fatalf("holder's user namespace %q is the host's", ns)
	}
	checked := 0
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		pid, _ := strconv.Atoi(filepath.Base(p))
		status, err := os.ReadFile(p + "/status")
		if err != nil {
			continue
		}
		ours := userNamespaceOf(pid) == ns || pid == d.cmd.Process.Pid
		if !ours {
			// The network helper runs in the host's user namespace.
			cmdline, _ := os.ReadFile(p + "/cmdline")
			ours = bytes.Contains(cmdline, []byte(fmt.Sprintf("/proc/%d/ns/net", d.holder(t))))
		}
		if !ours {
			continue
		}
		for _, l := range strings.Split(string(status), "\n") {
			if f := strings.Fields(l); len(f) == 5 && f[0] == "Uid:" {
				for _, id := range f[1:] {
					if id == "0" {
						cmd, _ := os.ReadFile(p + "/cmdline")
						t.Errorf("pid %d (%s) has uid 0 on the host: %s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '}), l)
					}
				}
			}
		}
		checked++
	}
	return checked
}

// TestRootlessPodSandbox runs a shaped pod as an ordinary user: it gets an
// IP on the instance's bridge inside the user's network namespace, the tc
// setup of a root pod, a cgroup under the delegated subtree, no process
// with real uid 0, and leaves nothing behind, the namespaces included.
func TestRootlessPodSandbox(t *testing.T) {
	d := startDaemon(t, withRootless())
	before := d.snapshot(t)
	cfg := podConfig("rl")
	cfg.Annotations = map[string]string{"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "5M"}
	id := d.runPod(t, cfg)
	st, v := d.status(t, id)
	if st.State != runtime.PodSandboxState_SANDBOX_READY {
		t.Fatalf("state %v", st.State)
	}
	if ip := st.GetNetwork().GetIp(); !strings.HasPrefix(ip, strings.TrimSuffix(d.Subnet, "0/24")) {
		t.Errorf("pod IP %q not in %s", ip, d.Subnet)
	}
	if v.Bandwidth == nil || v.Bandwidth.IFB == "" {
		t.Fatalf("no shaping recorded: %+v", v.Bandwidth)
	}
	qd := d.hostOut(t, "tc", "qdisc", "show", "dev", v.Bandwidth.HostVeth)
	if !strings.Contains(qd, "tbf") || !strings.Contains(qd, "ingress") {
		t.Errorf("host veth qdiscs: %s", qd)
	}
	if out := d.hostOut(t, "tc", "qdisc", "show", "dev", v.Bandwidth.IFB); !strings.Contains(out, "tbf") {
		t.Errorf("IFB qdiscs: %s", out)
	}
	// The pod answers on its IP from the instance's netns.
	if out, err := d.hostCmd(t, "ping", "-c1", "-W2", st.GetNetwork().GetIp()).CombinedOutput(); err != nil {
		t.Errorf("ping pod: %v: %s", err, out)
	}
	if v.Cgroup == nil || !strings.HasPrefix(v.Cgroup.PodPath, "/peapod-"+d.user.Name+"/") {
		t.Errorf("pod cgroup %+v not under the delegated /peapod-%s", v.Cgroup, d.user.Name)
	} else if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", v.Cgroup.PodPath)); err != nil {
		t.Errorf("pod memory cgroup: %v", err)
	}
	if n := assertNothingRunsAsRoot(t, d); n < 4 {
		t.Errorf("checked only %d processes: parent, daemon, holder, network helper and pause at least", n)
	}
	d.stopRemove(t, id)
	assertNoLeaks(t, before, d.snapshot(t))

	holder := d.holder(t)
	d.stop()
	if userNamespaceOf(holder) != "" {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", holder)); err == nil {
			st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", holder))
			if !strings.Contains(string(st), ") Z") {
				t.Errorf("namespace holder %d still runs after a stop with no pods", holder)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(d.State, "rootless", "holder.json")); !os.IsNotExist(err) {
		t.Errorf("holder record left: %v", err)
	}
}
