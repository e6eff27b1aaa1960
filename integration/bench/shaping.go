package main

import (
	"context"
	"fmt"
	"time"
)

// Bandwidth annotations of a shaped pod, as a kubelet passes them on.
var shapedAnnotations = map[string]string{
	"kubernetes.io/ingress-bandwidth": "10M",
	"kubernetes.io/egress-bandwidth":  "5M",
}

// shapingResult is what bandwidth shaping adds to RunPodSandbox.
type shapingResult struct {
	plain, shaped []time.Duration
	// applied is false when the runtime accepted the annotations but its
	// verbose status shows no shaping: then the delta measures nothing.
	applied bool
}

// benchShaping measures the extra RunPodSandbox time of a pod that carries
// ingress/egress bandwidth annotations over one that carries none (peapod
// only: containerd 1.6's CRI plugin leaves shaping to the CNI bandwidth
// plugin, which is not in the compared chain). Plain and shaped pods
// alternate, and each pod is stopped and removed before the next one
// starts, so both kinds see the same host: one pod, same bridge, same
// iptables. Only RunPodSandbox is timed.
func benchShaping(ctx context.Context, t *target, namer *podNamer, pairs int) (*shapingResult, error) {
	res := &shapingResult{}
	for i := range 2 * pairs {
		// plain, shaped, shaped, plain, ...: neither kind always goes first.
		shaped := (i%4 == 1) || (i%4 == 2)
		var ann map[string]string
		prefix := "plain"
		if shaped {
			ann, prefix = shapedAnnotations, "shaped"
		}
		cfg, err := namer.next(prefix, ann)
		if err != nil {
			return nil, err
		}
		id, d, err := t.cri.timedRun(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("shaping: %w", err)
		}
		if shaped {
			res.shaped = append(res.shaped, d)
			if !res.applied {
				v, err := t.cri.verbose(ctx, id)
				if err != nil {
					return nil, err
				}
				res.applied = len(v.Bandwidth) > 0 && string(v.Bandwidth) != "null"
			}
		} else {
			res.plain = append(res.plain, d)
		}
		if _, err := t.cri.timedStop(ctx, id); err != nil {
			return nil, fmt.Errorf("shaping: %w", err)
		}
		if _, err := t.cri.timedRemove(ctx, id); err != nil {
			return nil, fmt.Errorf("shaping: %w", err)
		}
	}
	return res, nil
}

// ---------------------------------------------------------------------------
// HOOK — bandwidth shaping throughput accuracy (not written yet).
//
// The throughput accuracy table (requested rate vs measured rate, ingress
// and egress, per annotation value) belongs here. Add it in a new file of
// this package that sets the hook from an init function:
//
//	func init() { shapingAccuracy = measureShapingAccuracy }
//
// It is called with the running private peapod after benchShaping, before
// any cleanup. It must stop and remove every pod it runs (or leave that to
// the cleanup stack, which removes all pods of the instance), must keep its
// traffic inside namespaces it creates and the instance's bridge
// (ppbench0, 10.97.0.0/24), and returns a table printed under
// "Bandwidth shaping" (nil prints nothing).
var shapingAccuracy func(ctx context.Context, pp *target, namer *podNamer, cl *cleanups) (*table, error)

// ---------------------------------------------------------------------------
