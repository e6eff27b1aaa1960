package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Network of the private containerd: the same plugin chain as peapod's
// embedded default (bridge with host-local, portmap; loopback is added by
// both runtimes on their own), on its own bridge and subnet.
const (
	containerdNetwork = "ppbctd0"
	containerdSubnet  = "10.98.0.0/24"
	// pauseImageRef names the locally built pause image. A registry-style
	// name with a dot in its first component is left as it is by the CRI
	// plugin's reference normalisation (no docker.io/ prefix is added).
	pauseImageRef = "peapod.local/bench/pause:1"
	// criNamespace is the containerd namespace the CRI plugin works in.
	criNamespace = "k8s.io"
)

// containerdConfig is a containerd 1.6 (config version 2) configuration for
// an instance that shares nothing with a system containerd: every path that
// defaults to /var/lib/containerd, /run/containerd or /opt/containerd is
// moved under dir.
//
// Quirks this works around:
//   - runc's state of the v2 shim defaults to /run/containerd/runc/<ns>
//     whatever `state` says; the runtime option Root moves it.
//   - The CRI plugin gives the sandbox oom_score_adj -998, which root
//     without CAP_SYS_RESOURCE may not set (runc fails the sandbox):
//     restrict_oom_score_adj clamps it to containerd's own score.
//   - Network namespaces go to /var/run/netns unless
//     netns_mounts_under_state_dir is set.
//   - The shims' sockets stay at /run/containerd/s/<hash>: that path is
//     compiled in (the hash covers our grpc address, so they never clash
//     with a system containerd's).
func containerdConfig(dir, socket, cniBin, cniConf, image string) string {
	q := strconv.Quote
	return fmt.Sprintf(`version = 2
root = %s
state = %s
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = %s

[ttrpc]
  address = %s

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = %s

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %s
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    disable_apparmor = true

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %s
      conf_dir = %s
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = %s
          SystemdCgroup = false
`,
		q(filepath.Join(dir, "root")), q(filepath.Join(dir, "state")),
		q(socket), q(socket+".ttrpc"),
		q(filepath.Join(dir, "opt")),
		q(image),
		q(cniBin), q(cniConf),
		q(filepath.Join(dir, "runc")))
}

// bridgeConfList is peapod's embedded default network (see
// netns.embeddedConfList) under another name, bridge and subnet: bridge
// (isGateway, ipMasq, hairpinMode) with host-local IPAM, then portmap.
func bridgeConfList(cniVersion, name, subnet, ipamDir string) ([]byte, error) {
	return json.MarshalIndent(map[string]any{
		"cniVersion": cniVersion,
		"name":       name,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      name,
				"isGateway":   true,
				"ipMasq":      true,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": subnet}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": ipamDir,
				},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
				"snat":         true,
			},
		},
	}, "", "  ")
}

// startContainerd starts a private containerd with the CRI plugin, imports
// the pause image into it and registers the undo of everything it may
// leave on the host.
func startContainerd(ctx context.Context, env *benchEnv, cl *cleanups) (*target, error) {
	if env.pauseBin == "" {
		return nil, fmt.Errorf("containerd needs a pause image and no registry is reachable: the bench builds one from pause/embedded/pause.bin, which is missing (run `make pause`, or pass -pause)")
	}
	dir := filepath.Join(env.base, "containerd")
	confDir := filepath.Join(dir, "net.d")
	ipamDir := filepath.Join(dir, "cni-ipam")
	for _, d := range []string{dir, confDir, ipamDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	socket := filepath.Join(dir, "containerd.sock")
	runcRoot := filepath.Join(dir, "runc")

	// Host paths containerd 1.6 uses whatever the config says: the shims'
	// socket dir, the sandboxes' cgroups /k8s.io/<id> (the namespace, when
	// a pod names no cgroup_parent), and libcni's default result cache
	// /var/lib/cni (the CRI plugin has no setting for it). Remove what this
	// run created.
	_, runDirErr := os.Stat("/run/containerd")
	_, cniCacheErr := os.Stat(cniCacheDir)
	cgroupParentExisted := cgroupExists("/" + criNamespace)
	var sandboxIDs []string // every sandbox this run made
	env.leaks.add(cgroupLeaks(func() []string {
		var paths []string
		for _, id := range sandboxIDs {
			paths = append(paths, "/"+criNamespace+"/"+id)
		}
		if !cgroupParentExisted {
			paths = append(paths, "/"+criNamespace)
		}
		return paths
	}))
	env.leaks.add(func() []string {
		var left []string
		for _, id := range sandboxIDs {
			if _, err := os.Stat(shimSocketPath(socket, id)); err == nil {
				left = append(left, "shim socket "+shimSocketPath(socket, id))
			}
			left = append(left, cniCacheFiles(id)...)
		}
		if cniCacheErr != nil {
			if _, err := os.Stat(cniCacheDir); err == nil {
				left = append(left, "directory "+cniCacheDir)
			}
		}
		return left
	})
	env.leaks.add(networkLeaks(containerdNetwork))
	cl.add("containerd: host paths outside its dirs", func() error {
		var errs []error
		for _, id := range sandboxIDs {
			_ = os.Remove(shimSocketPath(socket, id))
			for _, f := range cniCacheFiles(id) {
				_ = os.Remove(f)
			}
			if err := removeCgroupTree("/" + criNamespace + "/" + id); err != nil {
				errs = append(errs, err)
			}
		}
		if !cgroupParentExisted {
			if err := removeCgroupTree("/" + criNamespace); err != nil {
				errs = append(errs, err)
			}
		}
		if cniCacheErr != nil { // only if empty, as below
			_ = os.Remove(filepath.Join(cniCacheDir, "results"))
			_ = os.Remove(cniCacheDir)
		}
		if runDirErr != nil { // only if empty: a system containerd may have started meanwhile
			_ = os.Remove("/run/containerd/s")
			_ = os.Remove("/run/containerd")
		}
		return errors.Join(errs...)
	})
	cl.add("containerd: bridge "+containerdNetwork, func() error { return deleteLink(containerdNetwork) })
	cl.add("containerd: iptables rules of network "+containerdNetwork, func() error { return removeCNIIptables(containerdNetwork) })

	// cniVersion 1.0.0, not peapod's 1.1.0: containerd 1.6 links a libcni
	// that knows spec versions up to 1.0.0 only. The plugins behave the
	// same under both.
	conflist, err := bridgeConfList("1.0.0", containerdNetwork, containerdSubnet, ipamDir)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-"+containerdNetwork+".conflist"), conflist, 0o644); err != nil {
		return nil, err
	}
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(containerdConfig(dir, socket, env.cniBinDir, confDir, pauseImageRef)), 0o644); err != nil {
		return nil, err
	}
	archive := filepath.Join(dir, "pause-oci.tar")
	if err := writePauseImage(archive, env.pauseBin, pauseImageRef); err != nil {
		return nil, fmt.Errorf("build pause image: %w", err)
	}

	d, err := startDaemonProcess("containerd", filepath.Join(dir, "daemon.log"), env.containerdBin, "--config", cfgPath)
	if err != nil {
		return nil, err
	}
	cl.add("containerd: daemon and what a dead daemon leaves", func() error {
		var errs []string
		if err := d.stop(15 * time.Second); err != nil {
			errs = append(errs, err.Error())
		}
		// Sandboxes whose RunPodSandbox never answered (the daemon died
		// meanwhile) are known only by their state directories.
		for _, stateDir := range []string{filepath.Join(runcRoot, criNamespace), filepath.Join(dir, "state", "io.containerd.runtime.v2.task", criNamespace)} {
			ents, _ := os.ReadDir(stateDir)
			for _, e := range ents {
				if e.IsDir() && !slices.Contains(sandboxIDs, e.Name()) {
					sandboxIDs = append(sandboxIDs, e.Name())
				}
			}
		}
		if k := killProcesses(func(p *procInfo) bool { return isShimOf(p, socket, "") }); len(k) > 0 {
			errs = append(errs, fmt.Sprintf("killed %d leftover shims", len(k)))
		}
		if n := runcDeleteAll(env.runcBin, filepath.Join(runcRoot, criNamespace)); n > 0 {
			errs = append(errs, fmt.Sprintf("deleted %d leftover runc containers", n))
		}
		if err := unmountUnder(dir); err != nil {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return fmt.Errorf("%s", strings.Join(errs, "; "))
		}
		return nil
	})

	c, err := dialCRI(ctx, socket, d, 30*time.Second)
	if err != nil {
		return nil, err
	}
	c.onCreate = func(id string) { sandboxIDs = append(sandboxIDs, id) }
	cl.add("containerd: close CRI connection", func() error { c.close(); return nil })
	cl.add("containerd: remove pods", func() error {
		if !d.alive() {
			return fmt.Errorf("daemon is gone (%v); its pods are swept instead", d.exitErr)
		}
		return c.removeAllPods(2 * time.Minute)
	})
	t := &target{name: "containerd", cri: c, daemon: d, network: containerdNetwork}
	// containerd listens before its CRI plugin is up, which answers
	// "server is not initialized yet" meanwhile.
	for deadline := time.Now().Add(30 * time.Second); ; {
		t.version, err = c.version(ctx)
		if err == nil || !strings.Contains(err.Error(), "not initialized") || time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
	if err != nil {
		return nil, fmt.Errorf("containerd Version: %w\n%s", err, d.logTail(30))
	}
	if err := c.waitReady(ctx, 30*time.Second); err != nil {
		return nil, fmt.Errorf("containerd: %w\n%s", err, d.logTail(30))
	}

	imp := exec.CommandContext(ctx, env.ctrBin, "--address", socket, "--namespace", criNamespace, "images", "import", archive)
	if out, err := imp.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ctr images import %s: %v: %s", archive, err, strings.TrimSpace(string(out)))
	}
	if err := c.waitImage(ctx, pauseImageRef, 10*time.Second); err != nil {
		return nil, err
	}
	st, err := os.Stat(env.pauseBin)
	if err != nil {
		return nil, err
	}
	t.pauseBinaryBytes, t.pauseBinaryFrom = st.Size(), "/pause in "+pauseImageRef
	t.extraPodProcs = func(id string, procs map[int]*procInfo) []*procInfo {
		var shims []*procInfo
		for _, p := range procs {
			if isShimOf(p, socket, id) {
				shims = append(shims, p)
			}
		}
		return shims
	}
	return t, nil
}

// isShimOf says whether p is a containerd-shim-runc-v2 of the containerd
// at address, for sandbox id (any sandbox when id is "").
func isShimOf(p *procInfo, address, id string) bool {
	if len(p.argv) == 0 || !strings.HasPrefix(filepath.Base(p.argv[0]), "containerd-shim") {
		return false
	}
	var addr, pid string
	for i := 0; i+1 < len(p.argv); i++ {
		switch p.argv[i] {
		case "-address":
			addr = p.argv[i+1]
		case "-id":
			pid = p.argv[i+1]
		}
	}
	return addr == address && (id == "" || pid == id)
}

// shimSocketPath is where containerd 1.6 puts a shim's socket: a hash of
// the daemon's address, the namespace and the sandbox id under the
// compiled-in /run/containerd/s.
func shimSocketPath(address, id string) string {
	sum := sha256.Sum256([]byte(filepath.Join(address, criNamespace, id)))
	return fmt.Sprintf("/run/containerd/s/%x", sum)
}

// cniCacheDir is libcni's default cache, where containerd 1.6 keeps each
// attachment's result as results/<network>-<sandbox id>-<ifname>.
const cniCacheDir = "/var/lib/cni"

// cniCacheFiles lists the cached CNI results of one sandbox. A CNI DEL
// removes them; a daemon that died first does not.
func cniCacheFiles(id string) []string {
	m, _ := filepath.Glob(filepath.Join(cniCacheDir, "results", "*-"+id+"-*"))
	return m
}

// runcDeleteAll force-deletes every container in a runc state root.
func runcDeleteAll(runc, root string) int {
	ents, err := os.ReadDir(root)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() && exec.Command(runc, "--root", root, "delete", "--force", e.Name()).Run() == nil {
			n++
		}
	}
	return n
}

// waitImage polls the CRI image service until it knows ref: the CRI plugin
// learns about images imported with ctr from containerd's events.
func (c *criClient) waitImage(ctx context.Context, ref string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.img.ImageStatus(cctx, &runtime.ImageStatusRequest{Image: &runtime.ImageSpec{Image: ref}})
		cancel()
		if err == nil && st.GetImage() != nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd does not list the imported image %s (err %v)", ref, err)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}
