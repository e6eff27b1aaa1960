package lc

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/capability"
	"github.com/moby/sys/userns"
	"github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"peapod/internal/procmask"
	"peapod/shim"
)

// defaultMounts are the kernel filesystems every container gets, minus
// those a spec mount covers. /dev/shm is normally the sandbox's, bind
// mounted by the caller.
func defaultMounts(privileged bool) []specs.Mount {
	sysOpts := []string{"nosuid", "noexec", "nodev", "ro"}
	cgOpts := []string{"nosuid", "noexec", "nodev", "relatime", "ro"}
	if privileged {
		sysOpts = sysOpts[:3]
		cgOpts = cgOpts[:4]
	}
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: sysOpts},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: cgOpts},
	}
}

// ociSpec turns a ContainerSpec into a runtime-spec document: the decisions
// (defaults, privileged, propagation, namespaces) without the kernel work.
// nsPaths resolves "container:<id>" namespace paths.
func ociSpec(cs *shim.ContainerSpec, podCgroup string, nsPath func(kind specs.LinuxNamespaceType, target string) (string, error)) (*specs.Spec, error) {
	if err := cs.Validate(); err != nil {
		return nil, err
	}
	cwd := cs.Cwd
	if cwd == "" {
		cwd = "/"
	}
	env := cs.Env
	if !hasEnv(env, "PATH") {
		env = append(env[:len(env):len(env)], shim.DefaultPathEnv)
	}
	caps := cs.Capabilities
	if caps == nil {
		caps = shim.DefaultCapabilities()
	}
	if cs.Privileged {
		caps = allCapabilities()
	}
	caps = clampToBoundingSet(caps)
	oom := clampOOMScoreAdj(cs.OOMScoreAdj)
	s := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: cs.Rootfs, Readonly: cs.ReadonlyRootfs},
		Process: &specs.Process{
			Terminal: cs.Tty,
			User: specs.User{
				UID:            cs.User.UID,
				GID:            cs.User.GID,
				AdditionalGids: cs.User.AdditionalGIDs,
			},
			Args:            cs.Args,
			Env:             env,
			Cwd:             cwd,
			NoNewPrivileges: cs.NoNewPrivs,
			OOMScoreAdj:     &oom,
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: caps,
				Permitted: caps,
			},
		},
		Linux: &specs.Linux{
			CgroupsPath: cs.CgroupPath,
			Resources:   containerResources(cs),
			Devices:     cs.Devices,
			Seccomp:     cs.Seccomp,
		},
	}
	if s.Linux.CgroupsPath == "" {
		s.Linux.CgroupsPath = path.Join("/", podCgroup, cs.ID)
	}
	if !cs.Privileged {
		s.Linux.MaskedPaths = cs.MaskedPaths
		if s.Linux.MaskedPaths == nil {
			s.Linux.MaskedPaths = procmask.MaskedPaths
		}
		s.Linux.ReadonlyPaths = cs.ReadonlyPaths
		if s.Linux.ReadonlyPaths == nil {
			s.Linux.ReadonlyPaths = procmask.ReadonlyPaths
		}
	}

	// Namespaces: always a new mount namespace; the rest as asked.
	s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.MountNamespace}}
	for _, ns := range cs.Namespaces {
		if ns.Type == specs.MountNamespace {
			continue
		}
		p := ns.Path
		if target, ok := strings.CutPrefix(p, "container:"); ok {
			var err error
			if p, err = nsPath(ns.Type, target); err != nil {
				return nil, err
			}
		}
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: ns.Type, Path: p})
		if ns.Type == specs.UTSNamespace && p == "" {
			s.Hostname = cs.Hostname
		}
	}

	// Mounts: the defaults not covered by a spec mount, then the spec's.
	hostPID := true
	for _, ns := range s.Linux.Namespaces {
		hostPID = hostPID && ns.Type != specs.PIDNamespace
	}
	for _, m := range defaultMounts(cs.Privileged) {
		if coveredBy(m.Destination, cs.Mounts) {
			continue
		}
		// In a user namespace (rootless) a proc of the host's PID
		// namespace cannot be mounted anew (the initial user namespace
		// owns it): bind the one the runtime sees, as podman does.
		if m.Destination == "/proc" && hostPID && userns.RunningInUserNS() {
			m = specs.Mount{Destination: "/proc", Type: "bind", Source: "/proc", Options: []string{"rbind", "nosuid", "noexec", "nodev"}}
		}
		s.Mounts = append(s.Mounts, m)
	}
	for _, m := range cs.Mounts {
		opts := []string{"rbind"}
		if m.Readonly {
			opts = append(opts, "ro")
		}
		prop := m.Propagation
		if prop == "" {
			prop = shim.PropagationPrivate
		}
		opts = append(opts, string(prop))
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Type: "bind", Source: m.Source, Options: opts})
		// A mount that receives or sends host mounts needs a rootfs of
		// the same propagation (what containerd does for CRI).
		switch {
		case prop == shim.PropagationBidirectional:
			s.Linux.RootfsPropagation = "rshared"
		case prop == shim.PropagationHostToContainer && s.Linux.RootfsPropagation == "":
			s.Linux.RootfsPropagation = "rslave"
		}
	}
	return s, nil
}

// containerResources are the spec's resources with peapod's defaults: the
// device rules, and no swap beyond a memory limit, as the kubelet expects
// (memory+swap = memory on v1, memory.swap.max = 0 on v2). The spec's own
// values are not modified.
func containerResources(cs *shim.ContainerSpec) *specs.LinuxResources {
	r := withDeviceRules(cs.Resources, cs)
	if r.Memory != nil && r.Memory.Limit != nil && r.Memory.Swap == nil && *r.Memory.Limit > 0 {
		m := *r.Memory
		swap := *m.Limit
		m.Swap = &swap
		r.Memory = &m
	}
	return r
}

// withDeviceRules says which devices the cgroup allows: the spec devices
// (the defaults are added by specconv), or all for a privileged container.
func withDeviceRules(r *specs.LinuxResources, cs *shim.ContainerSpec) *specs.LinuxResources {
	var out specs.LinuxResources
	if r != nil {
		out = *r
	}
	out.Devices = []specs.LinuxDeviceCgroup{{Allow: cs.Privileged, Access: "rwm"}}
	for _, d := range cs.Devices {
		major, minor := d.Major, d.Minor
		out.Devices = append(out.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: "rwm"})
	}
	return &out
}

// libcontainerConfig converts the runtime-spec document for libcontainer.
func libcontainerConfig(id string, s *specs.Spec, privileged bool) (*configs.Config, error) {
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName: id,
		Spec:       s,
		// As runc decides: root in a user namespace (rootless peapod)
		// may lack access to the cgroups it is given.
		RootlessEUID:    os.Geteuid() != 0,
		RootlessCgroups: os.Geteuid() != 0 || userns.RunningInUserNS(),
		// "slice:peapod:<id>": the systemd cgroup driver's scope.
		UseSystemdCgroup: !strings.HasPrefix(s.Linux.CgroupsPath, "/") && strings.Count(s.Linux.CgroupsPath, ":") == 2,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: container %s: %v", shim.ErrInvalid, id, err)
	}
	if privileged {
		host, err := hostDevices("/dev")
		if err != nil {
			return nil, fmt.Errorf("container %s: list host devices: %w", id, err)
		}
		have := map[string]bool{}
		for _, d := range cfg.Devices {
			have[d.Path] = true
		}
		for _, d := range host {
			if !have[d.Path] {
				cfg.Devices = append(cfg.Devices, d)
			}
		}
	}
	return cfg, nil
}

func coveredBy(dest string, mounts []shim.Mount) bool {
	for _, m := range mounts {
		d := filepath.Clean(m.Destination)
		if d == dest || strings.HasPrefix(dest, d+"/") {
			return true
		}
	}
	return false
}

func hasEnv(env []string, name string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, name+"=") {
			return true
		}
	}
	return false
}

// clampToBoundingSet drops capabilities the shim itself cannot hold: a
// container cannot get them anyway, and asking for them fails the start
// (root on some hosts runs without CAP_SYS_RESOURCE).
func clampToBoundingSet(caps []string) []string {
	c, err := capability.NewPid2(0)
	if err != nil || c.Load() != nil {
		return caps
	}
	held := map[string]bool{}
	for _, k := range capability.ListKnown() {
		if c.Get(capability.BOUNDING, k) {
			held["CAP_"+strings.ToUpper(k.String())] = true
		}
	}
	out := make([]string, 0, len(caps))
	for _, name := range caps {
		if held[strings.ToUpper(name)] {
			out = append(out, name)
		}
	}
	return out
}

func allCapabilities() []string {
	caps, err := capability.ListSupported()
	if err != nil {
		caps = capability.ListKnown()
	}
	out := make([]string, 0, len(caps))
	for _, c := range caps {
		out = append(out, "CAP_"+strings.ToUpper(c.String()))
	}
	return out
}

// clampOOMScoreAdj raises adj to the shim's own oom_score_adj when the
// shim lacks CAP_SYS_RESOURCE: lowering it would fail the container's start
// (the kubelet asks for -997 for guaranteed pods). In a user namespace
// (rootless) the capability is the namespace's, and lowering needs the
// host's: clamp there always.
func clampOOMScoreAdj(adj int) int {
	b, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return adj
	}
	own, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || adj >= own {
		return adj
	}
	if hasCapSysResource() && !inUserNS() {
		return adj
	}
	return own
}

func hasCapSysResource() bool {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_SYS_RESOURCE/32].Effective&(1<<(unix.CAP_SYS_RESOURCE%32)) != 0
}

// hostDevices lists the device nodes under dir, for a privileged container.
// Terminals of the host (/dev/pts, /dev/console) stay out: the container has
// its own.
func hostDevices(dir string) ([]*config.Device, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []*config.Device
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		switch {
		case e.IsDir():
			switch e.Name() {
			case "pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev":
				continue
			}
			sub, err := hostDevices(p)
			if err != nil {
				continue
			}
			out = append(out, sub...)
			continue
		case e.Type()&os.ModeDevice == 0 || p == "/dev/console":
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			continue
		}
		t := config.CharDevice
		if st.Mode&unix.S_IFMT == unix.S_IFBLK {
			t = config.BlockDevice
		}
		out = append(out, &config.Device{
			Rule: config.Rule{
				Type:        t,
				Major:       int64(unix.Major(st.Rdev)),
				Minor:       int64(unix.Minor(st.Rdev)),
				Permissions: "rwm",
				Allow:       true,
			},
			Path:     p,
			FileMode: os.FileMode(st.Mode &^ unix.S_IFMT),
			Uid:      st.Uid,
			Gid:      st.Gid,
		})
	}
	return out, nil
}

func intGIDs(gids []uint32) []int {
	out := make([]int, len(gids))
	for i, g := range gids {
		out[i] = int(g)
	}
	return out
}
