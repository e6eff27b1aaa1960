package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"peapod/internal/mountinfo"
	"peapod/netns"
	"peapod/rootless"
)

// The rootless preflight: what an ordinary user needs from the host to run
// `peapod serve`, each missing piece reported with the command (as root)
// that supplies it. The static checks read files through hostView so that
// tests can point them at fake trees; the probe then tries the real thing:
// a user namespace mapped with newuidmap, tc, a bridge and veths, and an
// overlay mount with userxattr inside it.

// rootlessModules are the kernel modules the rootless daemon uses inside
// its namespaces, with their kernel config options. A user cannot load
// them: root must, once.
var rootlessModules = []struct{ name, config string }{
	{"sch_tbf", "NET_SCH_TBF"},
	{"sch_ingress", "NET_SCH_INGRESS"},
	{"cls_u32", "NET_CLS_U32"},
	{"act_mirred", "NET_ACT_MIRRED"},
	{"ifb", "IFB"},
	{"bridge", "BRIDGE"},
	{"veth", "VETH"},
	{"overlay", "OVERLAY_FS"},
	{"tun", "TUN"},
}

// v2DelegatedControllers must be enabled in a delegated v2 cgroup.
var v2DelegatedControllers = []string{"cpu", "memory", "pids"}

// hostView is where the rootless checks read the host's state. Real runs
// use realHostView; tests build one over a temp dir.
type hostView struct {
	user     string
	uid, gid int
	getenv   func(string) string

	subuid, subgid string // /etc/subuid, /etc/subgid
	procSys        string // /proc/sys
	sysModule      string // /sys/module
	procModules    string // /proc/modules
	modulesBuiltin string // /lib/modules/$(uname -r)/modules.builtin
	kernelConfig   string // /proc/config.gz
	release        string // uname -r
	mountinfo      string // /proc/self/mountinfo
	procCgroup     string // /proc/self/cgroup
	tun            string // /dev/net/tun
	// delegateScript is integration/rootless-delegate.sh of this
	// checkout when it is there, to name in the fix.
	delegateScript string

	lookPath func(string) (string, error)
	// access is access(2): with the real uid, so ACLs count.
	access func(path string, mode uint32) error
	// hasFileCaps tells whether path carries security.capability.
	hasFileCaps func(path string) bool
}

func realHostView(user string, uid, gid int) *hostView {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	h := &hostView{
		user: user, uid: uid, gid: gid, getenv: os.Getenv,
		subuid: "/etc/subuid", subgid: "/etc/subgid",
		procSys: "/proc/sys", sysModule: "/sys/module", procModules: "/proc/modules",
		modulesBuiltin: filepath.Join("/lib/modules", release, "modules.builtin"),
		kernelConfig:   "/proc/config.gz",
		release:        release,
		mountinfo:      "/proc/self/mountinfo",
		procCgroup:     "/proc/self/cgroup",
		tun:            "/dev/net/tun",
		lookPath:       lookPathSbin,
		access:         unix.Access,
		hasFileCaps: func(p string) bool {
			n, err := unix.Getxattr(p, "security.capability", nil)
			return err == nil && n > 0
		},
	}
	if exe, err := os.Executable(); err == nil {
		s := filepath.Join(filepath.Dir(filepath.Dir(exe)), "integration", "rootless-delegate.sh")
		if _, err := os.Stat(s); err == nil {
			h.delegateScript = s
		}
	}
	return h
}

// lookPathSbin is exec.LookPath that also searches the sbin directories,
// which are not on an ordinary user's PATH on Debian.
func lookPathSbin(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		c := filepath.Join(d, name)
		if st, e := os.Stat(c); e == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	return "", err
}

// rootlessCheck gathers every rootless problem and note for this host and
// user; probe says whether to run the namespace probe as well.
func rootlessCheck(cfg *config, h *hostView, probe bool) (problems, notes []string) {
	problems = append(problems, h.checkSubIDs()...)
	problems = append(problems, h.checkIDMapTools()...)
	problems = append(problems, h.checkUserNS()...)
	problems = append(problems, h.checkNetHelper(cfg.Rootless.Net)...)
	problems = append(problems, h.checkTun()...)
	problems = append(problems, h.checkKernel()...)
	p, n := h.checkCgroups()
	problems = append(problems, p...)
	notes = append(notes, n...)
	problems = append(problems, h.checkPaths(cfg)...)
	if probe {
		problems = append(problems, h.probe(cfg)...)
	}
	return problems, notes
}

// --- subordinate ids and the setuid map tools ---

func (h *hostView) checkSubIDs() []string {
	var missing []string // "uid", "gid"
	var out []string
	var lists [][]rootless.SubIDRange
	for _, f := range []struct{ kind, file string }{{"uid", h.subuid}, {"gid", h.subgid}} {
		if data, err := os.ReadFile(f.file); err == nil {
			if l, err := rootless.ParseSubIDs(bytes.NewReader(data)); err == nil {
				lists = append(lists, l)
			}
		}
		_, count, err := rootless.SubIDs(f.file, h.user, h.uid)
		switch {
		case err != nil && (errors.Is(err, rootless.ErrNoSubIDs) || errors.Is(err, fs.ErrNotExist)):
			missing = append(missing, f.kind)
		case err != nil:
			out = append(out, fmt.Sprintf("cannot read %s: %v: make it readable (chmod 0644 %s)", f.file, err, f.file))
		case count < rootless.SubIDCount:
			missing = append(missing, f.kind)
			out = append(out, fmt.Sprintf("%s gives %s only %d subordinate %ss; peapod maps %d (uids 1..%d in the namespace): add a larger range (below)",
				f.file, h.user, count, f.kind, rootless.SubIDCount, rootless.SubIDCount))
		}
	}
	if len(missing) == 0 {
		return out
	}
	start := rootless.FreeSubIDRange(rootless.SubIDCount, lists...)
	rng := fmt.Sprintf("%d-%d", start, start+rootless.SubIDCount-1)
	var flags, files []string
	for _, k := range missing {
		flags = append(flags, fmt.Sprintf("--add-sub%ss %s", k, rng))
		files = append(files, "/etc/sub"+k)
	}
	return append(out, fmt.Sprintf("no subordinate id range of %d for %s in %s: sudo usermod %s %s",
		rootless.SubIDCount, h.user, strings.Join(files, " and "), strings.Join(flags, " "), h.user))
}

func (h *hostView) checkIDMapTools() []string {
	var out []string
	for _, tool := range []string{"newuidmap", "newgidmap"} {
		p, err := h.lookPath(tool)
		if err != nil {
			out = append(out, fmt.Sprintf("%s not found: it writes the namespace's id map from /etc/sub%sid: sudo apt-get install uidmap",
				tool, tool[3:4]))
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", p, err))
			continue
		}
		owner := -1
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			owner = int(s.Uid)
		}
		if (owner == 0 && st.Mode()&fs.ModeSetuid != 0) || h.hasFileCaps(p) {
			continue
		}
		out = append(out, fmt.Sprintf("%s is neither setuid root nor given file capabilities, so it cannot map subordinate ids: sudo chown root %s && sudo chmod u+s %s",
			p, p, p))
	}
	return out
}

// --- kernel ---

func (h *hostView) readSysctl(name string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(h.procSys, strings.ReplaceAll(name, ".", "/")))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

func (h *hostView) checkUserNS() []string {
	var out []string
	if v, ok := h.readSysctl("user.max_user_namespaces"); ok && v == "0" {
		out = append(out, "user namespaces are disabled (user.max_user_namespaces = 0): "+
			"sudo sysctl -w user.max_user_namespaces=28633 (and the same line in /etc/sysctl.d/peapod.conf to keep it)")
	} else if !ok {
		out = append(out, fmt.Sprintf("%s/user/max_user_namespaces is missing: the kernel lacks user namespaces (CONFIG_USER_NS): use a kernel with them", h.procSys))
	}
	// Debian's and Ubuntu's own switch; absent on kernels without the patch.
	if v, ok := h.readSysctl("kernel.unprivileged_userns_clone"); ok && v == "0" {
		out = append(out, "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0): "+
			"sudo sysctl -w kernel.unprivileged_userns_clone=1 (and the same line in /etc/sysctl.d/peapod.conf to keep it)")
	}
	// Ubuntu >= 23.10: AppArmor confines unprivileged user namespaces.
	if v, ok := h.readSysctl("kernel.apparmor_restrict_unprivileged_userns"); ok && v == "1" {
		out = append(out, "AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1): "+
			"sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or give peapod an AppArmor profile with `userns,`")
	}
	return out
}

// moduleState says whether module name is usable (loaded or built in),
// and if not, whether the kernel lacks it altogether (its config says the
// option is not set). A kernel without module support and without a
// config to read counts as ok: the probe then decides.
func (h *hostView) moduleState(name, option string) (ok bool, lacking bool) {
	norm := strings.ReplaceAll(name, "-", "_")
	if _, err := os.Stat(filepath.Join(h.sysModule, norm)); err == nil {
		return true, false
	}
	if data, err := os.ReadFile(h.procModules); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.ReplaceAll(f[0], "-", "_") == norm {
				return true, false
			}
		}
	}
	if data, err := os.ReadFile(h.modulesBuiltin); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			base := strings.TrimSuffix(filepath.Base(strings.TrimSpace(line)), ".ko")
			if strings.ReplaceAll(base, "-", "_") == norm {
				return true, false
			}
		}
	}
	switch h.kernelOption(option) {
	case "y":
		return true, false
	case "m":
		return false, false
	case "n":
		return false, true
	}
	if _, err := os.Stat(h.procModules); err != nil {
		// No loadable module support and nothing else to go by: what is
		// not built in cannot be had anyway; the probe tells.
		return true, false
	}
	return false, false
}

// kernelOption is "y", "m", "n" (not set) or "" (no config to read).
func (h *hostView) kernelOption(option string) string {
	f, err := os.Open(h.kernelConfig)
	if err != nil {
		return ""
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(h.kernelConfig, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return ""
		}
		defer gz.Close()
		r = gz
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "CONFIG_"+option+"="); ok {
			return v
		}
		if line == "# CONFIG_"+option+" is not set" {
			return "n"
		}
	}
	if sc.Err() != nil {
		return ""
	}
	return "n"
}

func (h *hostView) checkKernel() []string {
	var out []string
	if major, minor, ok := parseRelease(h.release); ok && (major < 5 || major == 5 && minor < 11) {
		out = append(out, fmt.Sprintf("kernel %s is older than 5.11: overlayfs in a user namespace (userxattr) needs 5.11 or newer: upgrade the kernel (Debian 12 ships 6.1)", h.release))
	}
	var load []string
	for _, m := range rootlessModules {
		ok, lacking := h.moduleState(m.name, m.config)
		switch {
		case ok:
		case lacking:
			out = append(out, fmt.Sprintf("the kernel is built without %s (CONFIG_%s is not set): use a kernel that has it", m.name, m.config))
		default:
			load = append(load, m.name)
		}
	}
	for _, m := range load {
		out = append(out, fmt.Sprintf("kernel module %s is not loaded and a user cannot load it: sudo modprobe %s (and add %s to /etc/modules-load.d/peapod.conf to load it at boot)", m, m, m))
	}
	return out
}

func parseRelease(r string) (major, minor int, ok bool) {
	parts := strings.SplitN(r, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	end := strings.IndexFunc(parts[1], func(c rune) bool { return c < '0' || c > '9' })
	if end < 0 {
		end = len(parts[1])
	}
	minor, err2 := strconv.Atoi(parts[1][:end])
	return major, minor, err1 == nil && err2 == nil
}

// --- network ---

func (h *hostView) checkNetHelper(want string) []string {
	pkg := map[string]string{rootless.NetSlirp4netns: "slirp4netns", rootless.NetPasta: "passt"}
	switch want {
	case rootless.NetSlirp4netns, rootless.NetPasta:
		if _, err := h.lookPath(want); err != nil {
			return []string{fmt.Sprintf("%s not found (--rootless-net=%s): it gives the namespaces their outbound network: sudo apt-get install %s",
				want, want, pkg[want])}
		}
		return nil
	}
	for _, n := range []string{rootless.NetSlirp4netns, rootless.NetPasta} {
		if _, err := h.lookPath(n); err == nil {
			return nil
		}
	}
	return []string{"neither slirp4netns nor pasta is installed: one gives the namespaces their outbound network: sudo apt-get install slirp4netns (or passt)"}
}

func (h *hostView) checkTun() []string {
	if _, err := os.Stat(h.tun); err != nil {
		return []string{fmt.Sprintf("%s is missing (%v): slirp4netns and pasta need it: sudo modprobe tun", h.tun, err)}
	}
	if err := h.access(h.tun, unix.R_OK|unix.W_OK); err != nil {
		fix := fmt.Sprintf("sudo setfacl -m u:%s:rw %s", h.user, h.tun)
		if _, err := h.lookPath("setfacl"); err != nil {
			fix = "sudo apt-get install acl && " + fix
		}
		return []string{fmt.Sprintf("%s is not readable and writable by %s (%v): slirp4netns and pasta open it: %s (again after each boot, or from a udev rule)",
			h.tun, h.user, err, fix)}
	}
	return nil
}

// --- cgroups ---

// cgroupMount is one cgroup filesystem from mountinfo.
type cgroupMount struct {
	dir   string   // mount point
	v2    bool     // cgroup2
	names []string // v1: controllers and name=..., from the super options
}

func (h *hostView) cgroupMounts() ([]cgroupMount, error) {
	data, err := os.ReadFile(h.mountinfo)
	if err != nil {
		return nil, err
	}
	var out []cgroupMount
	for _, m := range mountinfo.Parse(data) {
		switch m.FSType {
		case "cgroup2":
			out = append(out, cgroupMount{dir: m.MountPoint, v2: true})
		case "cgroup":
			var names []string
			for o := range strings.SplitSeq(m.SuperOptions, ",") {
				if strings.HasPrefix(o, "name=") || !strings.Contains(o, "=") && !cgroupMountOptions[o] {
					names = append(names, o)
				}
			}
			out = append(out, cgroupMount{dir: m.MountPoint, names: names})
		}
	}
	return out, nil
}

// cgroupMountOptions are v1 super options that name no controller.
var cgroupMountOptions = map[string]bool{
	"rw": true, "ro": true, "xattr": true, "clone_children": true, "noprefix": true,
	"cpuset_v2_mode": true, "favordynmods": true, "nofavordynmods": true,
}

// delegatedName is the v1 subtree root delegates to the user in every
// hierarchy (integration/rootless-delegate.sh makes it).
func (h *hostView) delegatedName() string { return "peapod-" + h.user }

func (h *hostView) checkCgroups() (problems, notes []string) {
	mounts, err := h.cgroupMounts()
	if err != nil {
		return []string{fmt.Sprintf("cannot read %s: %v", h.mountinfo, err)}, nil
	}
	var v1 []cgroupMount
	var unified *cgroupMount
	for i, m := range mounts {
		if m.v2 {
			unified = &mounts[i]
		} else {
			v1 = append(v1, m)
		}
	}
	switch {
	case len(v1) > 0:
		return h.checkCgroupV1(v1), nil
	case unified != nil:
		return h.checkCgroupV2(unified.dir)
	}
	return []string{"no cgroup filesystem is mounted: pods run without accounting or limits; as root: mount -t cgroup2 none /sys/fs/cgroup"}, nil
}

func (h *hostView) checkCgroupV1(mounts []cgroupMount) []string {
	var out []string
	have := map[string]bool{}
	for _, m := range mounts {
		for _, n := range m.names {
			have[n] = true
		}
	}
	for _, c := range []string{"cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer"} {
		if !have[c] {
			out = append(out, fmt.Sprintf("cgroup v1 controller %s is not mounted: as root: mkdir -p /sys/fs/cgroup/%s && mount -t cgroup -o %s cgroup /sys/fs/cgroup/%s", c, c, c, c))
		}
	}
	name := h.delegatedName()
	var missing, dirs []string
	var cpusetDir string
	for _, m := range mounts {
		dir := filepath.Join(m.dir, name)
		if slices.Contains(m.names, "cpuset") {
			cpusetDir = dir
		}
		if why := h.delegatedDirProblem(dir); why != "" {
			missing = append(missing, why)
			dirs = append(dirs, dir)
		}
	}
	if len(missing) > 0 {
		out = append(out, fmt.Sprintf("cgroup v1: no subtree delegated to %s (%s): pods run without accounting or limits: %s",
			h.user, strings.Join(missing, "; "), h.delegateFix(dirs, cpusetDir)))
	} else if cpusetDir != "" {
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			b, err := os.ReadFile(filepath.Join(cpusetDir, f))
			if err == nil && strings.TrimSpace(string(b)) == "" {
				out = append(out, fmt.Sprintf("cgroup v1: %s/%s is empty, so no process can join the subtree: sudo sh -c 'cat %s > %s'",
					cpusetDir, f, filepath.Join(filepath.Dir(cpusetDir), f), filepath.Join(cpusetDir, f)))
			}
		}
	}
	return out
}

// delegatedDirProblem says what keeps the user from managing cgroups in
// dir, or "" when it is delegated: the user owns the directory and its
// cgroup.procs, and can make a child cgroup there (tried and removed).
func (h *hostView) delegatedDirProblem(dir string) string {
	st, err := os.Stat(dir)
	if err != nil {
		return dir + " is missing"
	}
	if owner(st) != h.uid {
		return fmt.Sprintf("%s belongs to uid %d", dir, owner(st))
	}
	if st, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil || owner(st) != h.uid {
		return dir + "/cgroup.procs is not " + h.user + "'s"
	}
	if os.Geteuid() == h.uid {
		probe := filepath.Join(dir, fmt.Sprintf("peapod-check-%d", os.Getpid()))
		if err := os.Mkdir(probe, 0o755); err != nil {
			return fmt.Sprintf("cannot create a cgroup in %s: %v", dir, err)
		}
		_ = os.Remove(probe)
	}
	return ""
}

func owner(st os.FileInfo) int {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid)
	}
	return -1
}

// delegateFix is the command that delegates the v1 subtree: the checkout's
// script when there is one, else the same steps spelled out.
func (h *hostView) delegateFix(dirs []string, cpusetDir string) string {
	if h.delegateScript != "" {
		return fmt.Sprintf("sudo %s %s", h.delegateScript, h.user)
	}
	var steps []string
	for _, d := range dirs {
		steps = append(steps, fmt.Sprintf("mkdir -p %s", d))
		if d == cpusetDir {
			parent := filepath.Dir(d)
			steps = append(steps,
				fmt.Sprintf("cat %s/cpuset.cpus > %s/cpuset.cpus", parent, d),
				fmt.Sprintf("cat %s/cpuset.mems > %s/cpuset.mems", parent, d))
		}
		steps = append(steps, fmt.Sprintf("chown -R %s: %s", h.user, d))
	}
	return "sudo sh -c '" + strings.Join(steps, " && ") + "'"
}

// checkCgroupV2 accepts either delegation: the subtree root made for the
// user (/sys/fs/cgroup/peapod-USER, by integration/rootless-delegate.sh)
// or systemd's (user@UID.service with Delegate=yes).
func (h *hostView) checkCgroupV2(root string) (problems, notes []string) {
	own := ""
	if data, err := os.ReadFile(h.procCgroup); err == nil {
		for line := range strings.SplitSeq(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "0::"); ok {
				own = v
			}
		}
	}
	subtree := "/" + h.delegatedName()
	service := fmt.Sprintf("/user.slice/user-%d.slice/user@%d.service", h.uid, h.uid)
	subtreeWhy := h.delegatedV2Problem(filepath.Join(root, subtree), "cgroup.subtree_control")
	serviceWhy := h.delegatedV2Problem(filepath.Join(root, service))
	under := func(cg string) bool { return own == cg || strings.HasPrefix(own, cg+"/") }
	switch {
	case subtreeWhy == "" && under(subtree), serviceWhy == "" && under(service):
		return nil, nil
	case subtreeWhy == "":
		return nil, []string{fmt.Sprintf("this process is in cgroup %s, outside the subtree %s delegated to %s: a user cannot move itself there (that needs write access to their common ancestor); start peapod inside it (as root: echo PID > %s/cgroup.procs)",
			own, subtree, h.user, filepath.Join(root, subtree))}
	case serviceWhy == "":
		return nil, []string{fmt.Sprintf("this process is in cgroup %s, outside %s: start peapod as a systemd user unit (systemctl --user start peapod, see contrib/peapod.service) or with systemd-run --user -p Delegate=yes, so that it gets the delegated cgroup",
			own, service)}
	}
	fix := "sudo mkdir -p /etc/systemd/system/user@.service.d && printf '[Service]\\nDelegate=cpu cpuset io memory pids\\n' | sudo tee /etc/systemd/system/user@.service.d/delegate.conf && sudo systemctl daemon-reload, then log in again"
	if _, err := os.Stat(filepath.Join(root, service)); err != nil {
		fix = "sudo loginctl enable-linger " + h.user + " and " + fix
	}
	if h.delegateScript != "" {
		fix += fmt.Sprintf("; or without systemd: sudo %s %s", h.delegateScript, h.user)
	}
	return []string{fmt.Sprintf("cgroup v2: no cgroup delegated to %s (%s; %s): pods run without accounting or limits: %s",
		h.user, serviceWhy, subtreeWhy, fix)}, nil
}

// delegatedV2Problem says why dir is not a cgroup v2 subtree the user
// manages with cpu, memory and pids, or "" when it is one. The user must
// own the directory, its cgroup.procs and the other files named.
func (h *hostView) delegatedV2Problem(dir string, files ...string) string {
	st, err := os.Stat(dir)
	if err != nil {
		return dir + " is missing"
	}
	if owner(st) != h.uid {
		return fmt.Sprintf("%s belongs to uid %d", dir, owner(st))
	}
	for _, f := range append([]string{"cgroup.procs"}, files...) {
		if st, err := os.Stat(filepath.Join(dir, f)); err != nil || owner(st) != h.uid {
			return fmt.Sprintf("%s/%s is not %s's", dir, f, h.user)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Sprintf("cannot read %s/cgroup.controllers: %v", dir, err)
	}
	have := strings.Fields(string(b))
	var lack []string
	for _, c := range v2DelegatedControllers {
		if !slices.Contains(have, c) {
			lack = append(lack, c)
		}
	}
	if len(lack) > 0 {
		return fmt.Sprintf("%s lacks the %s controllers", dir, strings.Join(lack, ", "))
	}
	return ""
}

// --- paths ---

func (h *hostView) checkPaths(cfg *config) []string {
	var out []string
	if rt := h.getenv("XDG_RUNTIME_DIR"); rt != "" {
		if st, err := os.Stat(rt); err != nil || !st.IsDir() {
			out = append(out, fmt.Sprintf("XDG_RUNTIME_DIR=%s does not exist: log in through a session that makes it (sudo loginctl enable-linger %s), or unset it to use /tmp/peapod-%d",
				rt, h.user, h.uid))
		}
	}
	if st, err := os.Stat(cfg.State); err == nil {
		if owner(st) != h.uid {
			out = append(out, fmt.Sprintf("state dir %s belongs to uid %d, not to %s: sudo rm -rf %s, or set XDG_RUNTIME_DIR", cfg.State, owner(st), h.user, cfg.State))
		} else if st.Mode().Perm()&0o022 != 0 {
			out = append(out, fmt.Sprintf("state dir %s is writable by others (mode %o): chmod 0700 %s", cfg.State, st.Mode().Perm(), cfg.State))
		}
	}
	return out
}

// --- the probe: the real thing in a throwaway user namespace ---

// probeEnv runs `peapod check` as the probe's child: "wait" (just started
// in the new namespaces, waiting for its id maps), then "run" (re-executed,
// uid 0 there with full capabilities).
const (
	probeEnv    = "PEAPOD_CHECK_PROBE"
	probeDirEnv = "PEAPOD_CHECK_PROBE_DIR"
)

// probe starts a child in new user, mount and network namespaces, maps it
// the way the daemon's namespaces are mapped (newuidmap/newgidmap with the
// subordinate ranges; only the user's own ids when that fails, so the rest
// can still be tried) and has it try tc, a bridge, veths and an overlay
// mount with userxattr. It leaves nothing behind: the namespaces die with
// the child, its directory is removed.
func (h *hostView) probe(cfg *config) []string {
	dir, err := os.MkdirTemp(probeBase(cfg.Root), ".peapod-check-")
	if err != nil {
		return []string{fmt.Sprintf("probe: cannot make a scratch dir: %v", err)}
	}
	defer os.RemoveAll(dir)
	exe, err := os.Executable()
	if err != nil {
		return []string{fmt.Sprintf("probe: %v", err)}
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(exe, "check")
	cmd.Env = append(os.Environ(), probeEnv+"=wait", probeDirEnv+"="+dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS | syscall.CLONE_NEWNET,
		Pdeathsig:  syscall.SIGKILL,
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return []string{fmt.Sprintf("probe: %v", err)}
	}
	if err := cmd.Start(); err != nil {
		return []string{fmt.Sprintf("cannot create a user namespace: %v: unprivileged user namespaces are disabled or restricted here (sysctls above, or a seccomp or AppArmor policy around this shell)", err)}
	}
	var out []string
	pid := strconv.Itoa(cmd.Process.Pid)
	mapped := true
	for _, m := range []struct{ tool, file string }{{"newuidmap", h.subuid}, {"newgidmap", h.subgid}} {
		id := h.uid
		if m.tool == "newgidmap" {
			id = h.gid
		}
		start, count, err := rootless.SubIDs(m.file, h.user, h.uid)
		if err != nil || count < rootless.SubIDCount {
			mapped = false // reported by checkSubIDs
			break
		}
		tool, err := h.lookPath(m.tool)
		if err != nil {
			mapped = false // reported by checkIDMapTools
			break
		}
		args := []string{pid, "0", strconv.Itoa(id), "1", "1", strconv.Itoa(start), strconv.Itoa(rootless.SubIDCount)}
		if b, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
			out = append(out, fmt.Sprintf("%s %s failed: %v: %s", tool, strings.Join(args, " "), err, strings.TrimSpace(string(b))))
			mapped = false
			break
		}
	}
	if !mapped {
		// Our own ids only, which needs no helper (setgroups denied).
		for _, w := range []struct{ file, data string }{
			{"setgroups", "deny"}, {"uid_map", fmt.Sprintf("0 %d 1", h.uid)}, {"gid_map", fmt.Sprintf("0 %d 1", h.gid)},
		} {
			// A uid_map that newuidmap wrote before newgidmap failed
			// stays: writing it again fails, which is fine.
			if err := os.WriteFile("/proc/"+pid+"/"+w.file, []byte(w.data), 0); err != nil && w.file != "uid_map" {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				return append(out, fmt.Sprintf("probe: cannot write the namespace's %s: %v", w.file, err))
			}
		}
	}
	_, _ = io.WriteString(in, "go\n")
	_ = in.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		err = <-done
		return append(out, "probe: the namespace probe did not finish in 30s")
	}
	for line := range strings.SplitSeq(strings.TrimSpace(stdout.String()), "\n") {
		if line != "" {
			out = append(out, "in a user namespace: "+line)
		}
	}
	if err != nil {
		out = append(out, fmt.Sprintf("probe: the namespace probe failed: %v: %s", err, strings.TrimSpace(stderr.String())))
	}
	return out
}

// probeBase is where the probe's scratch dir goes: in the nearest existing
// ancestor of the root dir, so the overlay mount is tried on the
// filesystem the image store will use; the temp dir when none is writable.
func probeBase(root string) string {
	for d := root; d != "/" && d != "."; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			if unix.Access(d, unix.W_OK) == nil {
				return d
			}
			break
		}
	}
	return os.TempDir()
}

// probeChild is `peapod check` started by probe. In "wait" it blocks
// until the parent wrote the id maps, then re-executes itself: capabilities
// in a user namespace come with an exec as a mapped uid 0. In "run" it
// prints one line per problem and exits 0.
func probeChild(stage string) error {
	switch stage {
	case "wait":
		if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		env := slices.DeleteFunc(os.Environ(), func(s string) bool { return strings.HasPrefix(s, probeEnv+"=") })
		return syscall.Exec(exe, []string{exe, "check"}, append(env, probeEnv+"=run"))
	case "run":
		for _, p := range probeProblems(os.Getenv(probeDirEnv)) {
			fmt.Println(p)
		}
		return nil
	}
	return fmt.Errorf("probe: unknown stage %q", stage)
}

// probeProblems runs inside the probe's namespaces as uid 0 there.
func probeProblems(dir string) []string {
	var out []string
	if os.Geteuid() != 0 {
		return []string{fmt.Sprintf("uid %d instead of 0 after the id maps were written", os.Geteuid())}
	}
	// A bridge with a veth on it, as the CNI bridge plugin makes.
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ppchkbr0"}}
	if err := netlink.LinkAdd(br); err != nil {
		out = append(out, fmt.Sprintf("cannot create a bridge: %v: sudo modprobe bridge", err))
	} else {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ppchkv0", MasterIndex: br.Index}, PeerName: "ppchkv1"}
		if err := netlink.LinkAdd(veth); err != nil {
			out = append(out, fmt.Sprintf("cannot create a veth pair: %v: sudo modprobe veth", err))
		} else {
			_ = netlink.LinkDel(veth)
		}
		_ = netlink.LinkDel(br)
	}
	for _, p := range netns.CheckShapingSupport() {
		out = append(out, strings.ReplaceAll(p, "(modprobe ", "(sudo modprobe "))
	}
	if dir != "" {
		if p := probeOverlay(dir); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// probeOverlay mounts an overlay with userxattr in dir (in the probe's own
// mount namespace), writes through it and unmounts.
func probeOverlay(dir string) string {
	var paths []string
	for _, n := range []string{"lower", "upper", "work", "merged"} {
		p := filepath.Join(dir, n)
		if err := os.Mkdir(p, 0o755); err != nil {
			return fmt.Sprintf("overlay probe: %v", err)
		}
		paths = append(paths, p)
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s,userxattr", paths[0], paths[1], paths[2])
	if err := unix.Mount("overlay", paths[3], "overlay", 0, opts); err != nil {
		return fmt.Sprintf("cannot mount overlayfs with userxattr on %s: %v: needs kernel 5.11 or newer and a filesystem with user xattrs under the root dir (ext4, xfs, btrfs)", dir, err)
	}
	defer unix.Unmount(paths[3], unix.MNT_DETACH)
	if err := os.WriteFile(filepath.Join(paths[3], "f"), []byte("x"), 0o644); err != nil {
		return fmt.Sprintf("cannot write through an overlay mount with userxattr on %s: %v", dir, err)
	}
	return ""
}
