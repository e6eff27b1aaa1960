package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// leakChecks say, after cleanup, what of the bench's is still on the host.
// Each check looks for things only this run can have made (its directory,
// its network names, its sandboxes' cgroups), never at what other users of
// the host made meanwhile.
type leakChecks struct {
	mu     sync.Mutex
	checks []func() []string
}

func (l *leakChecks) add(check func() []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checks = append(l.checks, check)
}

func (l *leakChecks) run() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var left []string
	for _, c := range l.checks {
		left = append(left, c()...)
	}
	return left
}

// baseLeaks finds the run's directory, mounts beneath it, and processes
// started from it or pointed at it (daemons, pause copies, shims).
func baseLeaks(base string) func() []string {
	return func() []string {
		var left []string
		if _, err := os.Stat(base); err == nil {
			left = append(left, "directory "+base)
		}
		if mps, _ := mountPointsUnder(base); len(mps) > 0 {
			left = append(left, fmt.Sprintf("%d mounts under %s", len(mps), base))
		}
		procs, _ := scanProcs()
		for _, p := range procs {
			if p.pid == os.Getpid() {
				continue
			}
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
			if strings.HasPrefix(exe, base+"/") || strings.Contains(strings.Join(p.argv, " "), base+"/") {
				left = append(left, fmt.Sprintf("process %d (%s)", p.pid, p.name()))
			}
		}
		return left
	}
}

// networkLeaks finds the bridge of a network and iptables rules that the
// CNI plugins marked with its name.
func networkLeaks(name string) func() []string {
	return func() []string {
		var left []string
		if _, err := os.Stat("/sys/class/net/" + name); err == nil {
			left = append(left, "link "+name)
		}
		if n := cniIptablesRules(name); n > 0 {
			left = append(left, fmt.Sprintf("%d iptables rules of network %s", n, name))
		}
		return left
	}
}

// cgroupLeaks finds cgroups (paths relative to the hierarchy roots) and
// the processes still in them.
func cgroupLeaks(paths func() []string) func() []string {
	return func() []string {
		var left []string
		for _, p := range paths() {
			if cgroupExists(p) {
				left = append(left, "cgroup "+p)
			}
		}
		procs, _ := scanProcs()
		for _, pr := range procs {
			for _, p := range paths() {
				if within(pr.memCgroup, p) {
					left = append(left, fmt.Sprintf("process %d (%s) in cgroup %s", pr.pid, pr.name(), filepath.Clean(p)))
					break
				}
			}
		}
		return left
	}
}
