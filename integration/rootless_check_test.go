package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// `peapod check` run by ordinary users on this host, for real: the test
// user that .ci/run set up (subordinate ids, /dev/net/tun, delegated
// cgroups), the same user with one cgroup hierarchy masked in a private
// mount namespace, and nobody, who has none of it.

// checkCopy puts bin/peapod, bin/cni and the delegation script where any
// user can run them (the checkout may sit under /root): dir/bin/peapod
// finds dir/bin/cni and dir/integration/rootless-delegate.sh as it finds
// them in a checkout.
func checkCopy(t *testing.T) (exe, script string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "peapod-rootless-check-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, d := range []string{"bin/cni", "integration"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe = filepath.Join(dir, "bin", "peapod")
	copyExe(t, peapodBin, exe)
	plugins, _ := os.ReadDir(cniBinDir)
	for _, p := range plugins {
		copyExe(t, filepath.Join(cniBinDir, p.Name()), filepath.Join(dir, "bin", "cni", p.Name()))
	}
	src := filepath.Join(filepath.Dir(filepath.Dir(peapodBin)), "integration", "rootless-delegate.sh")
	if _, err := os.Stat(src); err == nil {
		script = filepath.Join(dir, "integration", "rootless-delegate.sh")
		copyExe(t, src, script)
	}
	return exe, script
}

// runCheck runs cmd (peapod check as u) and splits its output.
func runCheck(t *testing.T, cmd *exec.Cmd) (problems, notes []string, ok string, exit int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ee, isExit := err.(*exec.ExitError); isExit {
		exit = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	for line := range strings.SplitSeq(strings.TrimSpace(stdout.String()), "\n") {
		switch {
		case strings.HasPrefix(line, "problem: "):
			problems = append(problems, strings.TrimPrefix(line, "problem: "))
		case strings.HasPrefix(line, "note: "):
			notes = append(notes, strings.TrimPrefix(line, "note: "))
		case strings.HasPrefix(line, "ok: "):
			ok = line
		case line != "":
			t.Errorf("unexpected output line %q", line)
		}
	}
	t.Logf("%s (exit %d):\n%s%s", strings.Join(cmd.Args, " "), exit, stdout.String(), stderr.String())
	return problems, notes, ok, exit
}

// v1Undelegated lists the v1 hierarchies in which name's subtree is not
// delegated to uid (missing, or the directory or its cgroup.procs not
// the user's), read independently of peapod. masked is treated as not
// delegated.
func v1Undelegated(t *testing.T, uid int, name, masked string) (mounts, undelegated []string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup ") {
			continue
		}
		mnt := strings.Fields(pre)[4]
		mounts = append(mounts, mnt)
		dir := filepath.Join(mnt, "peapod-"+name)
		owned := func(p string) bool {
			st, err := os.Stat(p)
			return err == nil && int(st.Sys().(*syscall.Stat_t).Uid) == uid
		}
		if dir == masked || !owned(dir) || !owned(filepath.Join(dir, "cgroup.procs")) {
			undelegated = append(undelegated, dir)
		}
	}
	return mounts, undelegated
}

func asCheckUser(u *rootlessUser, exe string, args ...string) *exec.Cmd {
	cmd := exec.Command(exe, append([]string{"check"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	u.asUser(cmd)
	cmd.Dir = "/"
	return cmd
}

func TestRootlessCheckTestUser(t *testing.T) {
	u := lookupRootlessUser(t)
	exe, script := checkCopy(t)
	mounts, undelegated := v1Undelegated(t, u.UID, u.Name, "")
	if len(mounts) == 0 {
		t.Fatalf("no cgroup v1 hierarchy mounted: this test expects the host's v1 (hybrid) layout")
	}

	problems, notes, ok, exit := runCheck(t, asCheckUser(u, exe))
	// A journal-less ext4 under the user's dirs (this kind of VM) is the
	// host's disk, not its cgroups: that note may come.
	notes = slices.DeleteFunc(notes, func(n string) bool { return strings.Contains(n, "ext4 without a journal") })
	if len(notes) > 0 {
		t.Errorf("notes on a v1 host: %q", notes)
	}
	// Everything else .ci/run set up must pass, the namespace probe
	// included; only the cgroup line depends on the delegation found.
	if len(undelegated) == 0 {
		if len(problems) != 0 || exit != 0 || ok != "ok: "+u.Name+" can run peapod rootless (peapod serve)" {
			t.Fatalf("delegated host: got problems %q, ok %q, exit %d", problems, ok, exit)
		}
	} else {
		t.Logf("the subtree is not delegated in %v: expecting check to say so", undelegated)
		if len(problems) != 1 || exit != 1 || ok != "" {
			t.Fatalf("want only the delegation problem, got %q (exit %d, %q)", problems, exit, ok)
		}
		checkDelegationLine(t, problems[0], u.Name, mounts, undelegated, script)
	}

	// The same with the memory hierarchy's subtree hidden under an empty
	// root-owned directory, in a mount namespace of its own: nothing the
	// host or other tests use changes.
	memory := ""
	for _, m := range mounts {
		if filepath.Base(m) == "memory" {
			memory = filepath.Join(m, "peapod-"+u.Name)
		}
	}
	if memory == "" {
		t.Fatalf("no v1 memory hierarchy in %v", mounts)
	}
	if _, err := os.Stat(memory); err != nil {
		// Only when .ci/run did not delegate: the mask needs a mount point.
		t.Fatalf("%s: %v: run .ci/run's setup (integration/rootless-delegate.sh %s)", memory, err, u.Name)
	}
	empty := t.TempDir()
	_, undelegated = v1Undelegated(t, u.UID, u.Name, memory)
	problems, _, ok, exit = runCheck(t, maskedCheck(u, exe, empty, memory))
	if len(problems) != 1 || exit != 1 || ok != "" {
		t.Fatalf("masked memory hierarchy: want only the delegation problem, got %q (exit %d, %q)", problems, exit, ok)
	}
	checkDelegationLine(t, problems[0], u.Name, mounts, undelegated, script)
	if !strings.Contains(problems[0], memory+" belongs to uid 0") {
		t.Errorf("delegation line does not say %s is root's: %q", memory, problems[0])
	}
}

// maskedCheck runs peapod check as u in a private mount namespace where
// src is bind-mounted over dst: the host and other tests see no change.
func maskedCheck(u *rootlessUser, exe, src, dst string) *exec.Cmd {
	shell := fmt.Sprintf("mount --bind %s %s && exec setpriv --reuid=%d --regid=%d --clear-groups -- %s check",
		src, dst, u.UID, u.GID, exe)
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", shell)
	cmd.Env = []string{"HOME=" + u.Home, "USER=" + u.Name, "LOGNAME=" + u.Name, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir = "/"
	return cmd
}

// A newuidmap that is not setuid: the static check says so, and the
// probe, which really runs it to map its namespace, reports the failure.
func TestRootlessCheckNewuidmapNotSetuid(t *testing.T) {
	u := lookupRootlessUser(t)
	exe, _ := checkCopy(t)
	real, err := exec.LookPath("newuidmap")
	if err != nil {
		t.Fatalf("newuidmap: %v: apt-get install uidmap", err)
	}
	plain := filepath.Join(t.TempDir(), "newuidmap")
	copyExe(t, real, plain) // 0755, no setuid
	problems, _, ok, exit := runCheck(t, maskedCheck(u, exe, plain, real))
	// The cgroup delegation is TestRootlessCheckTestUser's business (and
	// other tests may vary it meanwhile).
	problems = slices.DeleteFunc(problems, func(p string) bool { return strings.HasPrefix(p, "cgroup v1: ") })
	if exit != 1 || ok != "" || len(problems) != 2 {
		t.Fatalf("want 2 problems, got %q (exit %d, %q)", problems, exit, ok)
	}
	if want := real + " is neither setuid root nor given file capabilities"; !strings.HasPrefix(problems[0], want) ||
		!strings.HasSuffix(problems[0], "sudo chown root "+real+" && sudo chmod u+s "+real) {
		t.Errorf("static line %q, want %q... with the chmod fix", problems[0], want)
	}
	if !strings.HasPrefix(problems[1], real+" ") || !strings.Contains(problems[1], " failed: exit status 1") {
		t.Errorf("probe line %q, want %s ... failed", problems[1], real)
	}
}

// With a plain user's PATH (no sbin dirs, as on Debian), peapod still finds
// iptables, which the CNI plugins it runs need: it adds the sbin dirs to
// its own PATH, so check reports no problem about it.
func TestRootlessCheckPathWithoutSbin(t *testing.T) {
	u := lookupRootlessUser(t)
	exe, _ := checkCopy(t)
	iptables, err := exec.LookPath("iptables")
	if err != nil || !strings.Contains(iptables, "sbin/") {
		t.Fatalf("iptables at %q (%v): this test expects it in an sbin dir, as Debian installs it", iptables, err)
	}
	cmd := asCheckUser(u, exe)
	cmd.Env = append(slices.DeleteFunc(cmd.Env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }),
		"PATH=/usr/local/bin:/usr/bin:/bin")
	problems, _, _, _ := runCheck(t, cmd)
	for _, p := range problems {
		if strings.Contains(p, "iptables") {
			t.Errorf("check with a plain user PATH: %q", p)
		}
	}
}

// checkDelegationLine checks the v1 delegation problem: every undelegated
// hierarchy named, no delegated one, and the fix (the delegation script).
func checkDelegationLine(t *testing.T, line, name string, mounts, undelegated []string, script string) {
	t.Helper()
	if !strings.HasPrefix(line, "cgroup v1: no subtree delegated to "+name+" (") {
		t.Errorf("not the delegation line: %q", line)
	}
	for _, m := range mounts {
		dir := filepath.Join(m, "peapod-"+name)
		named := strings.Contains(line, dir+" ") || strings.Contains(line, dir+"/")
		if want := slices.Contains(undelegated, dir); named != want {
			t.Errorf("%s named: %v, want %v, in %q", dir, named, want, line)
		}
	}
	fix := "sudo " + script + " " + name
	if script == "" {
		fix = "sudo sh -c 'mkdir -p "
	}
	if !strings.Contains(line, "pods run without accounting or limits: "+fix) {
		t.Errorf("delegation line lacks the fix %q: %q", fix, line)
	}
}

// nobody has no subordinate ids, no /dev/net/tun access and no delegated
// cgroups: each is reported with its fix. The probe still runs (mapping
// only nobody's own ids) and finds the kernel side in order.
func TestRootlessCheckNobody(t *testing.T) {
	pw, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(pw.Uid)
	gid, _ := strconv.Atoi(pw.Gid)
	// nobody's home (/nonexistent) would be a problem of its own: give
	// it one for the run.
	home, err := os.MkdirTemp("", "peapod-nobody-home-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(home) })
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}
	u := &rootlessUser{Name: pw.Username, UID: uid, GID: gid, Home: home}
	if _, err := os.Stat(filepath.Join("/sys/fs/cgroup/memory", "peapod-nobody")); err == nil {
		t.Fatalf("/sys/fs/cgroup/memory/peapod-nobody exists: this test needs nobody without delegation")
	}
	exe, script := checkCopy(t)
	mounts, undelegated := v1Undelegated(t, uid, u.Name, "")
	problems, _, ok, exit := runCheck(t, asCheckUser(u, exe))
	if exit != 1 || ok != "" || len(problems) != 3 {
		t.Fatalf("want 3 problems, exit 1; got %q (exit %d, %q)", problems, exit, ok)
	}
	// The range check proposes: 100000 + k*65536, clear of every range in
	// /etc/subuid and /etc/subgid.
	var ranges [][2]int
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		data, _ := os.ReadFile(f)
		for line := range strings.SplitSeq(string(data), "\n") {
			if p := strings.Split(line, ":"); len(p) == 3 && !strings.HasPrefix(line, "#") {
				s, _ := strconv.Atoi(p[1])
				c, _ := strconv.Atoi(p[2])
				ranges = append(ranges, [2]int{s, c})
			}
		}
	}
	start := 100000
	for clear := false; !clear; {
		clear = true
		for _, r := range ranges {
			if r[0] < start+65536 && start < r[0]+r[1] {
				start += 65536
				clear = false
			}
		}
	}
	wantSubIDs := fmt.Sprintf("sudo usermod --add-subuids %d-%d --add-subgids %d-%d nobody", start, start+65535, start, start+65535)
	if !strings.HasPrefix(problems[0], "no subordinate id range of 65536 for nobody") || !strings.HasSuffix(problems[0], wantSubIDs) {
		t.Errorf("subid line: %q, want it to end with %q", problems[0], wantSubIDs)
	}
	if !strings.HasPrefix(problems[1], "/dev/net/tun is not readable and writable by nobody") ||
		!strings.Contains(problems[1], "sudo setfacl -m u:nobody:rw /dev/net/tun") {
		t.Errorf("tun line: %q", problems[1])
	}
	checkDelegationLine(t, problems[2], "nobody", mounts, undelegated, script)
	if len(undelegated) != len(mounts) {
		t.Errorf("nobody has delegated hierarchies? %v of %v", undelegated, mounts)
	}
	// The probe's scratch dir (under the root dir or its nearest existing
	// ancestor) is gone.
	_ = filepath.Walk(home, func(p string, _ os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(filepath.Base(p), ".peapod-check-") {
			t.Errorf("probe left %s", p)
		}
		return nil
	})
}
