package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigFileThenFlags(t *testing.T) {
	f := filepath.Join(t.TempDir(), "peapod.toml")
	err := os.WriteFile(f, []byte(`
socket = "/run/pp-a/peapod.sock"
root = "/var/lib/pp-a"
log_level = "debug"
[cni]
bridge = "ppa0"
subnet = "10.77.0.0/16"
bin_dirs = ["/x", "/y"]
timeout = "5s"
spare = false
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig("t", []string{"--config", f, "--root", "/var/lib/pp-b", "--cni-bin-dir", "/p:/q"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != "/run/pp-a/peapod.sock" || cfg.Root != "/var/lib/pp-b" || cfg.CNI.Bridge != "ppa0" || cfg.CNI.Subnet != "10.77.0.0/16" {
		t.Errorf("config: %+v", cfg)
	}
	if strings.Join(cfg.CNI.BinDirs, ":") != "/p:/q" || cfg.CNI.Timeout.Duration != 5*time.Second || cfg.LogLevel != "debug" || cfg.CNI.Spare {
		t.Errorf("cni: %+v", cfg.CNI)
	}
	if cfg.cgroupParent() != "/peapod-"+cfg.instanceTag() {
		t.Errorf("non-default root should get a tagged cgroup parent, got %s", cfg.cgroupParent())
	}
}

func TestDefaultsMatchTheCLIContract(t *testing.T) {
	cfg, err := parseConfig("t", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Socket != "/run/peapod/peapod.sock" || cfg.Root != "/var/lib/peapod" || cfg.State != "/run/peapod" || cfg.CNI.ConfDir != "/etc/cni/net.d" {
		t.Errorf("defaults: %+v", cfg)
	}
	if cfg.cgroupParent() != "/peapod" {
		t.Errorf("default cgroup parent %s", cfg.cgroupParent())
	}
	if !cfg.CNI.Spare {
		t.Error("the spare network attachment is off by default")
	}
}

func TestConfigRejectsUnknownKeysAndBadValues(t *testing.T) {
	f := filepath.Join(t.TempDir(), "bad.toml")
	_ = os.WriteFile(f, []byte("sockett = \"/x\"\n"), 0o644)
	if _, err := parseConfig("t", []string{"--config=" + f}); err == nil || !strings.Contains(err.Error(), "sockett") {
		t.Errorf("unknown key: %v", err)
	}
	if _, err := parseConfig("t", []string{"--state", "rel"}); err == nil {
		t.Errorf("relative state dir accepted")
	}
	if _, err := parseConfig("t", []string{"--cgroup-driver", "sytsemd"}); err == nil || !strings.Contains(err.Error(), "cgroupfs or systemd") {
		t.Errorf("unknown cgroup driver: %v", err)
	}
	// systemd is a valid name; whether systemd runs here is the daemon's
	// start-up check (cgroups.NewDriver), tested in cgroups and the VM.
	if cfg, err := parseConfig("t", []string{"--cgroup-driver", "systemd"}); err != nil || cfg.CgroupDriver != "systemd" {
		t.Errorf("systemd driver: %v", err)
	}
}
