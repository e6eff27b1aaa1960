package sandbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"peapod/cgroups"
)

// PodResources is what the last UpdatePodSandboxResources asked for and
// what peapod wrote to the pod cgroup. It is part of the sandbox record, so
// a restarted daemon still reports it.
type PodResources struct {
	// Overhead and Resources are the kubelet's request as given: the pod
	// overhead (RuntimeClass) and the sum of the containers' resources.
	Overhead  *specs.LinuxResources `json:"overhead,omitempty"`
	Resources *specs.LinuxResources `json:"resources,omitempty"`
	// Applied are the pod cgroup's limits: Resources plus Overhead (see
	// PodLimits); nil when the request had no Resources.
	Applied   *specs.LinuxResources `json:"applied,omitempty"`
	UpdatedAt time.Time             `json:"updatedAt"`
}

// UpdatePodSandboxResources applies new pod-level limits to a ready
// sandbox's pod cgroup, live, and records them. Bad values are ErrInvalid
// (nothing changed), an unknown sandbox ErrNotFound, a sandbox that is not
// ready (or whose cgroup is gone) ErrNotReady.
func (m *Manager) UpdatePodSandboxResources(ctx context.Context, id string, overhead, resources *specs.LinuxResources) error {
	e, err := m.lookup(id)
	if err != nil {
		return err
	}
	e.op.Lock()
	defer e.op.Unlock()
	m.mu.Lock()
	if e.removed || e.rec == nil || e.rec.State == StateCreating {
		m.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	rec := *e.rec
	m.mu.Unlock()
	if rec.State != StateReady || rec.Cgroup == nil {
		return fmt.Errorf("%w: %s is %s; pod resources can change only while it is ready", ErrNotReady, rec.ID, rec.PublicState())
	}
	applied := PodLimits(overhead, resources)
	if applied != nil {
		if err := rec.Cgroup.SetResources(applied); err != nil {
			switch {
			case errors.Is(err, cgroups.ErrInvalidResources):
				return fmt.Errorf("%w: pod %s: %v", ErrInvalid, rec.ID, err)
			case errors.Is(err, cgroups.ErrNotFound):
				return fmt.Errorf("%w: pod %s: its cgroup %s is gone", ErrNotReady, rec.ID, rec.Cgroup.PodPath)
			}
			return fmt.Errorf("pod %s: %w", rec.ID, err)
		}
	}
	rec.Resources = &PodResources{Overhead: overhead, Resources: resources, Applied: applied, UpdatedAt: time.Now()}
	if err := m.persist(e, &rec); err != nil {
		return fmt.Errorf("pod %s: limits applied but not recorded: %w", rec.ID, err)
	}
	m.log.Info("pod resources updated", "sandbox", rec.ID, "cgroup", rec.Cgroup.PodPath)
	return nil
}

// RemoveCgroupParentIfEmpty removes the default cgroup parent (cgroupfs)
// or slice (systemd) when no pod is left in it: a daemon that stops with no
// pods leaves nothing behind.
func (m *Manager) RemoveCgroupParentIfEmpty() error { return m.cgroups.RemoveParentIfEmpty() }

// PodLimits are the pod cgroup's limits for a request: the containers' sum
// (resources) plus the overhead, field by field where both are set (cpu
// shares, cpu quota at the same period, memory and memory+swap limits,
// hugepage limits per size, pids). Cpusets and unified values come from
// resources alone. Without resources there is nothing to limit: overhead
// alone would cap the pod at the runtime's share, so nil.
func PodLimits(overhead, resources *specs.LinuxResources) *specs.LinuxResources {
	if resources == nil {
		return nil
	}
	out := copyResources(resources)
	if overhead == nil {
		return out
	}
	if oc := overhead.CPU; oc != nil && out.CPU != nil {
		addU(&out.CPU.Shares, oc.Shares)
		if out.CPU.Quota != nil && *out.CPU.Quota > 0 && oc.Quota != nil && *oc.Quota > 0 &&
			(oc.Period == nil || *oc.Period == 0 || out.CPU.Period != nil && *oc.Period == *out.CPU.Period) {
			q := *out.CPU.Quota + *oc.Quota
			out.CPU.Quota = &q
		}
	}
	if om := overhead.Memory; om != nil && out.Memory != nil {
		addI(&out.Memory.Limit, om.Limit)
		addI(&out.Memory.Swap, om.Swap)
	}
	if overhead.Pids != nil && out.Pids != nil {
		addI(&out.Pids.Limit, overhead.Pids.Limit)
	}
	for _, oh := range overhead.HugepageLimits {
		for i := range out.HugepageLimits {
			if out.HugepageLimits[i].Pagesize == oh.Pagesize && out.HugepageLimits[i].Limit > 0 {
				out.HugepageLimits[i].Limit += oh.Limit
			}
		}
	}
	return out
}

// addU adds b to *a when both are set and positive.
func addU(a **uint64, b *uint64) {
	if *a != nil && **a > 0 && b != nil && *b > 0 {
		v := **a + *b
		*a = &v
	}
}

// addI adds b to *a when both are set and positive (-1, unlimited, stays).
func addI(a **int64, b *int64) {
	if *a != nil && **a > 0 && b != nil && *b > 0 {
		v := **a + *b
		*a = &v
	}
}

// copyResources copies the parts of r that pod limits use.
func copyResources(r *specs.LinuxResources) *specs.LinuxResources {
	out := &specs.LinuxResources{}
	if r.CPU != nil {
		c := *r.CPU
		out.CPU = &c
	}
	if r.Memory != nil {
		mm := *r.Memory
		out.Memory = &mm
	}
	if r.Pids != nil {
		p := *r.Pids
		out.Pids = &p
	}
	out.HugepageLimits = append(out.HugepageLimits, r.HugepageLimits...)
	if len(r.Unified) > 0 {
		out.Unified = make(map[string]string, len(r.Unified))
		for k, v := range r.Unified {
			out.Unified[k] = v
		}
	}
	return out
}
