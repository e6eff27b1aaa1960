package netns

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoPortmap checks the rootless option: the embedded network has no
// portmap plugin, needs no portmap binary, and hands no port mappings to
// any plugin, while the default keeps portmap for pods with hostPorts.
func TestNoPortmap(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// Ready only looks the plugins up; none is run here.
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		if err := os.WriteFile(filepath.Join(bin, p), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	req := AttachRequest{SandboxID: "abc", PodName: "p", PodNamespace: "ns", PodUID: "u",
		PortMappings: []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}}
	plugins := func(att *Attachment) []string {
		var conf struct {
			Plugins []struct {
				Type string `json:"type"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(att.ConfList, &conf); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range conf.Plugins {
			out = append(out, p.Type)
		}
		return out
	}
	for _, noPortmap := range []bool{false, true} {
		n, err := NewNetwork(NetworkConfig{
			ConfDir: filepath.Join(dir, "conf"), BinDirs: []string{bin},
			CacheDir: filepath.Join(dir, "cache"), IPAMDataDir: filepath.Join(dir, "ipam"),
			NoPortmap: noPortmap,
		})
		if err != nil {
			t.Fatal(err)
		}
		att, err := n.Prepare(req)
		if err != nil {
			t.Fatal(err)
		}
		types := strings.Join(plugins(att), ",")
		_, capped := att.CapArgs["portMappings"]
		rerr := n.Ready()
		if noPortmap {
			if types != "bridge" || capped {
				t.Errorf("NoPortmap: plugins %s, portMappings capability passed %v; want bridge alone and none", types, capped)
			}
			if rerr != nil {
				t.Errorf("NoPortmap: Ready wants %v", rerr)
			}
		} else {
			if types != "bridge,portmap" || !capped {
				t.Errorf("default: plugins %s, portMappings capability passed %v; want bridge,portmap and passed", types, capped)
			}
			if rerr == nil || !strings.Contains(rerr.Error(), "portmap") {
				t.Errorf("default without a portmap binary: Ready says %v", rerr)
			}
		}
	}
}

// TestUsesCgroup: only a plugin that declares the cgroupPath capability
// makes the runtime create the pod cgroup before the ADD.
func TestUsesCgroup(t *testing.T) {
	for _, c := range []struct {
		conf string
		want bool
	}{
		{`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}`, false},
		{`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"ebpf","capabilities":{"cgroupPath":true}}]}`, true},
		{`{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"x","capabilities":{"cgroupPath":false}}]}`, false},
		{`not json`, true},
	} {
		att := &Attachment{ConfList: json.RawMessage(c.conf)}
		if got := att.UsesCgroup(); got != c.want {
			t.Errorf("UsesCgroup(%s) = %v, want %v", c.conf, got, c.want)
		}
	}
	n, err := NewNetwork(NetworkConfig{ConfDir: t.TempDir(), CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	att, err := n.Prepare(AttachRequest{SandboxID: "abc", CgroupPath: "/peapod/abc"})
	if err != nil {
		t.Fatal(err)
	}
	if att.UsesCgroup() {
		t.Error("the embedded network asks for the pod cgroup during ADD")
	}
}

func TestSpareFits(t *testing.T) {
	n, err := NewNetwork(NetworkConfig{ConfDir: t.TempDir(), DefaultName: "fit", DefaultBridge: "fit0", DefaultSubnet: "10.123.0.0/24", IPAMDataDir: t.TempDir(), CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	prep := func(req AttachRequest) *Attachment {
		t.Helper()
		a, err := n.Prepare(req)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	spare := prep(AttachRequest{SandboxID: "peapod-spare-x"})
	if !spare.SpareFits(spare) {
		t.Fatal("a spare of the embedded network does not fit itself")
	}
	plain := prep(AttachRequest{SandboxID: "p", PodName: "a", PodNamespace: "b", PodUID: "c", CgroupPath: "/kubepods/p", Annotations: map[string]string{"k": "v"}})
	if !plain.SpareFits(spare) {
		t.Error("a pod without host ports does not take the spare: pod names, cgroup path and annotations reach no embedded plugin")
	}
	ports := prep(AttachRequest{SandboxID: "p", PortMappings: []PortMapping{{HostPort: 8080, ContainerPort: 80, Protocol: "tcp"}}})
	if ports.SpareFits(spare) {
		t.Error("a pod with host ports takes the spare; portmap never saw its ports")
	}
	other := *plain
	other.ConfList = []byte(`{"cniVersion":"1.1.0","name":"fit","plugins":[{"type":"bridge","bridge":"other0"}]}`)
	if other.SpareFits(spare) {
		t.Error("a spare made for another configuration fits")
	}
	custom := *plain
	custom.Embedded = false
	if custom.SpareFits(spare) {
		t.Error("a pod of a configured (not embedded) network takes the spare")
	}
	cg := *plain
	cg.ConfList = []byte(`{"cniVersion":"1.1.0","name":"fit","plugins":[{"type":"bridge","capabilities":{"cgroupPath":true}}]}`)
	cgSpare := *spare
	cgSpare.ConfList = cg.ConfList
	if cg.SpareFits(&cgSpare) {
		t.Error("a pod whose plugin reads its cgroup takes a spare attached without it")
	}
	if plain.ContainerID("sb") != "sb" {
		t.Errorf("ContainerID of a pod's own attachment: %q", plain.ContainerID("sb"))
	}
	taken := *spare
	taken.CNIID = "peapod-spare-x"
	if taken.ContainerID("sb") != "peapod-spare-x" {
		t.Errorf("ContainerID of a taken spare: %q, want the spare's id", taken.ContainerID("sb"))
	}
}
