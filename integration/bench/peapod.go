package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Network of the private peapod instance: its embedded default network
// (bridge + host-local + portmap, loopback) under names of its own.
const (
	peapodNetwork = "ppbench0"
	peapodSubnet  = "10.97.0.0/24"
)

// startPeapod starts a private peapod with its own socket, dirs and network,
// and registers the undo of everything it may leave on the host.
func startPeapod(ctx context.Context, env *benchEnv, cl *cleanups) (*target, error) {
	dir := filepath.Join(env.base, "peapod")
	confDir := filepath.Join(dir, "net.d") // empty: the embedded default network
	for _, d := range []string{dir, confDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	socket := filepath.Join(dir, "peapod.sock")
	root := filepath.Join(dir, "root")
	state := filepath.Join(dir, "state")

	// Undo, in the reverse of this order: host objects keyed by our names
	// last, after the daemon and the pods are gone.
	env.leaks.add(networkLeaks(peapodNetwork))
	cl.add("peapod: bridge "+peapodNetwork, func() error { return deleteLink(peapodNetwork) })
	cl.add("peapod: iptables rules of network "+peapodNetwork, func() error { return removeCNIIptables(peapodNetwork) })

	d, err := startDaemonProcess("peapod", filepath.Join(dir, "daemon.log"), env.peapodBin,
		"serve", "--socket", socket, "--root", root, "--state", state,
		"--cni-conf-dir", confDir, "--cni-bin-dir", env.cniBinDir,
		"--bridge", peapodNetwork, "--pod-subnet", peapodSubnet, "--network-name", peapodNetwork)
	if err != nil {
		return nil, err
	}
	var cgroupParent string
	cl.add("peapod: daemon and what a dead daemon leaves", func() error {
		var errs []string
		if err := d.stop(10 * time.Second); err != nil {
			errs = append(errs, err.Error())
		}
		// Pause processes run the copy of the pause binary in our state dir.
		if k := killProcesses(func(p *procInfo) bool {
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.pid))
			return strings.HasPrefix(exe, state+"/")
		}); len(k) > 0 {
			errs = append(errs, fmt.Sprintf("killed %d leftover pause processes", len(k)))
		}
		if err := unmountUnder(dir); err != nil {
			errs = append(errs, err.Error())
		}
		// Only a parent of this instance alone (/peapod-<tag>): never the
		// shared default /peapod of other instances.
		if strings.HasPrefix(filepath.Base(cgroupParent), "peapod-") {
			if err := removeCgroupTree(cgroupParent); err != nil {
				errs = append(errs, err.Error())
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return nil
	})

	c, err := dialCRI(ctx, socket, d, 20*time.Second)
	if err != nil {
		return nil, err
	}
	cl.add("peapod: close CRI connection", func() error { c.close(); return nil })
	cl.add("peapod: remove pods", func() error {
		if !d.alive() {
			return fmt.Errorf("daemon is gone (%v); its pods are swept instead", d.exitErr)
		}
		return c.removeAllPods(2 * time.Minute)
	})
	t := &target{name: "peapod", cri: c, daemon: d, network: peapodNetwork}
	// The pod's shim starts with the sandbox (not as the pause's parent):
	// it is the process whose --dir is the sandbox's shim dir.
	t.extraPodProcs = func(id string, procs map[int]*procInfo) []*procInfo {
		dir := filepath.Join(state, "sandboxes", id, "shim")
		var shims []*procInfo
		for _, p := range procs {
			for i, a := range p.argv {
				if a == "--dir" && i+1 < len(p.argv) && p.argv[i+1] == dir {
					shims = append(shims, p)
					break
				}
			}
		}
		return shims
	}
	if t.version, err = c.version(ctx); err != nil {
		return nil, fmt.Errorf("peapod Version: %w", err)
	}
	cgroupParent = peapodCgroupParent(ctx, c)
	if strings.HasPrefix(filepath.Base(cgroupParent), "peapod-") {
		env.leaks.add(cgroupLeaks(func() []string { return []string{cgroupParent} }))
	}
	if err := c.waitReady(ctx, 20*time.Second); err != nil {
		return nil, fmt.Errorf("peapod: %w", err)
	}
	// The daemon writes the embedded pause binary to <state>/bin/pause-<hash>.
	if m, _ := filepath.Glob(filepath.Join(state, "bin", "pause-*")); len(m) == 1 {
		if st, err := os.Stat(m[0]); err == nil {
			t.pauseBinaryBytes, t.pauseBinaryFrom = st.Size(), "<state>/bin/"+filepath.Base(m[0])
		}
	}
	return t, nil
}

// peapodCgroupParent reads the instance's default cgroup parent from the
// verbose Status, so that cleanup can remove it once it is empty.
func peapodCgroupParent(ctx context.Context, c *criClient) string {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	st, err := c.rt.Status(ctx, &runtime.StatusRequest{Verbose: true})
	if err != nil {
		return ""
	}
	for _, v := range st.Info {
		var cfg struct {
			DefaultCgroupParent string `json:"defaultCgroupParent"`
		}
		if json.Unmarshal([]byte(v), &cfg) == nil && cfg.DefaultCgroupParent != "" && cfg.DefaultCgroupParent != "/" {
			return cfg.DefaultCgroupParent
		}
	}
	return ""
}
