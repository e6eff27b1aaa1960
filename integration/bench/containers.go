package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/internal/procmask"
)

// The container section: what a pod with one busybox container costs on
// each runtime, measured on the same private instance as the sandbox
// lifecycle, with the same PodSandboxConfigs, CNI chain and images.
//
//   - start: RunPodSandbox, CreateContainer and StartContainer, one pod at
//     a time as a kubelet starts a pod; the sum of the three calls' times.
//     The container is `sleep 3600`, its image given by the ID PullImage
//     returned, with the masked and read-only paths of the default
//     procMount (as a kubelet sends both).
//   - teardown: StopContainer (timeout 0: SIGKILL at once, since `sleep` is
//     the init of its pid namespace and ignores SIGTERM), RemoveContainer,
//     StopPodSandbox and RemovePodSandbox, one pod at a time.
//   - memory: with -running pods up, the RSS and PSS of each pod's
//     processes (see measureContainerPods); the container process is
//     reported on its own, so that what the runtime adds is visible.
//   - pull: PullImage of a 5-layer image, after RemoveImage each time.
const ctrName = "sleep"

var ctrCommand = []string{"sleep", "3600"}

// containerResult is one runtime's figures for the container section.
type containerResult struct {
	image string // registry the images came from

	startSeries                 // paired.go: up, run, create, start
	down, stopC, removeC        []time.Duration
	stopP, removeP              []time.Duration
	mem                         *ctrMemory
	busyboxPull                 time.Duration
	firstPull                   time.Duration
	pulls                       []time.Duration
	imageSizeBusybox, imageSize uint64 // as ImageStatus reports them
}

// benchContainers runs the container section against a started runtime.
func benchContainers(ctx context.Context, env *benchEnv, t *target, namer *podNamer, opts options, cl *cleanups) (*containerResult, error) {
	reg, err := startBenchRegistry(cl)
	if err != nil {
		return nil, err
	}
	res := &containerResult{image: reg.host}
	w := watchContainers(env, t, cl)

	// Pulls first, while nothing else runs.
	progress(t.name, "PullImage of the busybox image and %d× of a 5-layer image (RemoveImage before each)", opts.pulls+1)
	bbRef := reg.ref(busyboxRepo)
	bbID, d, err := timedPull(ctx, t.cri, bbRef)
	if err != nil {
		return nil, err
	}
	res.busyboxPull = d
	res.imageSizeBusybox = imageSize(ctx, t.cri, bbID)
	l5Ref := reg.ref(layers5Repo)
	for i := range opts.pulls + 1 {
		if i > 0 {
			if err := removeImage(ctx, t.cri, l5Ref); err != nil {
				return nil, err
			}
			// Let a runtime finish deleting the layers in the background
			// (containerd's snapshot cleanup) before the clock runs again.
			if err := sleepCtx(ctx, 300*time.Millisecond); err != nil {
				return nil, err
			}
		}
		// Every pull starts with no dirty pages of the one before: their
		// writeback would land in the middle of this one.
		unix.Sync()
		id, d, err := timedPull(ctx, t.cri, l5Ref)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			res.firstPull = d
			res.imageSize = imageSize(ctx, t.cri, id)
		} else {
			res.pulls = append(res.pulls, d)
		}
	}
	if err := removeImage(ctx, t.cri, l5Ref); err != nil {
		return nil, err
	}

	// The pulls must not reach into the timed starts: their writeback
	// (a runtime's record syncs would wait for it), and on ext4 without a
	// journal the thousand files RemoveImage just deleted (see quiesce).
	if err := quiesce(ctx); err != nil {
		return nil, err
	}

	// A warm-up pod with its container first (not counted): the runtime's
	// first container may load what later ones find ready.
	if err := warmUpPod(ctx, t, w, namer, "ctr-warmup", bbID); err != nil {
		return nil, err
	}

	total := max(opts.containerPods, opts.running)
	progress(t.name, "RunPodSandbox + CreateContainer + StartContainer × %d", total)
	var pods []ctrPod
	for i := range total {
		var tm *startTimes
		if i < opts.containerPods {
			tm = &startTimes{}
		}
		p, err := podWithContainer(ctx, t, w, namer, "ctr", bbID, tm)
		if err != nil {
			return nil, fmt.Errorf("pod with container %d: %w", i+1, err)
		}
		pods = append(pods, p)
		if tm != nil {
			res.add(*tm)
		}
		if i+1 == opts.running {
			progress(t.name, "reading memory of the per-pod processes of %d pods with a running container", opts.running)
			if err := sleepCtx(ctx, settle); err != nil {
				return nil, err
			}
			if res.mem, err = measureContainerPods(ctx, t, pods); err != nil {
				return nil, err
			}
		}
	}
	progress(t.name, "StopContainer + RemoveContainer + StopPodSandbox + RemovePodSandbox × %d", total)
	for i, p := range pods {
		var tm *stopTimes
		if i < opts.containerPods {
			tm = &stopTimes{}
		}
		if err := tearDownPod(ctx, t, p, tm); err != nil {
			return nil, err
		}
		if tm != nil {
			res.stopC = append(res.stopC, tm.stopC)
			res.removeC = append(res.removeC, tm.removeC)
			res.stopP = append(res.stopP, tm.stopP)
			res.removeP = append(res.removeP, tm.removeP)
			res.down = append(res.down, tm.stopC+tm.removeC+tm.stopP+tm.removeP)
		}
	}
	return res, nil
}

// warmUpPod starts a pod with its container and tears it down, untimed:
// a runtime's first container may load what later ones find ready.
func warmUpPod(ctx context.Context, t *target, w *containerWatch, namer *podNamer, prefix, image string) error {
	p, err := podWithContainer(ctx, t, w, namer, prefix, image, nil)
	if err == nil {
		err = tearDownPod(ctx, t, p, nil)
	}
	if err != nil {
		return fmt.Errorf("%s warm-up: %w", t.name, err)
	}
	return nil
}

// ctrPod is a running pod with its container.
type ctrPod struct {
	sandbox, container string
	pid                int // the container's process
}

type startTimes struct{ run, create, start time.Duration }

type stopTimes struct{ stopC, removeC, stopP, removeP time.Duration }

// podWithContainer runs a pod and starts `sleep` in it, as a kubelet does.
func podWithContainer(ctx context.Context, t *target, w *containerWatch, namer *podNamer, prefix, image string, tm *startTimes) (ctrPod, error) {
	cfg, err := namer.next(prefix, nil)
	if err != nil {
		return ctrPod{}, err
	}
	id, d, err := t.cri.timedRun(ctx, cfg)
	if err != nil {
		return ctrPod{}, err
	}
	p := ctrPod{sandbox: id}
	w.add(p)
	if tm != nil {
		tm.run = d
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	cr, err := t.cri.rt.CreateContainer(cctx, &runtime.CreateContainerRequest{
		PodSandboxId:  id,
		SandboxConfig: cfg,
		Config: &runtime.ContainerConfig{
			Metadata: &runtime.ContainerMetadata{Name: ctrName},
			Image:    &runtime.ImageSpec{Image: image},
			Command:  ctrCommand,
			LogPath:  ctrName + "_0.log",
			Linux: &runtime.LinuxContainerConfig{SecurityContext: &runtime.LinuxContainerSecurityContext{
				// As a kubelet sends them. Given nothing, peapod applies
				// these same paths itself, while containerd 1.6 applies
				// none: without them the two would not do the same work.
				MaskedPaths: procmask.MaskedPaths, ReadonlyPaths: procmask.ReadonlyPaths,
			}},
		},
	})
	if err != nil {
		return p, fmt.Errorf("CreateContainer in %s: %w", id, err)
	}
	if tm != nil {
		tm.create = time.Since(start)
	}
	p.container = cr.ContainerId
	w.add(p)
	start = time.Now()
	if _, err := t.cri.rt.StartContainer(cctx, &runtime.StartContainerRequest{ContainerId: p.container}); err != nil {
		return p, fmt.Errorf("StartContainer %s: %w", p.container, err)
	}
	if tm != nil {
		tm.start = time.Since(start)
	}
	if p.pid, err = containerPID(cctx, t.cri, p.container); err != nil {
		return p, err
	}
	w.add(p)
	return p, nil
}

// tearDownPod stops and removes a pod's container, then the pod.
func tearDownPod(ctx context.Context, t *target, p ctrPod, tm *stopTimes) error {
	if tm == nil {
		tm = &stopTimes{}
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if p.container != "" {
		start := time.Now()
		if _, err := t.cri.rt.StopContainer(cctx, &runtime.StopContainerRequest{ContainerId: p.container, Timeout: 0}); err != nil {
			return fmt.Errorf("StopContainer %s: %w", p.container, err)
		}
		tm.stopC = time.Since(start)
		start = time.Now()
		if _, err := t.cri.rt.RemoveContainer(cctx, &runtime.RemoveContainerRequest{ContainerId: p.container}); err != nil {
			return fmt.Errorf("RemoveContainer %s: %w", p.container, err)
		}
		tm.removeC = time.Since(start)
	}
	var err error
	if tm.stopP, err = t.cri.timedStop(ctx, p.sandbox); err != nil {
		return err
	}
	tm.removeP, err = t.cri.timedRemove(ctx, p.sandbox)
	return err
}

// containerPID reads the container's process from ContainerStatus verbose
// info: both runtimes put a JSON object with `pid` under "info".
func containerPID(ctx context.Context, c *criClient, id string) (int, error) {
	resp, err := c.rt.ContainerStatus(ctx, &runtime.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("ContainerStatus %s: %w", id, err)
	}
	if s := resp.GetStatus().GetState(); s != runtime.ContainerState_CONTAINER_RUNNING {
		return 0, fmt.Errorf("container %s is %v after StartContainer", id, s)
	}
	var v struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(resp.Info["info"]), &v); err != nil || v.PID <= 0 {
		return 0, fmt.Errorf("ContainerStatus %s: no pid in verbose info (%v): %.200s", id, err, resp.Info["info"])
	}
	return v.PID, nil
}

func timedPull(ctx context.Context, c *criClient, ref string) (string, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	start := time.Now()
	resp, err := c.img.PullImage(ctx, &runtime.PullImageRequest{Image: &runtime.ImageSpec{Image: ref}})
	d := time.Since(start)
	if err != nil {
		return "", d, fmt.Errorf("PullImage %s: %w", ref, err)
	}
	return resp.ImageRef, d, nil
}

func removeImage(ctx context.Context, c *criClient, ref string) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	if _, err := c.img.RemoveImage(ctx, &runtime.RemoveImageRequest{Image: &runtime.ImageSpec{Image: ref}}); err != nil {
		return fmt.Errorf("RemoveImage %s: %w", ref, err)
	}
	st, err := c.img.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
	if err != nil {
		return fmt.Errorf("ImageStatus %s: %w", ref, err)
	}
	if st.GetImage() != nil {
		return fmt.Errorf("%s is still listed after RemoveImage", ref)
	}
	return nil
}

func imageSize(ctx context.Context, c *criClient, ref string) uint64 {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	st, err := c.img.ImageStatus(ctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
	if err != nil {
		return 0
	}
	return st.GetImage().GetSize()
}

// ---------------------------------------------------------------------------
// Cleanup and leak checks of what the container section adds to a runtime.

// containerWatch is what the section started on one runtime: container
// processes (with their start time, so that a reused pid is not taken for
// a leftover) and containerd's container cgroups.
type containerWatch struct {
	pods  []ctrPod
	procs map[int]uint64 // pid → start time in clock ticks
}

func (w *containerWatch) add(p ctrPod) {
	if i := slices.IndexFunc(w.pods, func(q ctrPod) bool { return q.sandbox == p.sandbox }); i >= 0 {
		w.pods[i] = p
	} else {
		w.pods = append(w.pods, p)
	}
	if p.pid > 0 {
		if st, ok := procStartTime(p.pid); ok {
			w.procs[p.pid] = st
		}
	}
}

// watchContainers registers the leak checks of the section's containers
// and, for containerd, the removal of their cgroups: containerd 1.6 puts a
// container of a pod without cgroup_parent in /k8s.io/<container id>,
// beside (not beneath) its sandbox's, which the instance's own sweep only
// removes with /k8s.io itself. peapod's container cgroups lie beneath the
// pod's, which the instance's checks cover.
func watchContainers(env *benchEnv, t *target, cl *cleanups) *containerWatch {
	w := &containerWatch{procs: map[int]uint64{}}
	env.leaks.add(func() []string {
		var left []string
		for pid, st := range w.procs {
			if now, ok := procStartTime(pid); ok && now == st {
				left = append(left, fmt.Sprintf("%s container process %d", t.name, pid))
			}
		}
		sort.Strings(left)
		return left
	})
	if t.name != "containerd" {
		return w
	}
	cgroups := func() []string {
		var paths []string
		for _, p := range w.pods {
			if p.container != "" {
				paths = append(paths, "/"+criNamespace+"/"+p.container)
			}
		}
		return paths
	}
	env.leaks.add(cgroupLeaks(cgroups))
	cl.add("containerd: container cgroups", func() error {
		// Registered after the instance's "remove pods": this runs first, so
		// remove the pods (and so the containers) here already.
		if t.daemon.alive() {
			if err := t.cri.removeAllPods(2 * time.Minute); err != nil {
				return err
			}
		}
		var errs []error
		for _, p := range cgroups() {
			if err := removeCgroupTree(p); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	return w
}

// procStartTime is field 22 of /proc/<pid>/stat.
func procStartTime(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, false
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	return v, err == nil
}

// ---------------------------------------------------------------------------
// Memory of pods with a container.

// ctrKind is the kind of the container process in the tables.
const ctrKind = "container (sleep)"

// ctrMemory is the memory of the per-pod processes of pods that each run
// one container.
type ctrMemory struct {
	pods         int
	rss, pss     []int64 // per pod, all its processes
	overheadPSS  []int64 // per pod, without the container process
	overheadRSS  []int64
	kinds        map[string]*kindMemory
	daemon       memUsage
	shimBinBytes int64 // size of the shim's executable
}

// measureContainerPods finds each pod's processes and sums their Rss and
// Pss. A process belongs to a pod when it is
//   - the pause (PodSandboxStatus verbose `pid`),
//   - the container's process (ContainerStatus verbose `pid`),
//   - the container process's parent, unless that is the daemon or init:
//     the shim (peapod's `peapod shim`, containerd-shim-runc-v2),
//   - a shim the runtime names otherwise (containerd: the shim started with
//     `-id <sandbox>`),
//   - in the pod's cgroup or beneath it (peapod reports it), or
//   - a descendant of any of these.
func measureContainerPods(ctx context.Context, t *target, pods []ctrPod) (*ctrMemory, error) {
	procs, err := scanProcs()
	if err != nil {
		return nil, err
	}
	children := map[int][]int{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	daemonPID := t.daemon.pid()
	daemon := procs[daemonPID]
	m := &ctrMemory{pods: len(pods), kinds: map[string]*kindMemory{}}
	for _, pod := range pods {
		v, err := t.cri.verbose(ctx, pod.sandbox)
		if err != nil {
			return nil, err
		}
		pause, ctr := procs[v.PID], procs[pod.pid]
		if pause == nil {
			return nil, fmt.Errorf("sandbox %s: pause pid %d is not a running process", pod.sandbox, v.PID)
		}
		if ctr == nil {
			return nil, fmt.Errorf("container %s: pid %d is not a running process", pod.container, pod.pid)
		}
		members := map[int]*procInfo{pause.pid: pause, ctr.pid: ctr}
		if sh := procs[ctr.ppid]; sh != nil && sh.pid != 1 && sh.pid != daemonPID {
			members[sh.pid] = sh
			if m.shimBinBytes == 0 {
				if st, err := os.Stat(fmt.Sprintf("/proc/%d/exe", sh.pid)); err == nil {
					m.shimBinBytes = st.Size()
				}
			}
		} else {
			return nil, fmt.Errorf("container %s: its process %d has no shim for a parent (parent %d)", pod.container, ctr.pid, ctr.ppid)
		}
		if t.extraPodProcs != nil {
			for _, p := range t.extraPodProcs(pod.sandbox, procs) {
				members[p.pid] = p
			}
		}
		if v.Cgroup != nil && v.Cgroup.PodPath != "" && v.Cgroup.PodPath != "/" && daemon != nil && !within(daemon.memCgroup, v.Cgroup.PodPath) {
			for _, p := range procs {
				if within(p.memCgroup, v.Cgroup.PodPath) {
					members[p.pid] = p
				}
			}
		}
		for queue := slices.Collect(maps.Keys(members)); len(queue) > 0; {
			pid := queue[0]
			queue = queue[1:]
			for _, c := range children[pid] {
				if _, ok := members[c]; !ok && c != daemonPID && procs[c] != nil {
					members[c] = procs[c]
					queue = append(queue, c)
				}
			}
		}
		var all, overhead memUsage
		for _, p := range members {
			u, err := smaps(p.pid)
			if err != nil {
				return nil, fmt.Errorf("read memory of pid %d (%s): %w", p.pid, p.name(), err)
			}
			kind := p.name()
			if p.pid == ctr.pid {
				kind = ctrKind
			} else {
				u.addTo(&overhead)
			}
			u.addTo(&all)
			k := m.kinds[kind]
			if k == nil {
				k = &kindMemory{}
				m.kinds[kind] = k
			}
			k.procs++
			u.addTo(&k.memUsage)
		}
		m.rss = append(m.rss, all.rss)
		m.pss = append(m.pss, all.pss)
		m.overheadRSS = append(m.overheadRSS, overhead.rss)
		m.overheadPSS = append(m.overheadPSS, overhead.pss)
	}
	m.daemon, _ = smaps(daemonPID)
	return m, nil
}

// kindNames orders the kinds as a process tree reads: shims, then the
// pause, then the container.
func (m *ctrMemory) kindNames() []string {
	var names []string
	for k := range m.kinds {
		names = append(names, k)
	}
	rank := func(k string) int {
		switch k {
		case "pause":
			return 1
		case ctrKind:
			return 2
		}
		return 0
	}
	sort.Slice(names, func(i, j int) bool {
		if rank(names[i]) != rank(names[j]) {
			return rank(names[i]) < rank(names[j])
		}
		return names[i] < names[j]
	})
	return names
}

func (m *ctrMemory) composition() string {
	var parts []string
	for _, k := range m.kindNames() {
		if n := m.kinds[k].procs; n == m.pods {
			parts = append(parts, k)
		} else {
			parts = append(parts, fmt.Sprintf("%s (%d for %d pods)", k, n, m.pods))
		}
	}
	return strings.Join(parts, " + ")
}

// ---------------------------------------------------------------------------
// Report.

func (r *runtimeReport) ctr() *containerResult {
	if r == nil {
		return nil
	}
	return r.containers
}

// writeContainers prints the container section's table.
func writeContainers(w io.Writer, rep *report, opts options) {
	pp, ctd := rep.peapod.ctr(), rep.containerd.ctr()
	if pp == nil && ctd == nil {
		return
	}
	tb := &table{
		title: fmt.Sprintf("Pod + busybox container (`%s`): %d pods one at a time after a warm-up pod, each run then its container created and started; then each torn down; memory with %d up",
			strings.Join(ctrCommand, " "), opts.containerPods, opts.running),
		header: []string{"", "peapod", "containerd", "peapod/containerd", "target"},
	}
	durs := func(r *containerResult, f func(*containerResult) []time.Duration) []time.Duration {
		if r == nil {
			return nil
		}
		return f(r)
	}
	row := func(label string, p float64, f func(*containerResult) []time.Duration, target func(a, b float64) string) {
		a, b := durs(pp, f), durs(ctd, f)
		x, y := percentile(a, p), percentile(b, p)
		tcell := ""
		if target != nil {
			tcell = target(float64(x), float64(y))
		}
		tb.add(fmt.Sprintf("%s p%.0f", label, p), durCell(a, x), durCell(b, y), fmtRatio(float64(x), float64(y)), tcell)
	}
	third := func(a, b float64) string { return fmtTarget(a, b, 1.0/3, "1/3") }
	row("RunPodSandbox + CreateContainer + StartContainer", 50, func(r *containerResult) []time.Duration { return r.up }, third)
	row("RunPodSandbox + CreateContainer + StartContainer", 95, func(r *containerResult) []time.Duration { return r.up }, nil)
	row("  RunPodSandbox", 50, func(r *containerResult) []time.Duration { return r.run }, nil)
	row("  CreateContainer", 50, func(r *containerResult) []time.Duration { return r.create }, nil)
	row("  StartContainer", 50, func(r *containerResult) []time.Duration { return r.start }, nil)
	row("Stop/RemoveContainer + Stop/RemovePodSandbox", 50, func(r *containerResult) []time.Duration { return r.down }, nil)
	row("Stop/RemoveContainer + Stop/RemovePodSandbox", 95, func(r *containerResult) []time.Duration { return r.down }, nil)
	row("  StopContainer (timeout 0)", 50, func(r *containerResult) []time.Duration { return r.stopC }, nil)
	row("  RemoveContainer", 50, func(r *containerResult) []time.Duration { return r.removeC }, nil)
	row("  StopPodSandbox", 50, func(r *containerResult) []time.Duration { return r.stopP }, nil)
	row("  RemovePodSandbox", 50, func(r *containerResult) []time.Duration { return r.removeP }, nil)

	var ppm, ctdm *ctrMemory
	if pp != nil {
		ppm = pp.mem
	}
	if ctd != nil {
		ctdm = ctd.mem
	}
	if ppm != nil || ctdm != nil {
		mean := func(m *ctrMemory, f func(*ctrMemory) []int64) float64 {
			if m == nil {
				return 0
			}
			return meanKB(f(m))
		}
		cell := func(m *ctrMemory, f func(*ctrMemory) []int64) string {
			if m == nil {
				return "–"
			}
			return fmtKB(meanKB(f(m)))
		}
		memRow := func(label string, f func(*ctrMemory) []int64, target func(a, b float64) string) {
			a, b := mean(ppm, f), mean(ctdm, f)
			tcell := ""
			if target != nil {
				tcell = target(a, b)
			}
			tb.add(label, cell(ppm, f), cell(ctdm, f), fmtRatio(a, b), tcell)
		}
		comp := func(m *ctrMemory) string {
			if m == nil {
				return "–"
			}
			return m.composition()
		}
		tb.add("per-pod processes", comp(ppm), comp(ctdm), "", "")
		memRow(fmt.Sprintf("per-pod RSS (mean of %d)", opts.running), func(m *ctrMemory) []int64 { return m.rss }, nil)
		memRow(fmt.Sprintf("per-pod PSS (mean of %d)", opts.running), func(m *ctrMemory) []int64 { return m.pss },
			func(a, b float64) string { return fmtTarget(a, b, 0.5, "1/2") })
		memRow("  the runtime's part: RSS without the container", func(m *ctrMemory) []int64 { return m.overheadRSS }, nil)
		memRow("  the runtime's part: PSS without the container", func(m *ctrMemory) []int64 { return m.overheadPSS }, nil)
		seen := map[string]bool{}
		for _, m := range []*ctrMemory{ppm, ctdm} {
			if m == nil {
				continue
			}
			for _, k := range m.kindNames() {
				if seen[k] {
					continue
				}
				seen[k] = true
				tb.add("  PSS of "+k+", per pod", ctrKindCell(ppm, k), ctrKindCell(ctdm, k), "", "")
			}
		}
		dcell := func(m *ctrMemory) string {
			if m == nil || m.daemon.rss == 0 {
				return "–"
			}
			return fmt.Sprintf("%s / %s", fmtKB(float64(m.daemon.rss)), fmtKB(float64(m.daemon.pss)))
		}
		tb.add(fmt.Sprintf("daemon RSS / PSS, %d pods up", opts.running), dcell(ppm), dcell(ctdm), "", "(not per pod)")
	}

	pullCell := func(r *containerResult, f func(*containerResult) time.Duration) string {
		if r == nil || (r.pulls == nil && r.firstPull == 0) {
			return "–"
		}
		return fmtDur(f(r))
	}
	p50 := func(r *containerResult) time.Duration { return percentile(r.pulls, 50) }
	ratio := func(f func(*containerResult) time.Duration) string {
		if pp == nil || ctd == nil {
			return "–"
		}
		return fmtRatio(float64(f(pp)), float64(f(ctd)))
	}
	l5 := imagesBuilt.layers5
	tb.add(fmt.Sprintf("PullImage, 5 layers, p50 of %d after RemoveImage", opts.pulls), pullCell(pp, p50), pullCell(ctd, p50), ratio(p50), "")
	tb.add("  the first pull", pullCell(pp, func(r *containerResult) time.Duration { return r.firstPull }), pullCell(ctd, func(r *containerResult) time.Duration { return r.firstPull }),
		ratio(func(r *containerResult) time.Duration { return r.firstPull }), "")
	spread := func(r *containerResult) string {
		if r == nil || len(r.pulls) == 0 {
			return "–"
		}
		return fmt.Sprintf("%s – %s", fmtDur(slices.Min(r.pulls)), fmtDur(slices.Max(r.pulls)))
	}
	tb.add("  fastest – slowest", spread(pp), spread(ctd), "", "")
	bb := func(r *containerResult) time.Duration { return r.busyboxPull }
	tb.add("PullImage, busybox (1 layer), first pull", pullCell(pp, bb), pullCell(ctd, bb), ratio(bb), "")
	sizeCell := func(r *containerResult, f func(*containerResult) uint64) string {
		if r == nil || f(r) == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f MiB", float64(f(r))/(1<<20))
	}
	tb.add("  image size ImageStatus reports: 5 layers / busybox",
		sizeCell(pp, func(r *containerResult) uint64 { return r.imageSize })+" / "+sizeCell(pp, func(r *containerResult) uint64 { return r.imageSizeBusybox }),
		sizeCell(ctd, func(r *containerResult) uint64 { return r.imageSize })+" / "+sizeCell(ctd, func(r *containerResult) uint64 { return r.imageSizeBusybox }), "", "")

	tb.notes = append(tb.notes,
		"start: the sum of the three calls' times, the container's image given by the ID PullImage returned and the masked and",
		"read-only paths of the default procMount (as a kubelet sends them);",
		"teardown: StopContainer with timeout 0 (SIGKILL at once: `sleep` is its pid namespace's init and ignores SIGTERM),",
		"RemoveContainer, StopPodSandbox, RemovePodSandbox. Per-pod processes: the pause, the container's process, its parent",
		"(the shim), containerd's shim of the sandbox, the pod's cgroup, and their descendants; PSS as in the table above.")
	if pp != nil && ctd != nil && len(pp.up) > 0 && len(ctd.up) > 0 {
		n := fmt.Sprintf("1/3 of containerd's start p50 is %s; peapod's RunPodSandbox p50 alone is %s", fmtDur(percentile(ctd.up, 50)/3), fmtDur(percentile(pp.run, 50)))
		if rep.cniFloor != nil && len(rep.cniFloor.add) > 0 {
			n += fmt.Sprintf(", CNI ADD alone %s (below)", fmtDur(percentile(rep.cniFloor.add, 50)))
		}
		tb.notes = append(tb.notes, n+".")
	}
	if ppm != nil && ctdm != nil {
		var shim float64
		for k, km := range ppm.kinds {
			if k != "pause" && k != ctrKind && ppm.pods > 0 {
				shim += float64(km.pss) / float64(ppm.pods)
			}
		}
		tb.notes = append(tb.notes, fmt.Sprintf("1/2 of containerd's per-pod PSS is %s; peapod's shim alone is %s of PSS per pod.", fmtKB(meanKB(ctdm.pss)/2), fmtKB(shim)))
	}
	for _, x := range []struct {
		name string
		m    *ctrMemory
	}{{"peapod", ppm}, {"containerd", ctdm}} {
		if x.m != nil && x.m.shimBinBytes > 0 {
			tb.notes = append(tb.notes, fmt.Sprintf("shim executable of %s: %.1f MiB", x.name, float64(x.m.shimBinBytes)/(1<<20)))
		}
	}
	if l5 != nil {
		reg := "127.0.0.1"
		if pp != nil {
			reg = pp.image
		} else if ctd != nil {
			reg = ctd.image
		}
		tb.notes = append(tb.notes,
			fmt.Sprintf("5-layer image %s: %d files, %.1f MiB of gzip layers, %.1f MiB unpacked (base with busybox, 1000 small files,",
				l5.digest[:19], l5.files, float64(l5.compressed)/(1<<20), float64(l5.unpacked)/(1<<20)),
			fmt.Sprintf("8 MiB random, 8 MiB text, a top layer with a whiteout); served by an in-process registry (%s) over plain http,", reg),
			"the same bytes to both runtimes, which pull it by that address with no mirror configuration (both pick plain http for a",
			"loopback registry). Between pulls: RemoveImage, 300 ms for background deletion, sync(2).")
	}
	tb.write(w)
}

func ctrKindCell(m *ctrMemory, kind string) string {
	if m == nil || m.kinds[kind] == nil || m.pods == 0 {
		return "–"
	}
	k := m.kinds[kind]
	per := func(v int64) float64 { return float64(v) / float64(m.pods) }
	return fmt.Sprintf("%.0f KiB = %.0f anon + %.0f file (RSS %s)", per(k.pss), per(k.pssAnon), per(k.pssFile), fmtKB(per(k.rss)))
}
