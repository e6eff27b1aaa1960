package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Stats section: the latency of the stats RPCs a kubelet calls every few
// seconds (ListPodSandboxStats and ListContainerStats for its summary API
// and eviction, ListPodSandboxMetrics for /metrics/cadvisor) with
// -stats-pods pods of one running busybox `sleep` container each, and the
// daemon's CPU use while nobody calls: for peapod, its background stats
// sampler. The target is ListPodSandboxStats ≤ 50 ms p50 with
// 100 pods.
//
// HOOK — wiring (two lines outside this file):
//
//	benchPeapod / benchContainerd, with the instance running:
//	    if err := benchStatsFor(ctx, env, t, namer, cl); err != nil { return err }
//	report.write, where the section should print:
//	    writeStats(w)
//
// benchStatsFor stops and removes every pod it runs before it returns
// (the instance's cleanup stack removes what an error leaves).

var statsPods int

func init() {
	flag.IntVar(&statsPods, "stats-pods", 100, "pods with a running container for the stats RPC latency and the sampler's CPU (0: skip)")
}

const (
	statsCalls = 50               // timed calls per RPC
	statsIdle  = 10 * time.Second // CPU measured over this long
)

// statsResult is one runtime's figures.
type statsResult struct {
	pods                          int
	podStats, ctrStats, podMetric []time.Duration
	idleCPU                       float64 // percent of one core, the daemon alone
	errs                          []string
}

var (
	statsMu      sync.Mutex
	statsResults = map[string]*statsResult{} // by runtime name
)

// benchStatsFor runs the stats section against t. A runtime that does not
// implement an RPC gets "n/a" in its column, not an error.
func benchStatsFor(ctx context.Context, env *benchEnv, t *target, namer *podNamer, cl *cleanups) error {
	if statsPods <= 0 {
		return nil
	}
	res := &statsResult{pods: statsPods}
	statsMu.Lock()
	statsResults[t.name] = res
	statsMu.Unlock()

	reg, err := startBenchRegistry(cl)
	if err != nil {
		return err
	}
	img, _, err := timedPull(ctx, t.cri, reg.ref(busyboxRepo))
	if err != nil {
		return err
	}
	w := watchContainers(env, t, cl)
	progress(t.name, "stats: %d pods with a running container", statsPods)
	pods := make([]ctrPod, 0, statsPods)
	defer func() {
		if ctx.Err() != nil {
			return // interrupted: the cleanup stack removes the pods
		}
		progress(t.name, "stats: removing %d pods", len(pods))
		for _, p := range pods {
			_ = tearDownPod(ctx, t, p, nil)
		}
	}()
	for range statsPods {
		p, err := podWithContainer(ctx, t, w, namer, "stats", img, nil)
		if p.sandbox != "" {
			pods = append(pods, p)
		}
		if err != nil {
			return fmt.Errorf("stats: %w", err)
		}
	}
	// A sampler needs a pass or two to know every pod.
	if err := sleepCtx(ctx, 3*time.Second); err != nil {
		return err
	}

	time1 := func(name string, dst *[]time.Duration, call func(context.Context) (int, error)) error {
		for i := 0; i < statsCalls; i++ {
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			start := time.Now()
			n, err := call(cctx)
			d := time.Since(start)
			cancel()
			if err != nil {
				if i == 0 {
					res.errs = append(res.errs, fmt.Sprintf("%s: %v", name, firstLine(err.Error())))
					return nil // unimplemented, say so in the table
				}
				return fmt.Errorf("stats: %s: %w", name, err)
			}
			if i == 0 && n < statsPods {
				res.errs = append(res.errs, fmt.Sprintf("%s: %d of %d pods in the answer", name, n, statsPods))
			}
			*dst = append(*dst, d)
		}
		return nil
	}
	progress(t.name, "stats: ListPodSandboxStats, ListContainerStats, ListPodSandboxMetrics × %d each", statsCalls)
	err = errors.Join(
		time1("ListPodSandboxStats", &res.podStats, func(c context.Context) (int, error) {
			r, err := t.cri.rt.ListPodSandboxStats(c, &runtime.ListPodSandboxStatsRequest{})
			return len(r.GetStats()), err
		}),
		time1("ListContainerStats", &res.ctrStats, func(c context.Context) (int, error) {
			r, err := t.cri.rt.ListContainerStats(c, &runtime.ListContainerStatsRequest{})
			return len(r.GetStats()), err
		}),
		time1("ListPodSandboxMetrics", &res.podMetric, func(c context.Context) (int, error) {
			r, err := t.cri.rt.ListPodSandboxMetrics(c, &runtime.ListPodSandboxMetricsRequest{})
			return len(r.GetPodMetrics()), err
		}),
	)
	if err != nil {
		return err
	}

	progress(t.name, "stats: daemon CPU over %v with nobody calling", statsIdle)
	c0, err := procCPU(t.daemon.pid())
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := sleepCtx(ctx, statsIdle); err != nil {
		return err
	}
	c1, err := procCPU(t.daemon.pid())
	if err != nil {
		return err
	}
	res.idleCPU = 100 * (c1 - c0).Seconds() / time.Since(t0).Seconds()
	return nil
}

// procCPU is the user+system time of a process (its threads included).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100, nil // USER_HZ
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return s
}

// writeStats prints the section; nothing when it did not run.
func writeStats(w io.Writer) {
	statsMu.Lock()
	defer statsMu.Unlock()
	pp, ctd := statsResults["peapod"], statsResults["containerd"]
	if pp == nil && ctd == nil {
		return
	}
	n := statsPods
	tb := &table{
		title:  fmt.Sprintf("Stats RPCs — %d pods with a running container each; %d calls per RPC", n, statsCalls),
		header: []string{"", "peapod", "containerd", "peapod/containerd", "target"},
	}
	durs := func(r *statsResult, f func(*statsResult) []time.Duration) []time.Duration {
		if r == nil {
			return nil
		}
		return f(r)
	}
	for _, row := range []struct {
		name string
		f    func(*statsResult) []time.Duration
	}{
		{"ListPodSandboxStats", func(r *statsResult) []time.Duration { return r.podStats }},
		{"ListContainerStats", func(r *statsResult) []time.Duration { return r.ctrStats }},
		{"ListPodSandboxMetrics", func(r *statsResult) []time.Duration { return r.podMetric }},
	} {
		a, b := durs(pp, row.f), durs(ctd, row.f)
		for _, p := range []float64{50, 95} {
			x, y := percentile(a, p), percentile(b, p)
			target := ""
			if row.name == "ListPodSandboxStats" && p == 50 && len(a) > 0 {
				target = "≤ 50 ms: "
				if x <= 50*time.Millisecond {
					target += "met"
				} else {
					target += "missed"
				}
			}
			tb.add(fmt.Sprintf("%s p%.0f", row.name, p), statsCell(a, x), statsCell(b, y), fmtRatio(float64(x), float64(y)), target)
		}
	}
	cpu := func(r *statsResult) string {
		if r == nil {
			return "—"
		}
		return fmt.Sprintf("%.2f%% of a core", r.idleCPU)
	}
	tb.add(fmt.Sprintf("daemon CPU, idle, %d pods", n), cpu(pp), cpu(ctd), "", "")
	tb.notes = append(tb.notes, "idle CPU: the daemon process alone over "+statsIdle.String()+" with nobody calling; for peapod mostly its stats sampler (CPU time of every pod and container cgroup each second)")
	for _, rt := range []struct {
		name string
		r    *statsResult
	}{{"peapod", pp}, {"containerd", ctd}} {
		if rt.r != nil {
			for _, e := range rt.r.errs {
				tb.notes = append(tb.notes, rt.name+": "+e)
			}
		}
	}
	tb.write(w)
}

func statsCell(ds []time.Duration, d time.Duration) string {
	if len(ds) == 0 {
		return "n/a"
	}
	return durCell(ds, d)
}
