package rootless

import (
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"

	"peapod/cgroups"
)

// The cgroup v2 preparation itself (the moves into the leaf, the
// controllers enabled: cgroups.PrepareDelegatedV2 and
// PrepareDelegatedV2At) is tested on a real cgroup2 file system in package
// cgroups, and with the real parent under the user's systemd (service,
// scope, restart) in the cgroup v2 VM (integration/vm/rootless-v2.sh).
// This host is cgroup v1, so here: the decisions around it.

func TestPodCgroupParent(t *testing.T) {
	base := "/user.slice/user-1000.slice/user@1000.service/app.slice/peapod-holder-42.scope"
	for _, c := range []struct {
		base, name string
		want       []string
	}{
		{base, "pods", []string{"--cgroup-parent", base + "/pods"}},
		{base, "pods-1a2b", []string{"--cgroup-parent", base + "/pods-1a2b"}},
		{base, "", nil},   // the user chose the parent
		{"", "pods", nil}, // nothing delegated: the daemon keeps its default
	} {
		if got := podCgroupParent(c.base, c.name); !slices.Equal(got, c.want) {
			t.Errorf("podCgroupParent(%q, %q) = %q, want %q", c.base, c.name, got, c.want)
		}
	}
}

// Only a service of the user's own systemd gets a scope for its pods:
// systemd could not restart it otherwise. Scopes, login sessions and
// other users' services use their own cgroup (if delegated).
func TestUserService(t *testing.T) {
	for cg, want := range map[string]bool{
		"/user.slice/user-1000.slice/user@1000.service/app.slice/peapod.service":   true,
		"/user.slice/user-1000.slice/user@1000.service/peapod.service":             true,
		"/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope":     false,
		"/user.slice/user-1000.slice/session-3.scope":                              false,
		"/user.slice/user-1001.slice/user@1001.service/app.slice/peapod.service":   false,
		"/system.slice/peapod.service":                                             false,
		"/user.slice/user-1000.slice/user@1000.service/app.slice/peapod.service/x": false,
		"/user.slice/user-1000.slice/user@1000.service":                            false,
	} {
		if got := userService(cg, 1000); got != want {
			t.Errorf("userService(%q) = %v, want %v", cg, got, want)
		}
	}
}

func TestParseCgroupV2(t *testing.T) {
	for in, want := range map[string]string{
		"0::/user.slice/user-1000.slice/user@1000.service/app.slice/peapod.service\n": "/user.slice/user-1000.slice/user@1000.service/app.slice/peapod.service",
		"12:pids:/user.slice\n1:name=systemd:/user.slice/x\n0::/user.slice/x\n":       "/user.slice/x",
		"0::/\n": "/",
	} {
		if got, err := parseCgroupV2(in); err != nil || got != want {
			t.Errorf("parseCgroupV2(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "12:pids:/x\n", "0::\n"} {
		if got, err := parseCgroupV2(in); err == nil {
			t.Errorf("parseCgroupV2(%q) = %q, want an error", in, got)
		}
	}
	if got := scopeName(4242); got != "peapod-holder-4242.scope" {
		t.Errorf("scopeName = %q", got)
	}
}

// On cgroup v1 the parent leaves its cgroups alone: root delegates
// /peapod-<user> there, and the daemon keeps its default parent.
func TestCgroupV2OnV1(t *testing.T) {
	if cgroups.DetectMode() != cgroups.ModeV1 {
		t.Skip("cgroup v2 host: the VM test covers it")
	}
	before, _ := os.ReadFile("/proc/self/cgroup")
	cg := beginCgroupV2(slog.New(slog.NewTextHandler(io.Discard, nil)), os.Getuid())
	if cg != nil {
		t.Errorf("beginCgroupV2 on v1 = %+v, want nil", cg)
	}
	if base := cg.podsBase(&holderRecord{}); base != "" {
		t.Errorf("podsBase on v1 = %q", base)
	}
	if after, _ := os.ReadFile("/proc/self/cgroup"); string(after) != string(before) {
		t.Errorf("cgroups changed on v1:\n%s\n%s", before, after)
	}
}
