package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// crictl runs the real crictl against the daemon.
func (d *daemon) crictl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(crictlBin, append([]string{"--runtime-endpoint", "unix://" + d.Socket, "--timeout", "60s"}, args...)...)
	cmd.Env = append(os.Environ(), "CRI_CONFIG_FILE=/dev/null")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestCrictlDrivesThePodLifecycle(t *testing.T) {
	if _, err := os.Stat(crictlBin); err != nil {
		t.Fatalf("crictl not built (%v): run `make tools`", err)
	}
	d := startDaemon(t)
	before := d.snapshot(t)
	podJSON := filepath.Join(t.TempDir(), "pod.json")
	err := os.WriteFile(podJSON, []byte(`{
  "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "crictl-uid-1"},
  "hostname": "crictl-pod",
  "labels": {"via": "crictl"},
  "dns_config": {"servers": ["10.96.0.10"], "options": ["ndots:2"]},
  "linux": {}
}`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	out, err := d.crictl(t, "runp", podJSON)
	if err != nil {
		t.Fatalf("crictl runp: %v\n%s", err, out)
	}
	id := lastLine(out)
	if len(id) != 64 {
		t.Fatalf("crictl runp printed %q, want a sandbox id", out)
	}
	out, err = d.crictl(t, "pods", "--label", "via=crictl", "-q")
	if err != nil || lastLine(out) != id {
		t.Fatalf("crictl pods -q: %v %q", err, out)
	}
	out, err = d.crictl(t, "inspectp", id)
	if err != nil {
		t.Fatalf("crictl inspectp: %v\n%s", err, out)
	}
	var insp struct {
		Status struct {
			State   string `json:"state"`
			Network struct {
				IP string `json:"ip"`
			} `json:"network"`
		} `json:"status"`
		Info struct {
			PID        int               `json:"pid"`
			Namespaces map[string]string `json:"namespaces"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(jsonPart(out)), &insp); err != nil {
		t.Fatalf("inspectp output is not JSON: %v\n%s", err, out)
	}
	if insp.Status.State != "SANDBOX_READY" || insp.Status.Network.IP == "" || insp.Info.PID == 0 || insp.Info.Namespaces["net"] == "" {
		t.Errorf("inspectp: %+v", insp)
	}
	if out, err := d.crictl(t, "stopp", id); err != nil {
		t.Fatalf("crictl stopp: %v\n%s", err, out)
	}
	out, _ = d.crictl(t, "pods", "--state", "notready", "-q")
	if lastLine(out) != id {
		t.Errorf("stopped pod not listed as notready: %q", out)
	}
	if out, err := d.crictl(t, "rmp", id); err != nil {
		t.Fatalf("crictl rmp: %v\n%s", err, out)
	}
	out, _ = d.crictl(t, "pods", "-q")
	if strings.TrimSpace(filterWarnings(out)) != "" {
		t.Errorf("pods after rmp: %q", out)
	}
	if out, err := d.crictl(t, "info"); err != nil || !strings.Contains(out, "RuntimeReady") {
		t.Errorf("crictl info: %v\n%s", err, out)
	}
	assertNoLeaks(t, before, d.snapshot(t))
}

func filterWarnings(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, "level=warning") || strings.Contains(l, "level=info") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(filterWarnings(s)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func jsonPart(s string) string {
	if i := strings.Index(s, "{"); i >= 0 {
		return s[i:]
	}
	return s
}

// TestMalformedRequestsAreRejectedAndLeakNothing sends each kind of bad
// request to the real daemon.
func TestMalformedRequestsAreRejectedAndLeakNothing(t *testing.T) {
	d := startDaemon(t)
	warm := d.runPod(t, podConfig("warm"))
	d.stopRemove(t, warm)
	before := d.snapshot(t)
	huge := strings.Repeat("a", 300<<10)
	cases := map[string]func(c *runtime.PodSandboxConfig){
		"missing metadata":  func(c *runtime.PodSandboxConfig) { c.Metadata = nil },
		"name traversal":    func(c *runtime.PodSandboxConfig) { c.Metadata.Name = "../../../etc" },
		"uid traversal":     func(c *runtime.PodSandboxConfig) { c.Metadata.Uid = "a/../../b" },
		"log dir traversal": func(c *runtime.PodSandboxConfig) { c.LogDirectory = "/var/log/pods/../../../etc" },
		"log dir relative":  func(c *runtime.PodSandboxConfig) { c.LogDirectory = "logs" },
		"bad hostname":      func(c *runtime.PodSandboxConfig) { c.Hostname = "bad host" },
		"non-namespaced sysctl": func(c *runtime.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"kernel.panic": "1"}
		},
		"unknown sysctl": func(c *runtime.PodSandboxConfig) { c.Linux.Sysctls = map[string]string{"net.core.nope": "1"} },
		"sysctl on hostNetwork": func(c *runtime.PodSandboxConfig) {
			c.Linux.SecurityContext = &runtime.LinuxSandboxSecurityContext{NamespaceOptions: &runtime.NamespaceOption{Network: runtime.NamespaceMode_NODE}}
			c.Linux.Sysctls = map[string]string{"net.ipv4.ip_forward": "1"}
		},
		"bad dns option": func(c *runtime.PodSandboxConfig) {
			c.DnsConfig = &runtime.DNSConfig{Options: []string{"ndots:5\nnameserver 6.6.6.6"}}
		},
		"bad dns server":    func(c *runtime.PodSandboxConfig) { c.DnsConfig = &runtime.DNSConfig{Servers: []string{"not-an-ip"}} },
		"huge annotations":  func(c *runtime.PodSandboxConfig) { c.Annotations = map[string]string{"big": huge} },
		"bad cgroup parent": func(c *runtime.PodSandboxConfig) { c.Linux.CgroupParent = "/kubepods/../../escape" },
		"bad bandwidth": func(c *runtime.PodSandboxConfig) {
			c.Annotations = map[string]string{"kubernetes.io/ingress-bandwidth": "abc"}
		},
		"bad port": func(c *runtime.PodSandboxConfig) {
			c.PortMappings = []*runtime.PortMapping{{ContainerPort: 0, HostPort: 80}}
		},
		"unsafe sysctl path": func(c *runtime.PodSandboxConfig) { c.Linux.Sysctls = map[string]string{"net/../kernel/panic": "1"} },
	}
	for name, mutate := range cases {
		cfg := podConfig("bad")
		mutate(cfg)
		_, err := d.RT.RunPodSandbox(ctxT(t), &runtime.RunPodSandboxRequest{Config: cfg})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: got %v, want InvalidArgument", name, err)
		}
	}
	list, _ := d.RT.ListPodSandbox(ctxT(t), &runtime.ListPodSandboxRequest{})
	if len(list.GetItems()) != 0 {
		t.Errorf("rejected requests left sandboxes: %v", list.Items)
	}
	assertNoLeaks(t, before, d.snapshot(t))
	if dirs := d.sandboxDirs(t); len(dirs) != 0 {
		t.Errorf("sandbox dirs left: %v", dirs)
	}
}
