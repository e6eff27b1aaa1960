package lc

import (
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"

	"peapod/internal/procmask"
	"peapod/shim"
)

func noTargets(specs.LinuxNamespaceType, string) (string, error) {
	return "", errors.New("no targets here")
}

func TestOCISpecDefaults(t *testing.T) {
	cs := shim.ContainerSpec{
		ID: "c1", Rootfs: t.TempDir(), Args: []string{"sh"},
		Hostname: "ignored-when-uts-is-joined",
		Namespaces: []shim.Namespace{
			{Type: specs.NetworkNamespace, Path: "/pins/net"},
			{Type: specs.UTSNamespace, Path: "/pins/uts"},
			{Type: specs.PIDNamespace},
		},
		Mounts: []shim.Mount{{Source: "/", Destination: "/dev/shm"}},
	}
	s, err := ociSpec(&cs, "/kubepods/pod1", noTargets)
	if err != nil {
		t.Fatal(err)
	}
	if s.Linux.CgroupsPath != "/kubepods/pod1/c1" {
		t.Errorf("cgroup %q", s.Linux.CgroupsPath)
	}
	if s.Process.Cwd != "/" || !slices.Contains(s.Process.Env, shim.DefaultPathEnv) {
		t.Errorf("cwd %q env %v", s.Process.Cwd, s.Process.Env)
	}
	if !slices.Equal(s.Process.Capabilities.Effective, shim.DefaultCapabilities()) {
		t.Errorf("caps %v", s.Process.Capabilities.Effective)
	}
	if s.Hostname != "" {
		t.Errorf("hostname %q set in a joined UTS namespace", s.Hostname)
	}
	if !slices.Equal(s.Linux.MaskedPaths, procmask.MaskedPaths) || !slices.Equal(s.Linux.ReadonlyPaths, procmask.ReadonlyPaths) {
		t.Errorf("masked %v readonly %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	want := []specs.LinuxNamespace{
		{Type: specs.MountNamespace},
		{Type: specs.NetworkNamespace, Path: "/pins/net"},
		{Type: specs.UTSNamespace, Path: "/pins/uts"},
		{Type: specs.PIDNamespace},
	}
	if !slices.Equal(s.Linux.Namespaces, want) {
		t.Errorf("namespaces %v", s.Linux.Namespaces)
	}
	var shm []specs.Mount
	for _, m := range s.Mounts {
		if m.Destination == "/dev/shm" {
			shm = append(shm, m)
		}
	}
	if len(shm) != 1 || shm[0].Type != "bind" || !slices.Contains(shm[0].Options, "rprivate") {
		t.Errorf("/dev/shm mounts %+v, want only the spec's bind mount", shm)
	}
	if s.Linux.RootfsPropagation != "" {
		t.Errorf("rootfs propagation %q", s.Linux.RootfsPropagation)
	}
	if _, err := libcontainerConfig("c1", s, false); err != nil {
		t.Errorf("libcontainer config: %v", err)
	}
}

func TestOCISpecPrivilegedAndPropagation(t *testing.T) {
	empty := []string{}
	cs := shim.ContainerSpec{
		ID: "c2", Rootfs: t.TempDir(), Args: []string{"sh"}, Privileged: true,
		Hostname:   "own",
		Namespaces: []shim.Namespace{{Type: specs.UTSNamespace}},
		Mounts: []shim.Mount{
			{Source: "/", Destination: "/host", Readonly: true, Propagation: shim.PropagationHostToContainer},
			{Source: "/", Destination: "/shared", Propagation: shim.PropagationBidirectional},
		},
		MaskedPaths: empty,
	}
	s, err := ociSpec(&cs, "/pod", noTargets)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(s.Process.Capabilities.Effective, "CAP_SYS_ADMIN") {
		t.Errorf("privileged lacks CAP_SYS_ADMIN: %v", s.Process.Capabilities.Effective)
	}
	if s.Linux.MaskedPaths != nil || s.Linux.ReadonlyPaths != nil {
		t.Errorf("privileged has masked %v readonly %v", s.Linux.MaskedPaths, s.Linux.ReadonlyPaths)
	}
	if s.Hostname != "own" {
		t.Errorf("hostname %q in a new UTS namespace", s.Hostname)
	}
	if s.Linux.RootfsPropagation != "rshared" {
		t.Errorf("rootfs propagation %q, want rshared", s.Linux.RootfsPropagation)
	}
	for _, m := range s.Mounts {
		if m.Destination == "/sys" && slices.Contains(m.Options, "ro") {
			t.Errorf("privileged /sys is read-only")
		}
		if m.Destination == "/host" && !(slices.Contains(m.Options, "ro") && slices.Contains(m.Options, "rslave")) {
			t.Errorf("/host options %v", m.Options)
		}
	}
	if d := s.Linux.Resources.Devices; len(d) != 1 || !d[0].Allow {
		t.Errorf("device rules %+v, want allow all", d)
	}
	cfg, err := libcontainerConfig("c2", s, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Devices) < 6 {
		t.Errorf("privileged sees %d devices", len(cfg.Devices))
	}
}

func TestOCISpecMemorySwapFollowsLimit(t *testing.T) {
	limit := int64(64 << 20)
	cs := shim.ContainerSpec{ID: "c3", Rootfs: t.TempDir(), Args: []string{"sh"},
		Resources: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}}}
	s, err := ociSpec(&cs, "/pod", noTargets)
	if err != nil {
		t.Fatal(err)
	}
	if sw := s.Linux.Resources.Memory.Swap; sw == nil || *sw != limit {
		t.Errorf("swap %v, want the limit", sw)
	}
	if cs.Resources.Memory.Swap != nil {
		t.Errorf("caller's resources were modified")
	}
}

func TestOCISpecRejectsBadInput(t *testing.T) {
	root := t.TempDir()
	for name, cs := range map[string]shim.ContainerSpec{
		"no id":           {Rootfs: root, Args: []string{"sh"}},
		"bad id":          {ID: "../x", Rootfs: root, Args: []string{"sh"}},
		"no command":      {ID: "a", Rootfs: root},
		"relative rootfs": {ID: "a", Rootfs: "rootfs", Args: []string{"sh"}},
		"missing source":  {ID: "a", Rootfs: root, Args: []string{"sh"}, Mounts: []shim.Mount{{Source: "/nope/nope", Destination: "/x"}}},
		"bad propagation": {ID: "a", Rootfs: root, Args: []string{"sh"}, Mounts: []shim.Mount{{Source: "/", Destination: "/x", Propagation: "sideways"}}},
		"relative mount":  {ID: "a", Rootfs: root, Args: []string{"sh"}, Mounts: []shim.Mount{{Source: "/", Destination: "x"}}},
		"unknown target":  {ID: "a", Rootfs: root, Args: []string{"sh"}, Namespaces: []shim.Namespace{{Type: specs.PIDNamespace, Path: "container:b"}}},
	} {
		if _, err := ociSpec(&cs, "/pod", noTargets); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestOOMScoreAdjIsClampedWithoutCapSysResource(t *testing.T) {
	got := clampOOMScoreAdj(-997)
	if hasCapSysResource() && !inUserNS() {
		if got != -997 {
			t.Errorf("with CAP_SYS_RESOURCE: %d", got)
		}
		return
	}
	if got < 0 {
		t.Errorf("clamped to %d, want the shim's own (>= 0 here)", got)
	}
	if clampOOMScoreAdj(1000) != 1000 {
		t.Errorf("raising is always allowed")
	}
}

// A spare helper warms the create path on a made-up container. If that
// container stopped being valid, the warming would stop at the first
// check and warm nothing past it, silently.
func TestWarmCreatePathRunsToTheEnd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the conversion decides rootless settings by the euid; the helper runs as the daemon's user") // root in CI
	}
	if err := warmCreatePath(); err != nil {
		t.Fatalf("the made-up container of the warm-up is rejected: %v", err)
	}
}
