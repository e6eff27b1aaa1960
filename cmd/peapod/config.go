package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"peapod/rootless"
)

// config is the daemon's configuration: defaults, then the TOML file, then
// flags. Every path is configurable so instances can run side by side.
type config struct {
	Socket              string `toml:"socket"`
	Root                string `toml:"root"`
	State               string `toml:"state"`
	LogLevel            string `toml:"log_level"`
	CgroupDriver        string `toml:"cgroup_driver"`
	DefaultCgroupParent string `toml:"default_cgroup_parent"`
	// RegistryConfigDir holds containerd-style <registry-host>/hosts.toml
	// files: mirrors, plain-http registries, TLS settings.
	RegistryConfigDir string `toml:"registry_config_dir"`
	// StreamAddress is where exec/attach/port-forward are served.
	StreamAddress string         `toml:"stream_address"`
	CNI           cniConfig      `toml:"cni"`
	Rootless      rootlessConfig `toml:"rootless"`

	// mode is how this process runs (root, rootless parent or daemon);
	// defaultRootDir is the default of Root for that mode.
	mode           rootless.Mode
	defaultRootDir string
	// rootlessUser names the user a rootless instance belongs to.
	rootlessUser string
}

// rootlessConfig tunes a rootless instance (ignored as root).
type rootlessConfig struct {
	// Net is auto, slirp4netns or pasta.
	Net string `toml:"net"`
	// HostLoopback lets the daemon and pods reach the host's 127.0.0.1
	// through the network helper's gateway address (10.0.2.2).
	HostLoopback bool `toml:"host_loopback"`
}

type cniConfig struct {
	ConfDir     string   `toml:"conf_dir"`
	BinDirs     []string `toml:"bin_dirs"`
	NetworkName string   `toml:"network_name"`
	Bridge      string   `toml:"bridge"`
	Subnet      string   `toml:"subnet"`
	Timeout     duration `toml:"timeout"`
	// DelRetryInterval is how often a failed CNI DEL is tried again.
	DelRetryInterval duration `toml:"del_retry_interval"`
	// Spare keeps one network namespace attached to the embedded network
	// ahead of the next pod.
	Spare bool `toml:"spare"`
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

const (
	defaultSocket = "/run/peapod/peapod.sock"
	defaultRoot   = "/var/lib/peapod"
	defaultState  = "/run/peapod"
)

// defaultConfig is the configuration before the config file and flags: the
// system paths as root, the user's XDG paths when rootless.
func defaultConfig() (config, error) {
	c := config{
		Socket:        defaultSocket,
		Root:          defaultRoot,
		State:         defaultState,
		LogLevel:      "info",
		CgroupDriver:  "cgroupfs",
		StreamAddress: "127.0.0.1:0",
		CNI: cniConfig{
			ConfDir:     "/etc/cni/net.d",
			BinDirs:     defaultCNIBinDirs(),
			NetworkName: "peapod",
			Bridge:      "peapod0",
			Subnet:      "10.88.0.0/16",
			Timeout:     duration{60 * time.Second},

			DelRetryInterval: duration{30 * time.Second},
			Spare:            true,
		},
		Rootless:       rootlessConfig{Net: rootless.NetAuto},
		mode:           rootless.Detect(),
		defaultRootDir: defaultRoot,
	}
	if c.mode == rootless.Root {
		return c, nil
	}
	name, uid := rootless.Owner()
	p, err := rootless.DefaultPaths(uid, os.Getenv)
	if err != nil {
		return c, err
	}
	c.Socket, c.Root, c.State, c.defaultRootDir = p.Socket, p.Root, p.State, p.Root
	c.rootlessUser = name
	return c, nil
}

// defaultConfigFile is loaded when no --config is given and it exists:
// none as root, $XDG_CONFIG_HOME/peapod/peapod.toml when rootless.
func defaultConfigFile() string {
	if rootless.Detect() == rootless.Root {
		return ""
	}
	_, uid := rootless.Owner()
	p, err := rootless.DefaultPaths(uid, os.Getenv)
	if err != nil || p.Config == "" {
		return ""
	}
	if _, err := os.Stat(p.Config); err != nil {
		return ""
	}
	return p.Config
}

// defaultCNIBinDirs searches the plugins built next to the binary first
// (bin/cni beside bin/peapod), then the usual install locations.
func defaultCNIBinDirs() []string {
	dirs := []string{}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(exe), "cni"))
	}
	return append(dirs, "/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni")
}

func loadConfigFile(path string, c *config) error {
	md, err := toml.DecodeFile(path, c)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		var keys []string
		for _, k := range undec {
			keys = append(keys, k.String())
		}
		return fmt.Errorf("config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	return nil
}

// instanceTag is a short, stable name for this instance, derived from its
// root dir: it marks host-wide objects (IFB devices, cgroups) as ours.
func (c *config) instanceTag() string {
	abs, _ := filepath.Abs(c.Root)
	sum := sha256.Sum256([]byte(abs))
	return hex.EncodeToString(sum[:])[:4]
}

// cgroupParent is the cgroup of pods that name none. As root: /peapod,
// or /peapod-<tag> for an instance with a non-default root. Rootless, the
// same names go under the subtree root delegated to the user,
// /peapod-<user> (see `peapod check`); on cgroup v2 the rootless parent
// passes <its delegated cgroup>/pods instead when it has one
// (delegatedPodCgroup).
func (c *config) cgroupParent() string {
	if c.DefaultCgroupParent != "" {
		return c.DefaultCgroupParent
	}
	name := "peapod"
	if filepath.Clean(c.Root) != c.defaultRootDir {
		name = "peapod-" + c.instanceTag()
	}
	if c.mode != rootless.Root {
		return "/peapod-" + c.rootlessUser + "/" + name
	}
	return "/" + name
}

// delegatedPodCgroup names the pods' cgroup inside the delegated cgroup
// v2 subtree a rootless parent finds (rootless.ParentOptions.PodCgroup):
// pods, or pods-<tag> for a non-default root; "" when the user set the
// cgroup parent. The daemon then gets <subtree>/<name> as its cgroupParent.
func (c *config) delegatedPodCgroup() string {
	if c.DefaultCgroupParent != "" {
		return ""
	}
	if filepath.Clean(c.Root) != c.defaultRootDir {
		return "pods-" + c.instanceTag()
	}
	return "pods"
}

func (c *config) validate() error {
	for name, p := range map[string]string{"socket": c.Socket, "root": c.Root, "state": c.State} {
		if !filepath.IsAbs(p) {
			return fmt.Errorf("%s %q must be an absolute path", name, p)
		}
	}
	// Whether systemd is there to drive is checked when the daemon starts
	// (and by `peapod check`), not here.
	if c.CgroupDriver != "cgroupfs" && c.CgroupDriver != "systemd" {
		return fmt.Errorf("cgroup driver %q: use cgroupfs or systemd (as the kubelet's cgroupDriver)", c.CgroupDriver)
	}
	if _, err := rootless.ParseNet(c.Rootless.Net); err != nil {
		return err
	}
	if c.CNI.Timeout.Duration <= 0 || c.CNI.DelRetryInterval.Duration <= 0 {
		return fmt.Errorf("cni.timeout and cni.del_retry_interval must be positive")
	}
	return nil
}

// defaultRegistryConfigDir follows containerd's /etc/containerd/certs.d.
const defaultRegistryConfigDir = "/etc/peapod/certs.d"
