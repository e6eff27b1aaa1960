package cgroups

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCPUListsUnionAndDepthOrder(t *testing.T) {
	for _, c := range [][3]string{{"0", "1", "0-1"}, {"0-2,7", "3,5", "0-3,5,7"}, {"4", "4", "4"}, {"", "2", "2"}} {
		if got := unionList(c[0], c[1]); got != c[2] {
			t.Errorf("unionList(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
	if _, err := parseCPUList("3-1"); err == nil {
		t.Error("3-1 accepted")
	}
	if err := checkCPUList("cpus", "0-1", "0-3"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"1-", "a", "0,,1", "5"} {
		if err := checkCPUList("cpus", bad, "0-3"); !errors.Is(err, ErrInvalidResources) {
			t.Errorf("cpus %q: %v", bad, err)
		}
	}
	p := []string{"/a", "/a/b/c", "/a/b"}
	sortDeepestFirst(p)
	if strings.Join(p, " ") != "/a/b/c /a/b /a" {
		t.Errorf("sortDeepestFirst = %v", p)
	}
}

// Checks that need no cgroup: each bad value is ErrInvalidResources and
// names itself.
func TestPodResourcesRejectNonsense(t *testing.T) {
	p := PodCgroup{Mode: ModeV1, PodPath: "/x", PausePath: "/x/y"}
	u := func(v uint64) *uint64 { return &v }
	i := func(v int64) *int64 { return &v }
	for name, r := range map[string]*specs.LinuxResources{
		"shares 1":       {CPU: &specs.LinuxCPU{Shares: u(1)}},
		"period 10":      {CPU: &specs.LinuxCPU{Period: u(10)}},
		"quota 999":      {CPU: &specs.LinuxCPU{Quota: i(999)}},
		"memory -5":      {Memory: &specs.LinuxMemory{Limit: i(-5)}},
		"swap, no limit": {Memory: &specs.LinuxMemory{Swap: i(100)}},
		"swap < limit":   {Memory: &specs.LinuxMemory{Limit: i(200), Swap: i(100)}},
		"pids -2":        {Pids: &specs.LinuxPids{Limit: i(-2)}},
		"unified on v1":  {Unified: map[string]string{"memory.high": "1"}},
		"unified cgroup": {Unified: map[string]string{"cgroup.procs": "1"}},
		"pids.max junk":  {Unified: map[string]string{"pids.max": "lots"}},
	} {
		if _, err := p.resources(map[string]string{}, r); !errors.Is(err, ErrInvalidResources) {
			t.Errorf("%s: %v, want ErrInvalidResources", name, err)
		}
	}
	// Accepted: unset fields stay unset, pids.max becomes the pids limit,
	// hugepages without a hugetlb controller are dropped.
	res, err := p.resources(map[string]string{}, &specs.LinuxResources{
		CPU:            &specs.LinuxCPU{Shares: u(0), Quota: i(-1)},
		Unified:        map[string]string{"pids.max": "max"},
		HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 0}},
	})
	if err != nil || res.CpuShares != 0 || res.CpuQuota != -1 || res.PidsLimit == nil || *res.PidsLimit != -1 || len(res.HugetlbLimit) != 0 || !res.SkipDevices {
		t.Errorf("resources = %+v, %v", res, err)
	}
}

// A pod cgroup that is gone is ErrNotFound, not an invalid request.
func TestSetResourcesOnGoneCgroupIsNotFound(t *testing.T) {
	requireRoot(t)
	mnts := mountedHierarchies(t)
	p := newTestPodCgroup(t, mnts)
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	shares := uint64(512)
	if err := p.SetResources(&specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: &shares}}); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetResources on a removed pod cgroup: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnts[0], p.PodPath)); err == nil {
		t.Errorf("SetResources recreated %s", p.PodPath)
	}
}
