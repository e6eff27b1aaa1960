package main

import (
	"os"
	"path/filepath"
	"testing"
)

// The pods' cgroup inside a delegated cgroup v2 subtree (what the rootless
// parent appends to the daemon's flags): pods, tagged for a non-default
// root, nothing when the user chose a parent by flag or config file.
func TestDelegatedPodCgroup(t *testing.T) {
	cfg, err := parseConfig("t", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.delegatedPodCgroup(); got != "pods" {
		t.Errorf("default root: %q, want pods", got)
	}
	cfg, err = parseConfig("t", []string{"--root", "/var/lib/pp-other"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.delegatedPodCgroup(), "pods-"+cfg.instanceTag(); got != want {
		t.Errorf("non-default root: %q, want %q", got, want)
	}
	cfg, err = parseConfig("t", []string{"--cgroup-parent", "/mine"})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.delegatedPodCgroup(); got != "" {
		t.Errorf("--cgroup-parent set: %q, want \"\"", got)
	}
	f := filepath.Join(t.TempDir(), "peapod.toml")
	if err := os.WriteFile(f, []byte("default_cgroup_parent = \"/mine\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = parseConfig("t", []string{"--config", f})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.delegatedPodCgroup(); got != "" {
		t.Errorf("default_cgroup_parent in the config: %q, want \"\"", got)
	}
}
