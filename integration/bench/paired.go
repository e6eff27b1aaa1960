package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"golang.org/x/sys/unix"
)

// The paired start section: pod + container start on both runtimes, one
// pod at a time, taking turns. The container section measures each
// runtime in its own phase, minutes apart; on a shared VM the host's load
// moves in between, and containerd's own start p50 has been seen anywhere
// from 155 to 254 ms across runs. Here both private instances run side by
// side and their pods alternate in ABBA order (peapod, containerd,
// containerd, peapod, ...), so a slow stretch of the host lands on both
// alike and the ratio of the two p50s is the comparison that holds. Same
// PodSandboxConfigs, CNI chain, image and container as the container
// section; the same warm-up pod first; nothing else runs meanwhile.

// pairGap is the pause before each pod of the section.
const pairGap = 150 * time.Millisecond

// pairedResult is the section's figures, per runtime.
type pairedResult struct {
	peapod, containerd startSeries
}

// startSeries is the start times of a series of pods: each call's and
// their sum (up). The container section's results embed one too.
type startSeries struct{ up, run, create, start []time.Duration }

func (s *startSeries) add(tm startTimes) {
	s.run = append(s.run, tm.run)
	s.create = append(s.create, tm.create)
	s.start = append(s.start, tm.start)
	s.up = append(s.up, tm.run+tm.create+tm.start)
}

// benchPairedStarts runs the section with n pods per runtime.
func benchPairedStarts(ctx context.Context, env *benchEnv, n int, namer *podNamer, cl *cleanups) (*pairedResult, error) {
	progress("paired", "starting both runtimes side by side")
	pp, err := startPeapod(ctx, env, cl)
	if err != nil {
		return nil, err
	}
	ctd, err := startContainerd(ctx, env, cl)
	if err != nil {
		return nil, err
	}
	reg, err := startBenchRegistry(cl)
	if err != nil {
		return nil, err
	}
	type side struct {
		t      *target
		w      *containerWatch
		image  string
		pods   []ctrPod
		series *startSeries
	}
	res := &pairedResult{}
	sides := []*side{{t: pp, series: &res.peapod}, {t: ctd, series: &res.containerd}}
	for _, s := range sides {
		s.w = watchContainers(env, s.t, cl)
		if s.image, _, err = timedPull(ctx, s.t.cri, reg.ref(busyboxRepo)); err != nil {
			return nil, fmt.Errorf("%s: %w", s.t.name, err)
		}
	}
	unix.Sync()
	for _, s := range sides {
		if err := warmUpPod(ctx, s.t, s.w, namer, "pair-warmup", s.image); err != nil {
			return nil, err
		}
	}
	if err := quiesce(ctx); err != nil {
		return nil, err
	}

	progress("paired", "RunPodSandbox + CreateContainer + StartContainer × %d per runtime, taking turns", n)
	for i := range 2 * n {
		// What a runtime still does after its last call returned (a
		// shim's bookkeeping, a background GC) must not land in the other
		// runtime's timings.
		if err := sleepCtx(ctx, pairGap); err != nil {
			return nil, err
		}
		// ABBA: peapod, containerd, containerd, peapod, ...
		s := sides[(i/2+i%2)%2]
		var tm startTimes
		p, err := podWithContainer(ctx, s.t, s.w, namer, "pair", s.image, &tm)
		if err != nil {
			return nil, fmt.Errorf("%s pod %d: %w", s.t.name, len(s.pods)+1, err)
		}
		s.pods = append(s.pods, p)
		s.series.add(tm)
	}
	progress("paired", "tearing the pods down")
	for _, s := range sides {
		for _, p := range s.pods {
			if err := tearDownPod(ctx, s.t, p, nil); err != nil {
				return nil, err
			}
		}
	}
	return res, nil
}

func writePaired(w io.Writer, r *pairedResult) {
	if r == nil {
		return
	}
	n := len(r.peapod.up)
	tb := &table{
		title:  fmt.Sprintf("Pod + busybox container start, both runtimes side by side taking turns (ABBA), %d pods each", n),
		header: []string{"", "peapod", "containerd", "peapod/containerd", "target"},
	}
	row := func(label string, p float64, f func(*startSeries) []time.Duration, target bool) {
		a, b := f(&r.peapod), f(&r.containerd)
		x, y := percentile(a, p), percentile(b, p)
		t := ""
		if target {
			t = fmtTarget(float64(x), float64(y), 1.0/3, "1/3")
		}
		tb.add(fmt.Sprintf("%s p%.0f", label, p), durCell(a, x), durCell(b, y), fmtRatio(float64(x), float64(y)), t)
	}
	row("RunPodSandbox + CreateContainer + StartContainer", 50, func(s *startSeries) []time.Duration { return s.up }, true)
	row("RunPodSandbox + CreateContainer + StartContainer", 95, func(s *startSeries) []time.Duration { return s.up }, false)
	row("  RunPodSandbox", 50, func(s *startSeries) []time.Duration { return s.run }, false)
	row("  CreateContainer", 50, func(s *startSeries) []time.Duration { return s.create }, false)
	row("  StartContainer", 50, func(s *startSeries) []time.Duration { return s.start }, false)
	tb.notes = append(tb.notes,
		"Both private instances up at once; each pod started as in the container section above, the runtimes alternating",
		fmt.Sprintf("pod by pod with %s between pods, so that the host's load over the section weighs on both alike and neither", pairGap),
		"runtime's leftover work lands in the other's timings; the pods stay up until the end.")
	tb.write(w)
}
