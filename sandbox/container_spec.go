package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/sys/user"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"peapod/image"
	"peapod/netns"
	"peapod/shim"
)

// shimSpec turns a container record into what the shim runs: the image's
// defaults overlaid by the request, joined to the sandbox's namespaces,
// with the sandbox's hostname, hosts, resolv.conf and /dev/shm unless the
// kubelet mounts its own.
func shimSpec(sb *Sandbox, c *Container, img image.Image, rootfs string) (shim.ContainerSpec, error) {
	cfg := &c.Config
	args := containerArgs(cfg, img)
	if len(args) == 0 {
		return shim.ContainerSpec{}, fmt.Errorf("%w: container %q has no command: the image %s sets no entrypoint or cmd and the request none", ErrInvalid, cfg.Name, cfg.Image)
	}
	env := mergeEnv(img.Env, cfg.Env)
	if !hasEnv(env, "HOSTNAME") {
		env = append(env, "HOSTNAME="+hostnameFor(sb))
	}
	cwd := cfg.WorkingDir
	if cwd == "" {
		cwd = img.WorkingDir
	}
	if cwd == "" {
		cwd = "/"
	}
	u, err := resolveUser(rootfs, cfg.Security, img.User)
	if err != nil {
		return shim.ContainerSpec{}, err
	}
	mounts, err := containerMounts(sb, cfg)
	if err != nil {
		return shim.ContainerSpec{}, err
	}
	devices, err := containerDevices(cfg.Devices)
	if err != nil {
		return shim.ContainerSpec{}, err
	}
	spec := shim.ContainerSpec{
		ID:             c.ID,
		Rootfs:         rootfs,
		Args:           args,
		Env:            env,
		Cwd:            cwd,
		User:           u,
		Mounts:         mounts,
		Devices:        devices,
		Namespaces:     containerNamespaces(sb, cfg),
		Resources:      cfg.Resources,
		Capabilities:   capabilities(cfg.Security.AddCapabilities, cfg.Security.DropCapabilities),
		Privileged:     cfg.Security.Privileged,
		NoNewPrivs:     cfg.Security.NoNewPrivs,
		ReadonlyRootfs: cfg.Security.ReadonlyRootfs,
		MaskedPaths:    cfg.Security.MaskedPaths,
		ReadonlyPaths:  cfg.Security.ReadonlyPaths,
		Seccomp:        cfg.Security.Seccomp,
		OOMScoreAdj:    cfg.OOMScoreAdj,
		LogPath:        c.LogPath,
		Tty:            cfg.Tty,
		Stdin:          cfg.Stdin,
		StopSignal:     stopSignal(img.StopSignal),
	}
	if sb.Cgroup != nil {
		spec.CgroupPath = sb.Cgroup.ContainerCgroupsPath(c.ID)
	}
	if cfg.Security.SeccompRuntimeDefault && spec.Seccomp == nil {
		spec.Seccomp = runtimeDefaultSeccomp(spec.Capabilities)
	}
	if cfg.Security.Privileged {
		spec.Seccomp = nil // privileged containers run unconfined
	}
	return spec, nil
}

// containerArgs follows Kubernetes: command replaces the entrypoint, args
// replace the cmd.
func containerArgs(cfg *ContainerConfig, img image.Image) []string {
	if len(cfg.Command) > 0 {
		return append(append([]string{}, cfg.Command...), cfg.Args...)
	}
	if len(cfg.Args) > 0 {
		return append(append([]string{}, img.Entrypoint...), cfg.Args...)
	}
	return append(append([]string{}, img.Entrypoint...), img.Cmd...)
}

func mergeEnv(base, over []string) []string {
	out := append([]string{}, base...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, old := range out {
			if ok, _, _ := strings.Cut(old, "="); ok == k {
				out[i] = kv
				replaced = true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

// resolveUser finds uid, gid and groups from the request, else the image,
// looking names up in the container's own /etc/passwd and /etc/group.
func resolveUser(rootfs string, sec ContainerSecurity, imageUser string) (shim.User, error) {
	spec := imageUser
	switch {
	case sec.RunAsUsername != "":
		spec = sec.RunAsUsername
	case sec.RunAsUser != nil:
		spec = strconv.FormatInt(*sec.RunAsUser, 10)
	}
	if sec.RunAsGroup != nil {
		name, _, _ := strings.Cut(spec, ":")
		if name == "" {
			name = "0"
		}
		spec = name + ":" + strconv.FormatInt(*sec.RunAsGroup, 10)
	}
	passwd, _ := securejoin.SecureJoin(rootfs, "/etc/passwd")
	group, _ := securejoin.SecureJoin(rootfs, "/etc/group")
	eu, err := user.GetExecUserPath(spec, &user.ExecUser{Uid: 0, Gid: 0}, passwd, group)
	if err != nil {
		return shim.User{}, fmt.Errorf("%w: user %q: %v", ErrInvalid, spec, err)
	}
	u := shim.User{UID: uint32(eu.Uid), GID: uint32(eu.Gid)}
	if !sec.StrictSupplementalGroups {
		for _, g := range eu.Sgids {
			u.AdditionalGIDs = append(u.AdditionalGIDs, uint32(g))
		}
	}
	for _, g := range sec.SupplementalGroups {
		u.AdditionalGIDs = append(u.AdditionalGIDs, uint32(g))
	}
	return u, nil
}

func containerMounts(sb *Sandbox, cfg *ContainerConfig) ([]shim.Mount, error) {
	var out []shim.Mount
	taken := map[string]bool{}
	for _, m := range cfg.Mounts {
		if _, err := os.Stat(m.HostPath); err != nil {
			return nil, fmt.Errorf("%w: mount %s -> %s: host path: %v", ErrInvalid, m.HostPath, m.ContainerPath, err)
		}
		prop := shim.PropagationPrivate
		switch m.Propagation {
		case "rslave":
			prop = shim.PropagationHostToContainer
		case "rshared":
			prop = shim.PropagationBidirectional
		}
		out = append(out, shim.Mount{Source: m.HostPath, Destination: m.ContainerPath, Readonly: m.Readonly, Propagation: prop})
		taken[filepath.Clean(m.ContainerPath)] = true
	}
	ro := cfg.Security.ReadonlyRootfs
	for _, f := range []struct {
		dst, src string
		ro       bool
	}{
		{"/etc/hostname", filepath.Join(sb.Dir, hostnameFile), ro},
		{"/etc/hosts", filepath.Join(sb.Dir, hostsFile), ro},
		{"/etc/resolv.conf", filepath.Join(sb.Dir, resolvFile), ro},
	} {
		if !taken[f.dst] {
			out = append(out, shim.Mount{Source: f.src, Destination: f.dst, Readonly: f.ro})
		}
	}
	if !taken["/dev/shm"] {
		src := filepath.Join(sb.Dir, shmDir)
		if sb.Spec.IPCMode == ModeNode {
			src = "/dev/shm"
		}
		out = append(out, shim.Mount{Source: src, Destination: "/dev/shm"})
	}
	return out, nil
}

func containerDevices(in []ContainerDevice) ([]specs.LinuxDevice, error) {
	var out []specs.LinuxDevice
	for _, d := range in {
		var st unix.Stat_t
		if err := unix.Stat(d.HostPath, &st); err != nil {
			return nil, fmt.Errorf("%w: device %s: %v", ErrInvalid, d.HostPath, err)
		}
		var typ string
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			typ = "c"
		case unix.S_IFBLK:
			typ = "b"
		default:
			return nil, fmt.Errorf("%w: device %s is not a character or block device", ErrInvalid, d.HostPath)
		}
		mode := os.FileMode(st.Mode & 0o777)
		uid, gid := st.Uid, st.Gid
		out = append(out, specs.LinuxDevice{
			Path:     d.ContainerPath,
			Type:     typ,
			Major:    int64(unix.Major(uint64(st.Rdev))),
			Minor:    int64(unix.Minor(uint64(st.Rdev))),
			FileMode: &mode,
			UID:      &uid,
			GID:      &gid,
		})
	}
	return out, nil
}

func containerNamespaces(sb *Sandbox, cfg *ContainerConfig) []shim.Namespace {
	var ns []shim.Namespace
	if p, ok := sb.Namespaces[netns.Net]; ok {
		ns = append(ns, shim.Namespace{Type: specs.NetworkNamespace, Path: p})
	}
	if p, ok := sb.Namespaces[netns.UTS]; ok {
		ns = append(ns, shim.Namespace{Type: specs.UTSNamespace, Path: p})
	}
	if p, ok := sb.Namespaces[netns.IPC]; ok {
		ns = append(ns, shim.Namespace{Type: specs.IPCNamespace, Path: p})
	}
	switch cfg.Security.PIDMode {
	case ModeNode:
	case ModePod:
		if p, ok := sb.Namespaces[netns.PID]; ok {
			ns = append(ns, shim.Namespace{Type: specs.PIDNamespace, Path: p})
		} else {
			ns = append(ns, shim.Namespace{Type: specs.PIDNamespace})
		}
	case ModeTarget:
		ns = append(ns, shim.Namespace{Type: specs.PIDNamespace, Path: "container:" + cfg.Security.TargetID})
	default:
		ns = append(ns, shim.Namespace{Type: specs.PIDNamespace})
	}
	return ns
}

// capabilities applies CRI's add/drop lists (names without CAP_, "ALL"
// allowed) to the default set.
func capabilities(add, drop []string) []string {
	norm := func(c string) string {
		c = strings.ToUpper(c)
		if c != "ALL" && !strings.HasPrefix(c, "CAP_") {
			c = "CAP_" + c
		}
		return c
	}
	set := map[string]bool{}
	for _, c := range shim.DefaultCapabilities() {
		set[c] = true
	}
	for _, c := range drop {
		if norm(c) == "ALL" {
			set = map[string]bool{}
			continue
		}
		delete(set, norm(c))
	}
	for _, c := range add {
		if norm(c) == "ALL" {
			for _, a := range allCapabilities() {
				set[a] = true
			}
			continue
		}
		set[norm(c)] = true
	}
	out := []string{}
	for c := range set {
		out = append(out, c)
	}
	return out
}

func allCapabilities() []string {
	return []string{
		"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
		"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
		"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
		"CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
		"CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
		"CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
		"CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
		"CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
	}
}

// stopSignal parses an image's StopSignal ("SIGQUIT", "QUIT", "3").
func stopSignal(s string) syscall.Signal {
	if s == "" {
		return syscall.SIGTERM
	}
	if n, err := strconv.Atoi(s); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n)
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig
	}
	return syscall.SIGTERM
}
