package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// procInfo is what the bench needs to know about one process.
type procInfo struct {
	pid, ppid int
	argv      []string
	memCgroup string // path in the memory hierarchy (v1), or the v2 path
}

// name is a short, readable kind of process: "pause", "containerd-shim-runc-v2",
// "peapod-shim" (the lean shim binary), or "peapod shim" for a subcommand of
// the whole peapod binary.
func (p *procInfo) name() string {
	if len(p.argv) == 0 {
		return "?"
	}
	n := filepath.Base(p.argv[0])
	if strings.HasPrefix(n, "pause") {
		return "pause"
	}
	if n == "peapod" && len(p.argv) > 1 {
		return n + " " + p.argv[1]
	}
	if strings.HasPrefix(n, "peapod-shim-") { // installed by content hash
		return "peapod-shim"
	}
	return n
}

func scanProcs() (map[int]*procInfo, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	procs := map[int]*procInfo{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProc(pid)
		if err != nil {
			continue // gone meanwhile, or a kernel thread
		}
		procs[pid] = p
	}
	return procs, nil
}

func readProc(pid int) (*procInfo, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse %s/stat", dir)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 {
		return nil, fmt.Errorf("parse %s/stat", dir)
	}
	ppid, _ := strconv.Atoi(f[1])
	p := &procInfo{pid: pid, ppid: ppid}
	if cmd, err := os.ReadFile(dir + "/cmdline"); err == nil && len(cmd) > 0 {
		p.argv = strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
	}
	cg, err := os.ReadFile(dir + "/cgroup")
	if err != nil {
		return nil, err
	}
	var v2 string
	for _, l := range strings.Split(string(cg), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			v2 = parts[2]
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == "memory" {
				p.memCgroup = parts[2]
			}
		}
	}
	if p.memCgroup == "" {
		p.memCgroup = v2
	}
	return p, nil
}

// memUsage is one process's memory from /proc/<pid>/smaps_rollup, in kB.
// Pss charges each shared page to the processes that map it in equal
// parts, so a binary mapped by 20 pause processes counts 1/20 for each;
// PssAnon is the part no other process shares (heap, stacks: for a Go
// program, mostly its runtime), PssFile the binary and libraries.
type memUsage struct {
	rss, pss, pssAnon, pssFile int64
}

func (m *memUsage) addTo(o *memUsage) {
	o.rss += m.rss
	o.pss += m.pss
	o.pssAnon += m.pssAnon
	o.pssFile += m.pssFile
}

func smaps(pid int) (u memUsage, err error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return u, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fields[1], 10, 64)
		switch fields[0] {
		case "Rss:":
			u.rss = v
		case "Pss:":
			u.pss = v
		case "Pss_Anon:":
			u.pssAnon = v
		case "Pss_File:":
			u.pssFile = v
		}
	}
	return u, sc.Err()
}

// podMemory is the memory of the per-pod processes of the running pods.
type podMemory struct {
	pods   int
	rssKB  []int64 // per pod
	pssKB  []int64 // per pod
	kinds  map[string]*kindMemory
	daemon memUsage // the daemon itself (not per pod), for context
}

type kindMemory struct {
	procs int
	memUsage
}

func (m *podMemory) meanRSS() float64 { return meanKB(m.rssKB) }
func (m *podMemory) meanPSS() float64 { return meanKB(m.pssKB) }

func meanKB(v []int64) float64 {
	if len(v) == 0 {
		return 0
	}
	var s int64
	for _, x := range v {
		s += x
	}
	return float64(s) / float64(len(v))
}

// composition says which processes make up a pod, e.g. "shim + pause".
func (m *podMemory) composition() string {
	var parts []string
	for _, k := range m.kindNames() {
		n := m.kinds[k].procs
		if n == m.pods {
			parts = append(parts, k)
		} else {
			parts = append(parts, fmt.Sprintf("%s (%d for %d pods)", k, n, m.pods))
		}
	}
	return strings.Join(parts, " + ")
}

// kindNames orders process kinds with pause last, as in a process tree.
func (m *podMemory) kindNames() []string {
	var names []string
	for k := range m.kinds {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == "pause") != (names[j] == "pause") {
			return names[j] == "pause"
		}
		return names[i] < names[j]
	})
	return names
}

// measurePodMemory finds the per-pod processes of each sandbox and sums
// their Rss and Pss. A process belongs to a pod when it is
//   - the pause (the `pid` of PodSandboxStatus verbose info),
//   - in the pod's cgroup or beneath it (a per-pod shim placed there),
//   - the pause's parent, unless that is the daemon or init (a shim that
//     is the pod's subreaper: containerd-shim-runc-v2, peapod's shim), or
//   - named by the runtime's own rule (containerd: the shim whose
//     command line carries `-id <sandbox id>`).
func measurePodMemory(ctx context.Context, t *target, ids []string) (*podMemory, error) {
	procs, err := scanProcs()
	if err != nil {
		return nil, err
	}
	daemon := procs[t.daemon.pid()]
	m := &podMemory{pods: len(ids), kinds: map[string]*kindMemory{}}
	for _, id := range ids {
		v, err := t.cri.verbose(ctx, id)
		if err != nil {
			return nil, err
		}
		pause := procs[v.PID]
		if v.PID <= 0 || pause == nil {
			return nil, fmt.Errorf("sandbox %s: pause pid %d from verbose status is not a running process", id, v.PID)
		}
		members := map[int]*procInfo{pause.pid: pause}
		podCg := pause.memCgroup
		if v.Cgroup != nil && v.Cgroup.PodPath != "" {
			podCg = v.Cgroup.PodPath
		}
		// A pod without a cgroup of its own would "contain" the daemon, and
		// everything else in the daemon's cgroup: then cgroups say nothing.
		if daemon != nil && podCg != "/" && podCg != "" && !within(daemon.memCgroup, podCg) {
			for _, p := range procs {
				if within(p.memCgroup, podCg) {
					members[p.pid] = p
				}
			}
		}
		if pp := procs[pause.ppid]; pp != nil && pp.pid != 1 && pp.pid != t.daemon.pid() {
			members[pp.pid] = pp
		}
		if t.extraPodProcs != nil {
			for _, p := range t.extraPodProcs(id, procs) {
				members[p.pid] = p
			}
		}
		var pod memUsage
		for _, p := range members {
			u, err := smaps(p.pid)
			if err != nil {
				return nil, fmt.Errorf("read memory of pid %d (%s): %w", p.pid, p.name(), err)
			}
			u.addTo(&pod)
			k := m.kinds[p.name()]
			if k == nil {
				k = &kindMemory{}
				m.kinds[p.name()] = k
			}
			k.procs++
			u.addTo(&k.memUsage)
		}
		m.rssKB = append(m.rssKB, pod.rss)
		m.pssKB = append(m.pssKB, pod.pss)
	}
	m.daemon, _ = smaps(t.daemon.pid())
	return m, nil
}

// within says whether cgroup path p is dir or lies beneath it.
func within(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}
