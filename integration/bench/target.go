package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// target is one runtime under test: a private daemon and a CRI client.
type target struct {
	name    string // "peapod" or "containerd"
	version string // as the runtime reports it
	cri     *criClient
	daemon  *daemonProcess
	network string // CNI network (and bridge) name

	pauseBinaryBytes int64
	pauseBinaryFrom  string

	// extraPodProcs names per-pod processes that neither the pod cgroup nor
	// the pause's parent reveal; nil when there are none.
	extraPodProcs func(sandboxID string, procs map[int]*procInfo) []*procInfo
}

// lifecycle holds the timings of one runtime's sandbox lifecycle.
type lifecycle struct {
	run, stop, remove []time.Duration
	mem               *podMemory
}

// settle is how long the pods sit before their memory is read, so that
// start-up allocations are done and the runtimes' Go processes idle.
const settle = 1 * time.Second

// benchLifecycle runs `pods` sandboxes one after another, then stops all,
// then removes all, timing each call as a kubelet would see it. When
// `running` pods are up, it pauses the clock and reads their memory.
// A warm-up pod goes first (not counted): the first pod of a network
// creates its bridge and iptables chains.
func benchLifecycle(ctx context.Context, t *target, namer *podNamer, pods, running int) (*lifecycle, error) {
	cfg, err := namer.next("warmup", nil)
	if err != nil {
		return nil, err
	}
	id, _, err := t.cri.timedRun(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if _, err := t.cri.timedStop(ctx, id); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	if _, err := t.cri.timedRemove(ctx, id); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}

	res := &lifecycle{}
	var ids []string
	total := max(pods, running)
	progress(t.name, "RunPodSandbox × %d", total)
	for i := range total {
		cfg, err := namer.next("pod", nil)
		if err != nil {
			return nil, err
		}
		id, d, err := t.cri.timedRun(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("pod %d: %w", i+1, err)
		}
		ids = append(ids, id)
		if i < pods {
			res.run = append(res.run, d)
		}
		if i+1 == running {
			progress(t.name, "reading memory of the per-pod processes of %d running pods", running)
			if err := sleepCtx(ctx, settle); err != nil {
				return nil, err
			}
			if res.mem, err = measurePodMemory(ctx, t, ids); err != nil {
				return nil, err
			}
		}
	}
	progress(t.name, "StopPodSandbox × %d", total)
	for i, id := range ids {
		d, err := t.cri.timedStop(ctx, id)
		if err != nil {
			return nil, err
		}
		if i < pods {
			res.stop = append(res.stop, d)
		}
	}
	progress(t.name, "RemovePodSandbox × %d", total)
	for i, id := range ids {
		d, err := t.cri.timedRemove(ctx, id)
		if err != nil {
			return nil, err
		}
		if i < pods {
			res.remove = append(res.remove, d)
		}
	}
	return res, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// progress reports on stderr, so stdout carries only the table.
func progress(who, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %-10s "+format+"\n", append([]any{who}, args...)...)
}
