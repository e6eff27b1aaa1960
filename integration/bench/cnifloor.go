package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"
)

// The reference network: the same chain again, on a bridge of its own.
const (
	floorNetwork = "ppbcni0"
	floorSubnet  = "10.95.0.0/24"
)

// cniFloor is the time of the CNI plugins alone, as both runtimes call
// them: loopback ADD then the network list ADD (bridge + host-local,
// portmap), and the DELs in reverse, through libcni, into a fresh netns.
// No runtime can attach a pod faster than this, so it is the floor under
// RunPodSandbox (and part of StopPodSandbox) for both.
type cniFloor struct {
	add, del []time.Duration
}

func benchCNIFloor(ctx context.Context, env *benchEnv, n int, cl *cleanups) (*cniFloor, error) {
	dir := filepath.Join(env.base, "cni-floor")
	nsDir := filepath.Join(dir, "netns")
	for _, d := range []string{dir, nsDir, filepath.Join(dir, "ipam"), filepath.Join(dir, "cache")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	env.leaks.add(networkLeaks(floorNetwork))
	cl.add("cni floor: bridge "+floorNetwork, func() error { return deleteLink(floorNetwork) })
	cl.add("cni floor: iptables rules of network "+floorNetwork, func() error { return removeCNIIptables(floorNetwork) })
	cl.add("cni floor: netns pins", func() error { return unmountUnder(nsDir) })

	b, err := bridgeConfList("1.1.0", floorNetwork, floorSubnet, filepath.Join(dir, "ipam"))
	if err != nil {
		return nil, err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, err
	}
	lo, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"ppbench-loopback","plugins":[{"type":"loopback"}]}`))
	if err != nil {
		return nil, err
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{env.cniBinDir}, filepath.Join(dir, "cache"), nil)

	res := &cniFloor{}
	// One warm-up attachment first, as for the runtimes: it makes the bridge.
	for i := range n + 1 {
		id := fmt.Sprintf("ppbench-cni-%03d", i)
		ns := filepath.Join(nsDir, id)
		if err := pinNewNetns(ns); err != nil {
			return nil, err
		}
		rt := func(ifName string) *libcni.RuntimeConf {
			return &libcni.RuntimeConf{ContainerID: id, NetNS: ns, IfName: ifName, Args: [][2]string{
				{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "peapod-bench"}, {"K8S_POD_NAME", id},
				{"K8S_POD_INFRA_CONTAINER_ID", id}, {"K8S_POD_UID", id},
			}}
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		start := time.Now()
		_, err := cni.AddNetworkList(cctx, lo, rt("lo"))
		if err == nil {
			_, err = cni.AddNetworkList(cctx, list, rt("eth0"))
		}
		add := time.Since(start)
		start = time.Now()
		delErr := cni.DelNetworkList(cctx, list, rt("eth0"))
		if delErr == nil {
			delErr = cni.DelNetworkList(cctx, lo, rt("lo"))
		}
		del := time.Since(start)
		cancel()
		_ = unix.Unmount(ns, unix.MNT_DETACH)
		_ = os.Remove(ns)
		if err != nil {
			return nil, fmt.Errorf("CNI ADD: %w", err)
		}
		if delErr != nil {
			return nil, fmt.Errorf("CNI DEL: %w", delErr)
		}
		if i > 0 {
			res.add = append(res.add, add)
			res.del = append(res.del, del)
		}
	}
	return res, nil
}

// pinNewNetns creates a network namespace and bind-mounts it to path. The
// namespace is made on a thread of its own that is never given back to the
// Go scheduler: the goroutine ends locked, so the thread ends with it.
func pinNewNetns(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("pin netns at %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return err
	}
	return nil
}
