package sandbox

import (
	"testing"

	"github.com/opencontainers/runtime-spec/specs-go"
)

func TestPodLimitsAddOverheadWhereBothAreSet(t *testing.T) {
	u := func(v uint64) *uint64 { return &v }
	i := func(v int64) *int64 { return &v }
	if PodLimits(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i(10)}}, nil) != nil {
		t.Error("overhead alone must not limit the pod")
	}
	res := &specs.LinuxResources{
		CPU:            &specs.LinuxCPU{Shares: u(512), Quota: i(50000), Period: u(100000), Cpus: "0"},
		Memory:         &specs.LinuxMemory{Limit: i(256 << 20), Swap: i(-1)},
		HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 4 << 20}},
		Unified:        map[string]string{"memory.high": "1000000"},
	}
	over := &specs.LinuxResources{
		CPU:            &specs.LinuxCPU{Shares: u(100), Quota: i(10000)},
		Memory:         &specs.LinuxMemory{Limit: i(64 << 20), Swap: i(64 << 20)},
		HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 2 << 20}, {Pagesize: "1GB", Limit: 1 << 30}},
	}
	got := PodLimits(over, res)
	if *got.CPU.Shares != 612 || *got.CPU.Quota != 60000 || *got.CPU.Period != 100000 || got.CPU.Cpus != "0" {
		t.Errorf("cpu %+v", got.CPU)
	}
	if *got.Memory.Limit != 320<<20 || *got.Memory.Swap != -1 {
		t.Errorf("memory limit %d swap %d (unlimited swap stays unlimited)", *got.Memory.Limit, *got.Memory.Swap)
	}
	if len(got.HugepageLimits) != 1 || got.HugepageLimits[0].Limit != 6<<20 || got.Unified["memory.high"] != "1000000" {
		t.Errorf("hugepages %+v unified %v", got.HugepageLimits, got.Unified)
	}
	// The request itself is not modified (it is recorded as given).
	if *res.CPU.Shares != 512 || *res.Memory.Limit != 256<<20 || res.HugepageLimits[0].Limit != 4<<20 {
		t.Errorf("PodLimits modified its input: %+v", res)
	}
	// A quota at another period is not added.
	over.CPU.Period = u(50000)
	if got := PodLimits(over, res); *got.CPU.Quota != 50000 {
		t.Errorf("quota at a different period added: %d", *got.CPU.Quota)
	}
}
