package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"peapod/cri"
	"peapod/image"
	"peapod/internal/binfile"
	"peapod/netns"
	"peapod/pause/embedded"
	"peapod/rootless"
	"peapod/rootless/binder"
	"peapod/rootless/portfwd"
	"peapod/sandbox"
	shimembed "peapod/shim/embedded"
)

// listFlag collects a search list given as repeated flags or ':'/','-separated.
type listFlag struct {
	vals *[]string
	set  bool
}

func (l *listFlag) String() string {
	if l.vals == nil {
		return ""
	}
	return strings.Join(*l.vals, ":")
}

func (l *listFlag) Set(v string) error {
	if !l.set {
		*l.vals = nil
		l.set = true
	}
	for _, p := range strings.FieldsFunc(v, func(r rune) bool { return r == ':' || r == ',' }) {
		*l.vals = append(*l.vals, p)
	}
	return nil
}

// parseConfig reads defaults, then --config, then the other flags.
func parseConfig(name string, args []string) (*config, error) {
	cfg, err := defaultConfig()
	if err != nil {
		return nil, err
	}
	// The config file goes first so that flags override it.
	configFile := defaultConfigFile()
	for i, a := range args {
		var path string
		if a == "--config" || a == "-config" {
			if i+1 < len(args) {
				path = args[i+1]
			}
		} else if v, ok := strings.CutPrefix(a, "--config="); ok {
			path = v
		} else if v, ok := strings.CutPrefix(a, "-config="); ok {
			path = v
		}
		if path != "" {
			configFile = path
		}
	}
	if configFile != "" {
		if err := loadConfigFile(configFile, &cfg); err != nil {
			return nil, err
		}
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.String("config", "", "TOML config file (flags override it)")
	fs.StringVar(&cfg.Socket, "socket", cfg.Socket, "CRI unix socket")
	fs.StringVar(&cfg.Root, "root", cfg.Root, "persistent state directory")
	fs.StringVar(&cfg.State, "state", cfg.State, "runtime state directory (pins, pod files)")
	fs.StringVar(&cfg.LogLevel, "log-level", cfg.LogLevel, "debug, info, warn or error")
	fs.StringVar(&cfg.CgroupDriver, "cgroup-driver", cfg.CgroupDriver, "cgroup driver, as the kubelet's cgroupDriver: cgroupfs, or systemd (pods in slices, pause and containers in scopes; needs systemd as init)")
	fs.StringVar(&cfg.DefaultCgroupParent, "cgroup-parent", cfg.DefaultCgroupParent, "cgroup for pods that name none (default /peapod, or /peapod-<tag> for a non-default --root)")
	fs.StringVar(&cfg.RegistryConfigDir, "registry-config-dir", cfg.RegistryConfigDir, "containerd-style hosts.toml directory for registry mirrors and plain-http registries")
	fs.StringVar(&cfg.StreamAddress, "stream-address", cfg.StreamAddress, "address of the exec/attach/port-forward server")
	fs.StringVar(&cfg.CNI.ConfDir, "cni-conf-dir", cfg.CNI.ConfDir, "CNI network configs; the embedded default network is used when it holds none")
	fs.Var(&listFlag{vals: &cfg.CNI.BinDirs}, "cni-bin-dir", "CNI plugin search list, ':'-separated or repeated")
	fs.StringVar(&cfg.CNI.NetworkName, "network-name", cfg.CNI.NetworkName, "name of the embedded default network")
	fs.StringVar(&cfg.CNI.Bridge, "bridge", cfg.CNI.Bridge, "bridge of the embedded default network")
	fs.StringVar(&cfg.CNI.Subnet, "pod-subnet", cfg.CNI.Subnet, "pod subnet of the embedded default network")
	fs.DurationVar(&cfg.CNI.Timeout.Duration, "cni-timeout", cfg.CNI.Timeout.Duration, "bound on one CNI ADD or DEL")
	fs.DurationVar(&cfg.CNI.DelRetryInterval.Duration, "cni-del-retry-interval", cfg.CNI.DelRetryInterval.Duration, "how often a failed CNI DEL is retried")
	fs.BoolVar(&cfg.CNI.Spare, "network-spare", cfg.CNI.Spare, "keep one network namespace attached to the embedded network ahead of the next pod, which takes it over (the CNI ADD off its start)")
	fs.StringVar(&cfg.Rootless.Net, "rootless-net", cfg.Rootless.Net, "rootless: outbound network helper (auto, slirp4netns or pasta)")
	fs.BoolVar(&cfg.Rootless.HostLoopback, "rootless-host-loopback", cfg.Rootless.HostLoopback, "rootless: let the daemon and pods reach the host's 127.0.0.1 at the gateway address (10.0.2.2)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &cfg, nil
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// programDir is where the daemon writes the programs it carries (pause,
// shim, helper): <state>/bin, or <root>/bin when the state dir's file system
// is mounted noexec, as systemd mounts /run.
func programDir(cfg *config, log *slog.Logger) (string, error) {
	dirs := programDirs(cfg)
	dir, err := binfile.Dir(dirs...)
	if err == nil && dir != dirs[0] {
		log.Info("the state dir's file system is mounted noexec: peapod's programs run from the root dir", "state", cfg.State, "dir", dir)
	}
	return dir, err
}

// programDirs are the places for the programs, in order of preference.
func programDirs(cfg *config) []string {
	return []string{filepath.Join(cfg.State, "bin"), filepath.Join(cfg.Root, "bin")}
}

// installPause writes the embedded pause binary to dir, named by its
// content hash so an upgrade never runs a stale one.
func installPause(dir string) (string, error) {
	if len(embedded.Binary) == 0 {
		return "", fmt.Errorf("this peapod was built without its pause binary; build with `make build`")
	}
	return binfile.Install(dir, "pause", func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(embedded.Binary)), nil
	})
}

func newNetwork(cfg *config) (*netns.Network, error) {
	return netns.NewNetwork(netns.NetworkConfig{
		ConfDir:       cfg.CNI.ConfDir,
		BinDirs:       cfg.CNI.BinDirs,
		CacheDir:      filepath.Join(cfg.Root, "cni", "cache"),
		DefaultName:   cfg.CNI.NetworkName,
		DefaultBridge: cfg.CNI.Bridge,
		DefaultSubnet: cfg.CNI.Subnet,
		IPAMDataDir:   filepath.Join(cfg.Root, "cni", "networks"),
		// Rootless, portmap still maps hostPorts inside the node's own
		// network namespace (for clients there, as a kubelet run with
		// nsenter); the host's ports are forwarded in user space (see
		// hostPorts).
	})
}

// serveRootlessParent is `peapod serve` run by an ordinary user: it sets up
// the user, mount and network namespaces and runs the daemon inside them
// (see package rootless).
func serveRootlessParent(cfg *config, args []string, log *slog.Logger) error {
	_, uid := rootless.Owner()
	if err := rootless.EnsureOwnDir(cfg.State, uid); err != nil {
		return err
	}
	progDir, err := programDir(cfg, log)
	if err != nil {
		return err
	}
	pause, err := installPause(progDir)
	if err != nil {
		return fmt.Errorf("install pause: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// The daemon gets the paths resolved here, so that both agree even
	// where its environment would give other defaults.
	daemonArgs := append(append([]string{}, args...), "--socket", cfg.Socket, "--root", cfg.Root, "--state", cfg.State)
	return rootless.RunParent(rootless.ParentOptions{
		Exe:         exe,
		DaemonArgs:  daemonArgs,
		StateDir:    cfg.State,
		PauseBinary: pause,
		Net:         rootless.NetOptions{Kind: cfg.Rootless.Net, HostLoopback: cfg.Rootless.HostLoopback},
		Log:         log,
		HasPods:     func() bool { return hasPods(cfg.Root) },
		PodCgroup:   cfg.delegatedPodCgroup(),
	})
}

// hostPorts is the publisher of pods' hostPorts for a rootless daemon, nil
// as root (CNI portmap does it). It forwards from sockets the parent binds
// on the host. Under RootlessKit (no peapod parent) RootlessKit's port API
// publishes them. A daemon with neither (unshare) refuses pods with
// hostPorts rather than run them unreachable.
func hostPorts(cfg *config, hostSockets *binder.Client, log *slog.Logger) sandbox.PortPublisher {
	if cfg.mode != rootless.Child {
		return nil
	}
	if rk := rootless.RootlessKitStateDir(); hostSockets == nil && rk != "" {
		p := rootless.NewRootlessKitPorts(rootless.RootlessKitOptions{StateDir: rk, Journal: filepath.Join(cfg.State, "rootlesskit-ports.json"), Log: log})
		if err := p.Err(); err != nil {
			log.Warn("pods with hostPorts are refused", "err", err)
		}
		return p
	}
	var b portfwd.Binder = portfwd.NoHostSockets("this rootless daemon has no peapod parent to bind host ports for it: start it with `peapod serve` as the user")
	if hostSockets != nil {
		b = hostSockets
	}
	return portfwd.NewPublisher(b, portfwd.Options{Log: log})
}

// streamingPortsID names the streaming server's port among the ports a
// rootless daemon publishes through RootlessKit (the others are pods').
const streamingPortsID = "peapod-streaming-server"

// hasPods tells whether the instance at root has any pod record.
func hasPods(root string) bool {
	entries, _ := os.ReadDir(filepath.Join(root, "sandboxes"))
	return len(entries) > 0
}

func serve(args []string) error {
	cfg, err := parseConfig("peapod serve", args)
	if err != nil {
		return err
	}
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	if cfg.mode == rootless.Parent {
		return serveRootlessParent(cfg, args, log)
	}
	// hostSockets binds sockets in the host's network namespace for a
	// rootless daemon started by a peapod parent.
	var hostSockets *binder.Client
	startPPID := os.Getppid()
	if cfg.mode == rootless.Child {
		child := rootless.ChildEnv()
		log.Info("rootless daemon", "user", child.User, "uid", child.UID, "rootlesskit", child.RootlessKit)
		if child.Binder != nil {
			if hostSockets, err = binder.New(child.Binder); err != nil {
				return err
			}
			defer hostSockets.Close()
		}
	}
	if cfg.RegistryConfigDir == "" {
		cfg.RegistryConfigDir = defaultRegistryConfigDir
	}
	progDir, err := programDir(cfg, log)
	if err != nil {
		return err
	}
	pause, err := installPause(progDir)
	if err != nil {
		return fmt.Errorf("install pause: %w", err)
	}
	for _, n := range journalNotes(cfg.Root, cfg.State) {
		log.Warn(n)
	}
	network, err := newNetwork(cfg)
	if err != nil {
		return err
	}
	if err := network.Ready(); err != nil {
		log.Warn("pod network not ready; pods cannot start until it is", "err", err)
	}
	images, err := image.Open(image.Config{Root: filepath.Join(cfg.Root, "images"), RegistryConfigDir: cfg.RegistryConfigDir, Log: log})
	if err != nil {
		return fmt.Errorf("image store: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	// Pods' shims run the lean peapod-shim when this peapod carries one,
	// else `peapod shim` of this binary.
	shimBin, helperBin, err := shimembed.Install(progDir)
	if errors.Is(err, shimembed.ErrNone) {
		log.Info("no lean shim binary embedded; pods' shims run as `peapod shim`")
		shimBin = exe
	} else if err != nil {
		return fmt.Errorf("install the shim binary: %w", err)
	}
	// Programs of earlier versions that no pod runs any more.
	if removed, err := binfile.Prune(progDir, pause, shimBin, helperBin); err != nil {
		log.Warn("remove programs of earlier versions", "dir", progDir, "err", err)
	} else if len(removed) > 0 {
		log.Info("removed programs of earlier versions", "files", removed)
	}
	ctx := context.Background()
	ports := hostPorts(cfg, hostSockets, log)
	mgr, err := sandbox.New(ctx, sandbox.Config{
		Images:              images,
		ShimBinary:          shimBin,
		RootDir:             cfg.Root,
		StateDir:            cfg.State,
		InstanceTag:         cfg.instanceTag(),
		DefaultCgroupParent: cfg.cgroupParent(),
		CgroupDriver:        cfg.CgroupDriver,
		PauseBinary:         pause,
		Network:             network,
		NetworkTimeout:      cfg.CNI.Timeout.Duration,
		RetryInterval:       cfg.CNI.DelRetryInterval.Duration,
		NetworkSpare:        cfg.CNI.Spare,
		Log:                 log,
		Ports:               ports,
	})
	if err != nil {
		return err
	}
	defer mgr.Close()
	// After everything that can fail at start: Close takes the rules away
	// again (with no pod attached), a daemon that returned earlier never
	// made them.
	if err := network.InstallHostRules(); err != nil {
		log.Warn("pod masquerade not in place yet; the first pod retries it", "err", err)
	}
	mgr.StartStatsSampler()
	srv := cri.NewServer(mgr, network, images, cri.Info{
		Version:      version,
		CgroupDriver: cfg.CgroupDriver,
		StatusDetails: map[string]any{
			"root": cfg.Root, "state": cfg.State, "socket": cfg.Socket,
			"cgroupDriver": cfg.CgroupDriver, "defaultCgroupParent": cfg.cgroupParent(),
			"instanceTag": cfg.instanceTag(), "cniConfDir": cfg.CNI.ConfDir, "cniBinDirs": cfg.CNI.BinDirs,
			"registryConfigDir": cfg.RegistryConfigDir,
		},
	}, log)
	// A rootless daemon serves streams on the host's loopback, where
	// crictl and the kubelet are, through a socket its parent binds.
	listen := net.Listen
	if hostSockets != nil {
		// ... and on the same port of its own loopback, for clients
		// inside the rootless node (nsenter), as a kubelet there would be.
		listen = func(network, addr string) (net.Listener, error) {
			return rootless.HostListener(hostSockets.Listen, network, addr)
		}
	}
	streamListener, err := listen("tcp", cfg.StreamAddress)
	if err != nil {
		return fmt.Errorf("streaming server: %w", err)
	}
	if err := srv.StartStreaming(streamListener); err != nil {
		streamListener.Close()
		return err
	}
	// Under RootlessKit, its port driver brings the streaming port to the
	// host's loopback.
	if rk, ok := ports.(*rootless.RootlessKitPorts); ok && rk.Err() == nil {
		port := int32(streamListener.Addr().(*net.TCPAddr).Port)
		if err := rk.Publish(streamingPortsID, "127.0.0.1", []netns.PortMapping{{HostPort: port, ContainerPort: port, Protocol: "tcp", HostIP: "127.0.0.1"}}); err != nil {
			log.Warn("exec, attach and port-forward are reachable inside RootlessKit's namespaces only", "err", err)
		} else {
			defer rk.Unpublish(streamingPortsID)
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	var parentGone <-chan struct{}
	if hostSockets != nil {
		parentGone = hostSockets.Done()
	}
	go func() {
		select {
		case s := <-sigs:
			log.Info("shutting down; pods keep running", "signal", s.String())
		case <-parentGone:
			log.Warn("the rootless parent is gone; shutting down, pods keep running")
		}
		if err := sdNotify("STOPPING=1"); err != nil {
			log.Warn("tell the service manager peapod is stopping", "err", err)
		}
		srv.Stop()
	}()
	err = srv.Serve(cfg.Socket, func() {
		log.Info("peapod serving CRI", "socket", cfg.Socket, "root", cfg.Root, "state", cfg.State, "version", version, "network", network.Describe())
		if err := sdNotify("READY=1"); err != nil {
			log.Warn("tell the service manager peapod is ready", "err", err)
		}
	})
	mgr.Close()
	// The parent removes the namespaces of an instance with no pods; if
	// it was killed, that is left to us.
	if parentGone != nil && os.Getppid() != startPPID && !hasPods(cfg.Root) {
		log.Info("no pods left and the rootless parent is gone: removing the namespaces")
		rootless.Teardown(cfg.State)
	}
	// Running pods keep their cgroups; an instance with none leaves no
	// parent cgroup behind.
	if perr := mgr.RemoveCgroupParentIfEmpty(); perr != nil {
		log.Warn("remove default cgroup parent", "err", perr)
	}
	return err
}
