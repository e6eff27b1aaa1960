package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The rootless suite runs peapod as an ordinary user. .ci/run creates that
// user (peapod-test) with subordinate ids, /dev/net/tun access and a
// delegated cgroup subtree; PEAPOD_ROOTLESS_USER names another.
var rootlessUserName = envOr("PEAPOD_ROOTLESS_USER", "peapod-test")

type rootlessUser struct {
	Name     string
	UID, GID int
	Home     string
}

func lookupRootlessUser(t testing.TB) *rootlessUser {
	t.Helper()
	u, err := user.Lookup(rootlessUserName)
	if err != nil {
		t.Fatalf("rootless test user %q: %v: create it as .ci/run does (useradd, usermod --add-subuids, setfacl on /dev/net/tun, integration/rootless-delegate.sh)", rootlessUserName, err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &rootlessUser{Name: u.Username, UID: uid, GID: gid, Home: u.HomeDir}
}

// withRootless runs the instance as the rootless test user: the binaries
// are copied where that user can run them (a checkout under /root is not
// reachable for it), the instance's dirs are given to it, and the daemon
// is started with its credentials.
func withRootless() daemonOpt {
	return func(d *daemon) {
		d.user = lookupRootlessUser(d.t)
		bin := filepath.Join(d.base, "bin")
		if err := os.MkdirAll(filepath.Join(bin, "cni"), 0o755); err != nil {
			d.t.Fatal(err)
		}
		copyExe(d.t, peapodBin, filepath.Join(bin, "peapod"))
		plugins, _ := os.ReadDir(cniBinDir)
		for _, p := range plugins {
			copyExe(d.t, filepath.Join(cniBinDir, p.Name()), filepath.Join(bin, "cni", p.Name()))
		}
		d.exe = filepath.Join(bin, "peapod")
		d.BinDirs = filepath.Join(bin, "cni")
		for _, dir := range []string{d.Root, d.State, d.ConfDir} {
			if err := os.MkdirAll(dir, 0o700); err != nil {
				d.t.Fatal(err)
			}
		}
		// The user needs to traverse the base dir and own what is in it.
		_ = filepath.Walk(d.base, func(p string, _ os.FileInfo, err error) error {
			if err == nil {
				err = os.Lchown(p, d.user.UID, d.user.GID)
			}
			return err
		})
	}
}

func copyExe(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// asUser makes cmd run with the rootless user's credentials and a minimal
// login environment.
func (u *rootlessUser) asUser(cmd *exec.Cmd) {
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(u.UID), Gid: uint32(u.GID), Groups: []uint32{}}
	cmd.Env = []string{
		"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name,
		// An ordinary Debian user's PATH, without the sbin dirs:
		// peapod must find iptables for the CNI plugins by itself.
		"PATH=/usr/local/bin:/usr/bin:/bin",
	}
}

// holder reads the rootless instance's holder record: the process that
// keeps the user, mount and network namespaces.
func (d *daemon) holder(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(d.State, "rootless", "holder.json"))
	if err != nil {
		t.Fatalf("holder record: %v", err)
	}
	var rec struct {
		Holder struct {
			PID int `json:"pid"`
		} `json:"holder"`
	}
	if err := json.Unmarshal(b, &rec); err != nil || rec.Holder.PID == 0 {
		t.Fatalf("holder record %s: %v", b, err)
	}
	return rec.Holder.PID
}

// hostCmd runs a command where the instance's network lives: the host
// for a root instance, the holder's network namespace for a rootless one.
func (d *daemon) hostCmd(t testing.TB, name string, args ...string) *exec.Cmd {
	if d.user == nil {
		return exec.Command(name, args...)
	}
	return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(d.holder(t)), "-n", "--", name}, args...)...)
}

// podNetCmd runs a command in a pod's network namespace, given its pin.
// A rootless instance's pins are mounts in the holder's mount namespace.
func (d *daemon) podNetCmd(t testing.TB, pin string, args ...string) *exec.Cmd {
	if d.user == nil {
		return nsenterNet(pin, args...)
	}
	return exec.Command("nsenter", append([]string{"-t", strconv.Itoa(d.holder(t)), "-m", "--", "nsenter", "--net=" + pin, "--"}, args...)...)
}

// mountinfo is the mount table the instance's mounts live in.
func (d *daemon) mountinfo(t testing.TB) string {
	path := "/proc/self/mountinfo"
	if d.user != nil {
		path = fmt.Sprintf("/proc/%d/mountinfo", d.holder(t))
	}
	b, _ := os.ReadFile(path)
	return string(b)
}

// innerDaemon finds the rootless daemon: the parent's child that runs
// `peapod serve` inside the namespaces.
func (d *daemon) innerDaemon() int {
	if d.cmd == nil || d.cmd.Process == nil {
		return 0
	}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 2 && f[1] == strconv.Itoa(d.cmd.Process.Pid) {
			dir := filepath.Dir(s)
			if exe, _ := os.Readlink(filepath.Join(dir, "exe")); exe == d.exe {
				pid, _ := strconv.Atoi(filepath.Base(dir))
				return pid
			}
		}
	}
	return 0
}

// hostOut is run's twin for hostCmd.
func (d *daemon) hostOut(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := d.hostCmd(t, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// withRootlessRegistry points a rootless instance at reg. The registry
// listens on the host's 127.0.0.1, which the daemon reaches through its
// network helper's gateway (10.0.2.2 with slirp4netns) once host loopback
// is allowed. Apply it before withRootless, which hands the dir over.
func withRootlessRegistry(reg *testRegistry) daemonOpt {
	return withRootlessRegistryVia(reg, "slirp4netns", "10.0.2.2")
}

// withRootlessRegistryVia is withRootlessRegistry with network helper net,
// whose gateway address gw leads to the host's loopback.
func withRootlessRegistryVia(reg *testRegistry, net, gw string) daemonOpt {
	return func(d *daemon) {
		_, port, _ := strings.Cut(reg.Host, ":")
		server := "http://" + gw + ":" + port
		dir := filepath.Join(d.base, "certs.d")
		if err := os.MkdirAll(filepath.Join(dir, "_default"), 0o755); err != nil {
			d.t.Fatal(err)
		}
		hosts := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", server, server)
		if err := os.WriteFile(filepath.Join(dir, "_default", "hosts.toml"), []byte(hosts), 0o644); err != nil {
			d.t.Fatal(err)
		}
		d.Extra = append(d.Extra, "--registry-config-dir", dir, "--rootless-host-loopback", "--rootless-net", net)
	}
}
