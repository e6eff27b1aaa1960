package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"peapod/internal/mountinfo"
)

// cleanups is a stack of undo steps. Everything the bench creates on the host
// registers its undo here right after it exists, so that a normal end, an
// error half-way or a Ctrl-C all unwind the same way, newest first.
type cleanups struct {
	mu    sync.Mutex
	steps []cleanupStep
	done  bool
}

type cleanupStep struct {
	what string
	fn   func() error
}

func (c *cleanups) add(what string, fn func() error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.steps = append(c.steps, cleanupStep{what, fn})
}

// run undoes every step once, newest first, and reports the ones that failed.
// A failed step does not stop the others: each one is best effort on its own.
func (c *cleanups) run() (failed []string) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		return nil
	}
	c.done = true
	steps := c.steps
	c.steps = nil
	c.mu.Unlock()
	for i := len(steps) - 1; i >= 0; i-- {
		s := steps[i]
		err := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic: %v", r)
				}
			}()
			return s.fn()
		}()
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", s.what, err))
		}
	}
	return failed
}

// daemonProcess is a daemon the bench started, in its own process group so
// that a Ctrl-C on the terminal reaches only the bench: the bench then
// removes the pods first and stops the daemon last.
type daemonProcess struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{}
	exitErr error
}

func startDaemonProcess(name, logPath, bin string, args ...string) (*daemonProcess, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemonProcess{name: name, cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		d.exitErr = cmd.Wait()
		close(d.exited)
	}()
	return d, nil
}

func (d *daemonProcess) pid() int { return d.cmd.Process.Pid }

func (d *daemonProcess) alive() bool {
	select {
	case <-d.exited:
		return false
	default:
		return true
	}
}

// stop asks the daemon to exit and kills it if it has not within grace.
func (d *daemonProcess) stop(grace time.Duration) error {
	if !d.alive() {
		return nil
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return nil
	case <-time.After(grace):
	}
	_ = d.cmd.Process.Kill()
	<-d.exited
	return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", d.name, grace)
}

// logTail is the end of the daemon's log, for error messages.
func (d *daemonProcess) logTail(lines int) string {
	b, _ := os.ReadFile(d.logPath)
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// killProcesses SIGKILLs every process for which match says yes and waits a
// little for them to go. It is the last resort for pods a dead daemon left.
func killProcesses(match func(p *procInfo) bool) (killed []int) {
	procs, _ := scanProcs()
	for _, p := range procs {
		if p.pid != os.Getpid() && match(p) {
			if unix.Kill(p.pid, unix.SIGKILL) == nil {
				killed = append(killed, p.pid)
			}
		}
	}
	deadline := time.Now().Add(3 * time.Second)
	for _, pid := range killed {
		for time.Now().Before(deadline) && unix.Kill(pid, 0) == nil && !isZombie(pid) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	sort.Ints(killed)
	return killed
}

func isZombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && len(b) > i+2 && b[i+2] == 'Z'
}

// removeUnmounted detaches every mount point under dir, then removes dir,
// unless something stays mounted there: RemoveAll crosses mount points,
// and must never get into a bind mount.
func removeUnmounted(dir string) error {
	if err := unmountUnder(dir); err != nil {
		return err
	}
	if left, err := mountPointsUnder(dir); err != nil || len(left) > 0 {
		return fmt.Errorf("kept %s: still mounted beneath it: %v %v", dir, left, err)
	}
	return os.RemoveAll(dir)
}

// unmountUnder detaches every mount point under dir, deepest first: pinned
// namespaces, pod /dev/shm, overlay rootfs, network namespaces.
func unmountUnder(dir string) error {
	var errs []error
	for range 3 { // a detach can uncover a mount beneath it
		points, err := mountPointsUnder(dir)
		if err != nil {
			return err
		}
		if len(points) == 0 {
			break
		}
		for i := len(points) - 1; i >= 0; i-- {
			if err := unix.Unmount(points[i], unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", points[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

func mountPointsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := mountinfo.Unescape(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			points = append(points, mp)
		}
	}
	return points, sc.Err()
}

// removeCgroupTree removes the cgroup at path (relative to each hierarchy's
// root) and everything beneath it, in every mounted hierarchy, bottom up. It
// only succeeds for cgroups without processes, which is the point: it is for
// directories a runtime left empty behind.
func removeCgroupTree(path string) error {
	path = filepath.Clean("/" + path)
	if path == "/" {
		return fmt.Errorf("refusing to remove the root cgroup")
	}
	var errs []error
	for _, mnt := range cgroupMounts() {
		dir := filepath.Join(mnt, path)
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		var dirs []string
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupExists says whether path exists in any cgroup hierarchy.
func cgroupExists(path string) bool {
	for _, mnt := range cgroupMounts() {
		if _, err := os.Stat(filepath.Join(mnt, path)); err == nil {
			return true
		}
	}
	return false
}

// cgroupMounts lists the mount points of every cgroup hierarchy (v1 and v2).
func cgroupMounts() []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		if !ok {
			continue
		}
		fs := strings.Fields(post)
		f := strings.Fields(pre)
		if len(fs) > 0 && len(f) >= 5 && (fs[0] == "cgroup" || fs[0] == "cgroup2") {
			out = append(out, mountinfo.Unescape(f[4]))
		}
	}
	return out
}

// deleteLink removes a network device by name; a missing one is fine.
func deleteLink(name string) error {
	if _, err := os.Stat("/sys/class/net/" + name); err != nil {
		return nil
	}
	out, err := exec.Command("ip", "link", "del", name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip link del %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// removeCNIIptables deletes the iptables rules the CNI plugins of network
// made and that a CNI DEL did not (because a daemon died before it could
// call it). The bridge plugin marks every ipMasq rule with the comment
// `name: "<network>" id: "<container>"`, and portmap does the same for its
// per-pod chains, so the network's name picks out exactly ours. peapod's
// embedded network masquerades with one chain of its own, whose jump has
// the comment `peapod network <network>`. Rules in the built-in chains are
// deleted, then the chains they jump to.
func removeCNIIptables(network string) error {
	var errs []error
	for _, table := range []string{"nat", "filter"} {
		out, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			return fmt.Errorf("iptables-save -t %s: %w", table, err)
		}
		chains := map[string]bool{}
		for _, line := range strings.Split(string(out), "\n") {
			if !strings.HasPrefix(line, "-A ") || !marksNetwork(line, network) {
				continue
			}
			args := splitIptablesLine(line)
			chain := args[1]
			for i, a := range args {
				if (a == "-j" || a == "-g") && i+1 < len(args) && ownChain(args[i+1]) {
					chains[args[i+1]] = true
				}
			}
			if ownChain(chain) {
				chains[chain] = true
				continue
			}
			args[0] = "-D"
			if o, err := exec.Command("iptables", append([]string{"-w", "-t", table}, args...)...).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("iptables -t %s %s: %v: %s", table, strings.Join(args, " "), err, strings.TrimSpace(string(o))))
			}
		}
		for chain := range chains {
			// Shared chains (CNI-HOSTPORT-*) are only emptied of our rules.
			if strings.HasPrefix(chain, "CNI-HOSTPORT-") {
				continue
			}
			_ = exec.Command("iptables", "-w", "-t", table, "-F", chain).Run()
			if o, err := exec.Command("iptables", "-w", "-t", table, "-X", chain).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("iptables -t %s -X %s: %v: %s", table, chain, err, strings.TrimSpace(string(o))))
			}
		}
	}
	return errors.Join(errs...)
}

// marksNetwork says whether an iptables-save line carries network's
// comment: the CNI plugins' or peapod's masquerade jump.
func marksNetwork(line, network string) bool {
	return strings.Contains(line, `name: \"`+network+`\"`) || strings.Contains(line, `"peapod network `+network+`"`)
}

// ownChain says whether a chain is one the plugins or peapod make.
func ownChain(chain string) bool {
	return strings.HasPrefix(chain, "CNI-") || strings.HasPrefix(chain, "PEAPOD-MASQ-")
}

// cniIptablesRules counts the rules still marked with network's name.
func cniIptablesRules(network string) int {
	n := 0
	for _, table := range []string{"nat", "filter"} {
		out, _ := exec.Command("iptables-save", "-t", table).Output()
		for _, line := range strings.Split(string(out), "\n") {
			if marksNetwork(line, network) {
				n++
			}
		}
	}
	return n
}

// splitIptablesLine splits an iptables-save rule into arguments the way a
// shell would: double quotes group, backslash escapes inside them.
func splitIptablesLine(line string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			have = true
		case c == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}

// sysctlRestorer puts a host sysctl back to the value it had before the run.
// The bridge plugin turns net.ipv4.ip_forward on for isGateway networks.
func sysctlRestorer(path string) func() error {
	before, err := os.ReadFile(path)
	if err != nil {
		return func() error { return nil }
	}
	return func() error {
		now, err := os.ReadFile(path)
		if err != nil || string(now) == string(before) {
			return nil
		}
		return os.WriteFile(path, before, 0o644)
	}
}
