package rootless

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"peapod/cgroups"
)

// The cgroup v2 preparation itself (cgroups.PrepareDelegatedV2: the move
// into the leaf, the controllers enabled) is tested on a real cgroup2 file
// system in package cgroups, and with the real parent under systemd in the
// cgroup v2 VM (integration/vm/rootless-v2.sh). This host is cgroup v1, so
// here: what the parent makes of it.

func TestPodCgroupParent(t *testing.T) {
	own := "/user.slice/user-1000.slice/user@1000.service/app.slice/peapod.service"
	for _, c := range []struct {
		own, name string
		want      []string
	}{
		{own, "pods", []string{"--cgroup-parent", own + "/pods"}},
		{own, "pods-1a2b", []string{"--cgroup-parent", own + "/pods-1a2b"}},
		{own, "", nil},    // the user chose the parent
		{"", "pods", nil}, // nothing delegated: the daemon keeps its default
	} {
		if got := podCgroupParent(c.own, c.name); !slices.Equal(got, c.want) {
			t.Errorf("podCgroupParent(%q, %q) = %q, want %q", c.own, c.name, got, c.want)
		}
	}
}

// The mark is read from a plain directory's xattrs: only systemd can put
// it on a real cgroup (user.* xattrs on cgroupfs need kernel 5.7 and the
// cgroup's owner; the VM test reads the real one).
func TestDelegationMark(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Setxattr(dir, "user.probe", []byte("x"), 0); errors.Is(err, unix.ENOTSUP) {
		if got := delegationMark(dir); got != "" {
			t.Fatalf("no xattr support: mark %q, want \"\"", got)
		}
		return
	} else if err != nil {
		t.Fatal(err)
	}
	if got := delegationMark(dir); got != "0" {
		t.Errorf("unmarked dir: %q, want 0", got)
	}
	if err := unix.Setxattr(dir, "user.delegate", []byte("0"), 0); err != nil {
		t.Fatal(err)
	}
	if got := delegationMark(dir); got != "0" {
		t.Errorf("user.delegate=0: %q, want 0", got)
	}
	if err := unix.Setxattr(dir, "user.delegate", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	if got := delegationMark(dir); got != "1" {
		t.Errorf("user.delegate=1: %q, want 1", got)
	}
}

// On cgroup v1 the parent leaves its cgroups alone: root delegates
// /peapod-<user> there, and the daemon keeps its default parent.
func TestDelegatedCgroupV2OnV1(t *testing.T) {
	if cgroups.DetectMode() != cgroups.ModeV1 {
		t.Skip("cgroup v2 host: the VM test covers it")
	}
	before, _ := os.ReadFile("/proc/self/cgroup")
	if own := delegatedCgroupV2(slog.New(slog.NewTextHandler(io.Discard, nil))); own != "" {
		t.Errorf("delegatedCgroupV2 on v1 = %q, want \"\"", own)
	}
	if after, _ := os.ReadFile("/proc/self/cgroup"); string(after) != string(before) {
		t.Errorf("cgroups changed on v1:\n%s\n%s", before, after)
	}
}
