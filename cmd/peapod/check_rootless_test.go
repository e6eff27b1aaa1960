package main

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// These tests give the rootless checks fake host trees (subuid files,
// /proc/sys, /sys/module, mountinfo, cgroup directories) in a temp dir:
// the real host's state cannot be varied here (one kernel, one cgroup
// layout, and changing sysctls or /etc/subuid would disturb other users of
// the machine). The checks on the real host, probe included, are tested in
// integration/rootless_check_test.go by running `peapod check` as the test
// user.

const testUID, testGID = 4242, 4242

func fakeHost(t *testing.T) *hostView {
	t.Helper()
	d := t.TempDir()
	h := &hostView{
		user: "alice", uid: testUID, gid: testGID,
		getenv:         func(string) string { return "" },
		subuid:         filepath.Join(d, "subuid"),
		subgid:         filepath.Join(d, "subgid"),
		procSys:        filepath.Join(d, "proc/sys"),
		sysModule:      filepath.Join(d, "sys/module"),
		procModules:    filepath.Join(d, "proc/modules"),
		modulesBuiltin: filepath.Join(d, "lib/modules/modules.builtin"),
		kernelConfig:   filepath.Join(d, "proc/config.gz"),
		release:        "6.1.0-28-amd64",
		mountinfo:      filepath.Join(d, "proc/self/mountinfo"),
		procCgroup:     filepath.Join(d, "proc/self/cgroup"),
		tun:            filepath.Join(d, "dev/net/tun"),
		lookPath: func(n string) (string, error) {
			return "", &exec.Error{Name: n, Err: exec.ErrNotFound}
		},
		access:      func(string, uint32) error { return nil },
		hasFileCaps: func(string) bool { return false },
	}
	return h
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// expectLines checks that got has exactly one line per want, each line
// containing its want's substrings in order.
func expectLines(t *testing.T, what string, got []string, want ...[]string) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: got %d lines, want %d:\n%s", what, len(got), len(want), strings.Join(got, "\n"))
		return
	}
	for i, parts := range want {
		rest := got[i]
		for _, p := range parts {
			j := strings.Index(rest, p)
			if j < 0 {
				t.Errorf("%s: line %d %q lacks %q (after the earlier parts)", what, i, got[i], p)
				break
			}
			rest = rest[j+len(p):]
		}
	}
}

func TestRootlessCheckSubIDs(t *testing.T) {
	h := fakeHost(t)
	// No files at all: the first range.
	expectLines(t, "no files", h.checkSubIDs(),
		[]string{"alice", "sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 alice"})

	// Others hold 100000.., alice has a gid range only (by uid): a free
	// range for the uids, past everyone's.
	write(t, h.subuid, "# users\nbob:100000:65536\n")
	write(t, h.subgid, "bob:100000:65536\n4242:165536:65536\n")
	expectLines(t, "uids missing", h.checkSubIDs(),
		[]string{"/etc/subuid", "sudo usermod --add-subuids 231072-296607 alice"})

	// A short range is reported, with a new range to add.
	write(t, h.subuid, "bob:100000:65536\nalice:165536:1000\n")
	expectLines(t, "short", h.checkSubIDs(),
		[]string{h.subuid, "only 1000 subordinate uids"},
		[]string{"sudo usermod --add-subuids 231072-296607 alice"})

	// Both there: nothing to say.
	write(t, h.subuid, "bob:100000:65536\nalice:165536:65536\n")
	write(t, h.subgid, "alice:165536:65536\n")
	expectLines(t, "ok", h.checkSubIDs())
}

// vfsCapV2 is a security.capability value granting cap_setuid (bit 7).
func vfsCapV2() []byte {
	var b bytes.Buffer
	for _, v := range []uint32{0x02000000 | 1, 1 << 7, 0, 0, 0} {
		_ = binary.Write(&b, binary.LittleEndian, v)
	}
	return b.Bytes()
}

func TestRootlessCheckIDMapTools(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes setuid root files and sets security.capability")
	}
	h := fakeHost(t)
	dir := t.TempDir()
	tools := map[string]string{}
	h.lookPath = func(n string) (string, error) {
		if p, ok := tools[n]; ok {
			return p, nil
		}
		return "", exec.ErrNotFound
	}
	h.hasFileCaps = realHostView("x", 1, 1).hasFileCaps
	expectLines(t, "missing", h.checkIDMapTools(),
		[]string{"newuidmap not found", "sudo apt-get install uidmap"},
		[]string{"newgidmap not found", "sudo apt-get install uidmap"})

	uidmap, gidmap := filepath.Join(dir, "newuidmap"), filepath.Join(dir, "newgidmap")
	write(t, uidmap, "#!/bin/sh\n")
	write(t, gidmap, "#!/bin/sh\n")
	tools["newuidmap"], tools["newgidmap"] = uidmap, gidmap
	// chmod clears setuid: set it explicitly.
	if err := os.Chmod(uidmap, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(gidmap, 0o755); err != nil {
		t.Fatal(err)
	}
	expectLines(t, "gid tool plain", h.checkIDMapTools(),
		[]string{gidmap, "neither setuid root nor given file capabilities", "sudo chown root " + gidmap + " && sudo chmod u+s " + gidmap})

	// File capabilities are as good as setuid.
	if err := unix.Setxattr(gidmap, "security.capability", vfsCapV2(), 0); err != nil {
		t.Fatalf("set file capabilities on %s: %v", gidmap, err)
	}
	expectLines(t, "caps", h.checkIDMapTools())

	// Setuid but not owned by root does not count.
	if err := os.Chown(uidmap, testUID, testGID); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(uidmap, 0o755|os.ModeSetuid); err != nil {
		t.Fatal(err)
	}
	expectLines(t, "setuid non-root", h.checkIDMapTools(), []string{uidmap, "sudo chmod u+s"})
}

func TestRootlessCheckUserNS(t *testing.T) {
	h := fakeHost(t)
	expectLines(t, "no sysctl", h.checkUserNS(), []string{"CONFIG_USER_NS"})

	write(t, filepath.Join(h.procSys, "user/max_user_namespaces"), "0\n")
	write(t, filepath.Join(h.procSys, "kernel/unprivileged_userns_clone"), "0\n")
	write(t, filepath.Join(h.procSys, "kernel/apparmor_restrict_unprivileged_userns"), "1\n")
	expectLines(t, "all off", h.checkUserNS(),
		[]string{"sudo sysctl -w user.max_user_namespaces=28633"},
		[]string{"sudo sysctl -w kernel.unprivileged_userns_clone=1"},
		[]string{"sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"})

	write(t, filepath.Join(h.procSys, "user/max_user_namespaces"), "63413\n")
	write(t, filepath.Join(h.procSys, "kernel/unprivileged_userns_clone"), "1\n")
	write(t, filepath.Join(h.procSys, "kernel/apparmor_restrict_unprivileged_userns"), "0\n")
	expectLines(t, "all on", h.checkUserNS())
}

func writeKernelConfig(t *testing.T, path string, lines ...string) {
	t.Helper()
	var b bytes.Buffer
	gz := gzip.NewWriter(&b)
	fmt.Fprintln(gz, "# Linux kernel config")
	for _, l := range lines {
		fmt.Fprintln(gz, l)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	write(t, path, b.String())
}

func TestRootlessCheckKernel(t *testing.T) {
	h := fakeHost(t)
	// A kernel without loadable modules and without a config to read:
	// nothing can be said statically (the probe decides).
	expectLines(t, "no module support", h.checkKernel())

	// Loaded as a module (/sys/module, /proc/modules), built in
	// (modules.builtin, config =y), modular but not loaded (=m, or just
	// absent), and missing from the kernel (not set).
	for _, m := range []string{"sch_tbf", "sch_ingress"} {
		if err := os.MkdirAll(filepath.Join(h.sysModule, m), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, h.procModules, "cls_u32 28672 0 - Live 0x0\nact_mirred 24576 0 - Live 0x0\n")
	write(t, h.modulesBuiltin, "kernel/drivers/net/ifb.ko\nkernel/net/bridge/bridge.ko\n")
	writeKernelConfig(t, h.kernelConfig, "CONFIG_VETH=y", "CONFIG_OVERLAY_FS=m", "# CONFIG_TUN is not set")
	expectLines(t, "mixed", h.checkKernel(),
		[]string{"built without tun", "CONFIG_TUN is not set"},
		[]string{"overlay is not loaded", "sudo modprobe overlay", "/etc/modules-load.d/peapod.conf"})

	// An old kernel: overlayfs in a user namespace needs 5.11.
	h.release = "5.10.0-30-amd64"
	writeKernelConfig(t, h.kernelConfig, "CONFIG_VETH=y", "CONFIG_OVERLAY_FS=y", "CONFIG_TUN=y")
	expectLines(t, "old kernel", h.checkKernel(), []string{"kernel 5.10.0-30-amd64 is older than 5.11"})

	// Modules named with dashes in /proc/modules match underscores.
	h.release = "6.18.0"
	if err := os.Remove(filepath.Join(h.sysModule, "sch_tbf")); err != nil {
		t.Fatal(err)
	}
	write(t, h.procModules, "sch-tbf 1 0 - Live 0x0\ncls_u32 28672 0 - Live 0x0\nact_mirred 24576 0 - Live 0x0\n")
	expectLines(t, "dashes", h.checkKernel())
	// No config, module support present, nothing loaded: modprobe each.
	if err := os.Remove(h.kernelConfig); err != nil {
		t.Fatal(err)
	}
	write(t, h.procModules, "")
	write(t, h.modulesBuiltin, "")
	if err := os.RemoveAll(h.sysModule); err != nil {
		t.Fatal(err)
	}
	got := h.checkKernel()
	if len(got) != len(rootlessModules) {
		t.Fatalf("nothing loaded: got %d lines, want %d:\n%s", len(got), len(rootlessModules), strings.Join(got, "\n"))
	}
	for i, m := range rootlessModules {
		if !strings.Contains(got[i], "sudo modprobe "+m.name+" ") {
			t.Errorf("line %q lacks sudo modprobe %s", got[i], m.name)
		}
	}
}

func TestParseRelease(t *testing.T) {
	for in, want := range map[string][2]int{"6.1.0-28-amd64": {6, 1}, "5.11": {5, 11}, "6.18.44-fc-v669": {6, 18}, "4.19rc1": {4, 19}} {
		ma, mi, ok := parseRelease(in)
		if !ok || ma != want[0] || mi != want[1] {
			t.Errorf("%s: got %d.%d %v", in, ma, mi, ok)
		}
	}
	if _, _, ok := parseRelease("x"); ok {
		t.Error("parseRelease(x) ok")
	}
}

func TestRootlessCheckNetHelper(t *testing.T) {
	h := fakeHost(t)
	have := map[string]bool{}
	h.lookPath = func(n string) (string, error) {
		if have[n] {
			return "/usr/bin/" + n, nil
		}
		return "", exec.ErrNotFound
	}
	expectLines(t, "none", h.checkNetHelper("auto"), []string{"sudo apt-get install slirp4netns (or passt)"})
	expectLines(t, "no pasta", h.checkNetHelper("pasta"), []string{"--rootless-net=pasta", "sudo apt-get install passt"})
	have["pasta"] = true
	expectLines(t, "pasta for auto", h.checkNetHelper("auto"))
	expectLines(t, "pasta", h.checkNetHelper("pasta"))
	expectLines(t, "no slirp4netns", h.checkNetHelper("slirp4netns"), []string{"sudo apt-get install slirp4netns"})
}

func TestRootlessCheckTun(t *testing.T) {
	h := fakeHost(t)
	expectLines(t, "no device", h.checkTun(), []string{"sudo modprobe tun"})
	write(t, h.tun, "")
	h.access = func(string, uint32) error { return syscall.EACCES }
	expectLines(t, "no access, no setfacl", h.checkTun(),
		[]string{"not readable and writable by alice", "sudo apt-get install acl && sudo setfacl -m u:alice:rw " + h.tun})
	h.lookPath = func(n string) (string, error) { return "/usr/bin/" + n, nil }
	expectLines(t, "no access", h.checkTun(), []string{": sudo setfacl -m u:alice:rw " + h.tun})
	var asked uint32
	h.access = func(_ string, mode uint32) error { asked = mode; return nil }
	expectLines(t, "access", h.checkTun())
	if asked != unix.R_OK|unix.W_OK {
		t.Errorf("access asked for mode %o, want read and write", asked)
	}
}

// fakeV1 writes a mountinfo with the given v1 hierarchies (plus a hybrid
// cgroup2 mount) under root and makes their directories.
func fakeV1(t *testing.T, h *hostView, root string, hierarchies ...string) {
	t.Helper()
	var mi strings.Builder
	fmt.Fprintf(&mi, "31 23 0:28 / %s rw,relatime - tmpfs tmpfs rw,mode=755\n", root)
	for i, hi := range hierarchies {
		opts := "rw," + hi
		dir := hi
		if n, ok := strings.CutPrefix(hi, "name="); ok {
			dir = n
			opts = "rw,xattr," + hi
		}
		fmt.Fprintf(&mi, "%d 31 0:%d / %s rw,nosuid - cgroup cgroup %s\n", 32+i, 29+i, filepath.Join(root, dir), opts)
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Fprintf(&mi, "99 31 0:99 / %s rw - cgroup2 cgroup2 rw\n", filepath.Join(root, "unified"))
	write(t, h.mountinfo, mi.String())
}

// delegate makes the user's subtree in a fake hierarchy, the way root's
// script does (files created here stand for the kernel's).
func delegate(t *testing.T, dir string, uid int, files ...string) {
	t.Helper()
	for _, f := range append([]string{"cgroup.procs"}, files...) {
		write(t, filepath.Join(dir, f), "")
	}
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			err = os.Lchown(p, uid, uid)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

func TestRootlessCheckCgroupV1(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chowns the fake cgroup directories to another uid")
	}
	h := fakeHost(t)
	root := t.TempDir()
	all := []string{"cpu,cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "name=systemd"}
	fakeV1(t, h, root, all...)
	mounts, err := h.cgroupMounts()
	if err != nil || len(mounts) != len(all)+1 || mounts[0].names[0] != "cpu" || mounts[0].names[1] != "cpuacct" ||
		mounts[6].names[0] != "name=systemd" || len(mounts[6].names) != 1 || !mounts[7].v2 {
		t.Fatalf("mounts: %+v, %v", mounts, err)
	}

	// Nothing delegated: one line with the fix spelled out.
	p, n := h.checkCgroups()
	cpuset := filepath.Join(root, "cpuset")
	expectLines(t, "none", p, []string{"cgroup v1: no subtree delegated to alice",
		filepath.Join(root, "cpu,cpuacct/peapod-alice") + " is missing",
		"pods run without accounting",
		"sudo sh -c 'mkdir -p " + filepath.Join(root, "cpu,cpuacct/peapod-alice"),
		"cat " + cpuset + "/cpuset.cpus > " + cpuset + "/peapod-alice/cpuset.cpus",
		"chown -R alice: " + filepath.Join(root, "systemd/peapod-alice") + "'"})
	expectLines(t, "none notes", n)
	h.delegateScript = "/src/peapod/integration/rootless-delegate.sh"
	p, _ = h.checkCgroups()
	expectLines(t, "script", p, []string{"no subtree delegated", ": sudo /src/peapod/integration/rootless-delegate.sh alice"})

	// Delegated everywhere but one hierarchy left to root.
	for _, d := range []string{"cpu,cpuacct", "cpuset", "memory", "pids", "devices", "freezer", "systemd"} {
		sub := filepath.Join(root, d, "peapod-alice")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		delegate(t, sub, testUID)
	}
	if err := os.Chown(filepath.Join(root, "memory/peapod-alice"), 0, 0); err != nil {
		t.Fatal(err)
	}
	p, _ = h.checkCgroups()
	expectLines(t, "one root's", p, []string{"memory/peapod-alice belongs to uid 0"})
	if err := os.Chown(filepath.Join(root, "memory/peapod-alice"), testUID, testGID); err != nil {
		t.Fatal(err)
	}
	p, _ = h.checkCgroups()
	expectLines(t, "all", p)

	// An empty cpuset keeps tasks out.
	write(t, filepath.Join(cpuset, "cpuset.cpus"), "0-1\n")
	write(t, filepath.Join(cpuset, "peapod-alice/cpuset.cpus"), "\n")
	write(t, filepath.Join(cpuset, "peapod-alice/cpuset.mems"), "0\n")
	p, _ = h.checkCgroups()
	expectLines(t, "empty cpuset", p, []string{"peapod-alice/cpuset.cpus is empty", "sudo sh -c 'cat " + cpuset + "/cpuset.cpus > "})

	// A required controller not mounted at all.
	write(t, filepath.Join(cpuset, "peapod-alice/cpuset.cpus"), "0-1\n")
	fakeV1(t, h, root, "cpu,cpuacct", "cpuset", "memory", "devices", "freezer")
	p, _ = h.checkCgroups()
	expectLines(t, "no pids", p, []string{"controller pids is not mounted", "mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids"})
}

func TestRootlessCheckCgroupV2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chowns the fake cgroup directories to another uid")
	}
	h := fakeHost(t)
	root := t.TempDir()
	write(t, h.mountinfo, fmt.Sprintf("30 23 0:27 / %s rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n", root))
	write(t, h.procCgroup, "0::/user.slice/user-4242.slice/session-3.scope\n")

	p, n := h.checkCgroups()
	expectLines(t, "no user manager", p, []string{"cgroup v2: no cgroup delegated to alice",
		"user@4242.service is missing", "peapod-alice is missing",
		"sudo loginctl enable-linger alice and sudo mkdir -p /etc/systemd/system/user@.service.d"})
	expectLines(t, "no user manager notes", n)

	// systemd's user manager without Delegate: only memory and pids.
	service := filepath.Join(root, "user.slice/user-4242.slice/user@4242.service")
	write(t, filepath.Join(service, "cgroup.controllers"), "memory pids\n")
	delegate(t, service, testUID)
	p, _ = h.checkCgroups()
	expectLines(t, "no cpu", p, []string{"user@4242.service lacks the cpu controllers", "Delegate=cpu cpuset io memory pids"})

	// Delegated, but this process is in a login session: a note.
	write(t, filepath.Join(service, "cgroup.controllers"), "cpuset cpu io memory pids\n")
	p, n = h.checkCgroups()
	expectLines(t, "session", p)
	expectLines(t, "session notes", n, []string{"session-3.scope, outside /user.slice/user-4242.slice/user@4242.service", "systemctl --user start peapod"})

	// In the user manager's unit: fine.
	write(t, h.procCgroup, "0::/user.slice/user-4242.slice/user@4242.service/app.slice/peapod.service\n")
	p, n = h.checkCgroups()
	expectLines(t, "unit", p)
	expectLines(t, "unit notes", n)

	// The subtree made by rootless-delegate.sh counts as well.
	if err := os.RemoveAll(filepath.Join(root, "user.slice")); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(root, "peapod-alice")
	write(t, filepath.Join(sub, "cgroup.controllers"), "cpu memory pids\n")
	delegate(t, sub, testUID, "cgroup.subtree_control")
	if err := os.Chown(filepath.Join(sub, "cgroup.controllers"), 0, 0); err != nil {
		t.Fatal(err) // root's in the kernel's layout too; not needed
	}
	write(t, h.procCgroup, "0::/peapod-alice/daemon\n")
	p, n = h.checkCgroups()
	expectLines(t, "subtree", p)
	expectLines(t, "subtree notes", n)
	write(t, h.procCgroup, "0::/user.slice/user-4242.slice/session-3.scope\n")
	p, n = h.checkCgroups()
	expectLines(t, "outside subtree", p)
	expectLines(t, "outside subtree notes", n, []string{"outside the subtree /peapod-alice", "echo PID > " + sub + "/cgroup.procs"})
	// ... but not when the user cannot write its cgroup.procs.
	if err := os.Chown(filepath.Join(sub, "cgroup.subtree_control"), 0, 0); err != nil {
		t.Fatal(err)
	}
	p, _ = h.checkCgroups()
	expectLines(t, "subtree_control root's", p, []string{"peapod-alice/cgroup.subtree_control is not alice's"})
}

func TestCgroupMountsEscapes(t *testing.T) {
	h := fakeHost(t)
	write(t, h.mountinfo, `40 31 0:37 / /sys/fs/cgroup/my\040cg rw,relatime shared:5 - cgroup cgroup rw,xattr,clone_children,release_agent=/x,cpu,cpuacct
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
`)
	m, err := h.cgroupMounts()
	if err != nil || len(m) != 2 || m[0].dir != "/sys/fs/cgroup/my cg" || strings.Join(m[0].names, ",") != "cpu,cpuacct" || !m[1].v2 {
		t.Fatalf("got %+v, %v", m, err)
	}
}

func TestRootlessCheckPaths(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chowns the fake state dir to another uid")
	}
	h := fakeHost(t)
	d := t.TempDir()
	cfg := &config{State: filepath.Join(d, "peapod-4242")}
	expectLines(t, "none yet", h.checkPaths(cfg))
	if err := os.Mkdir(cfg.State, 0o700); err != nil {
		t.Fatal(err)
	}
	expectLines(t, "root's", h.checkPaths(cfg), []string{"belongs to uid 0, not to alice", "sudo rm -rf " + cfg.State})
	if err := os.Chown(cfg.State, testUID, testGID); err != nil {
		t.Fatal(err)
	}
	expectLines(t, "own", h.checkPaths(cfg))
	if err := os.Chmod(cfg.State, 0o777); err != nil {
		t.Fatal(err)
	}
	expectLines(t, "open", h.checkPaths(cfg), []string{"writable by others (mode 777)", "chmod 0700"})
	if err := os.Chmod(cfg.State, 0o700); err != nil {
		t.Fatal(err)
	}
	h.getenv = func(k string) string {
		if k == "XDG_RUNTIME_DIR" {
			return filepath.Join(d, "run/user/4242")
		}
		return ""
	}
	expectLines(t, "no runtime dir", h.checkPaths(cfg), []string{"XDG_RUNTIME_DIR=" + filepath.Join(d, "run/user/4242") + " does not exist"})
}
