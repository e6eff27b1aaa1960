package netns

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// NetworkConfig says where the pod network comes from. When ConfDir holds
// no network configuration, the embedded default (a bridge with host-local
// IPAM, portmap and loopback) is used, so the runtime works with nothing
// configured.
type NetworkConfig struct {
	ConfDir  string   // operator conflists (*.conflist, *.conf, *.json)
	BinDirs  []string // plugin search list
	CacheDir string   // libcni result cache; must survive daemon restarts

	DefaultName   string // network name of the embedded default
	DefaultBridge string // bridge device of the embedded default
	DefaultSubnet string // pod subnet of the embedded default (CIDR)
	IPAMDataDir   string // host-local allocations of the embedded default

	// NoPortmap says hostPorts are published by someone else (the
	// rootless daemon's userspace forwarder): the embedded default leaves
	// the portmap plugin out, and no network is handed the portMappings
	// capability.
	NoPortmap bool
}

// Network attaches pods to the configured CNI network.
type Network struct {
	cfg NetworkConfig
	cni *libcni.CNIConfig

	mu       sync.Mutex
	list     *libcni.NetworkConfigList
	embedded bool
	loadErr  error

	// masqMu guards masqDone: the embedded network's masquerade chain is
	// in place (masq_linux.go).
	masqMu   sync.Mutex
	masqDone bool
}

// NewNetwork validates cfg and loads the network configuration.
func NewNetwork(cfg NetworkConfig) (*Network, error) {
	if cfg.DefaultName == "" {
		cfg.DefaultName = "peapod"
	}
	if cfg.DefaultBridge == "" {
		cfg.DefaultBridge = "peapod0"
	}
	if cfg.DefaultSubnet == "" {
		cfg.DefaultSubnet = "10.88.0.0/16"
	}
	if len(cfg.DefaultBridge) > 15 {
		return nil, fmt.Errorf("bridge name %q is longer than 15 characters", cfg.DefaultBridge)
	}
	if _, _, err := net.ParseCIDR(cfg.DefaultSubnet); err != nil {
		return nil, fmt.Errorf("pod subnet %q: %w", cfg.DefaultSubnet, err)
	}
	// The cache dir is made by the first ADD (libcni) or restoreCache,
	// not here: `peapod check` loads the network too and must leave the
	// host as it found it.
	n := &Network{cfg: cfg, cni: libcni.NewCNIConfigWithCacheDir(cfg.BinDirs, cfg.CacheDir, nil)}
	n.reload()
	return n, nil
}

// embeddedConfList is the default network. cniVersion 1.1.0 so that CNI GC
// can release allocations of sandboxes that no longer exist.
//
// portmap is part of the network, but a pod without hostPorts is attached
// without it: portmap has nothing to do for such a pod on ADD, yet its DEL
// runs iptables every time, which dominated StopPodSandbox. For the same
// reason the bridge does not masquerade per pod: one chain for the subnet
// does it for all (masq_linux.go).
func (n *Network) embeddedConfList() []byte { return n.embeddedConfListFor(true) }

func (n *Network) embeddedConfListFor(withPortmap bool) []byte {
	withPortmap = withPortmap && !n.cfg.NoPortmap
	plugins := []any{
		map[string]any{
			"type":        "bridge",
			"bridge":      n.cfg.DefaultBridge,
			"isGateway":   true,
			"ipMasq":      false,
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": n.cfg.DefaultSubnet}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": n.cfg.IPAMDataDir,
			},
		},
	}
	if withPortmap {
		plugins = append(plugins, map[string]any{
			"type":         "portmap",
			"capabilities": map[string]bool{"portMappings": true},
			"snat":         true,
		})
	}
	conf := map[string]any{
		"cniVersion": "1.1.0",
		"name":       n.cfg.DefaultName,
		"plugins":    plugins,
	}
	b, _ := json.Marshal(conf)
	return b
}

// reload reads the conf dir; the first file in lexical order wins, as in
// every other CRI runtime.
func (n *Network) reload() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.list, n.loadErr, n.embedded = nil, nil, false
	files, err := libcni.ConfFiles(n.cfg.ConfDir, []string{".conflist", ".conf", ".json"})
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		n.loadErr = fmt.Errorf("read CNI config dir %s: %w", n.cfg.ConfDir, err)
		return
	}
	sort.Strings(files)
	for _, f := range files {
		var list *libcni.NetworkConfigList
		if strings.HasSuffix(f, ".conflist") {
			list, err = libcni.ConfListFromFile(f)
		} else {
			var one *libcni.NetworkConfig
			one, err = libcni.ConfFromFile(f)
			if err == nil {
				list, err = libcni.ConfListFromConf(one)
			}
		}
		if err != nil {
			n.loadErr = fmt.Errorf("CNI config %s: %w", f, err)
			continue
		}
		if len(list.Plugins) == 0 {
			n.loadErr = fmt.Errorf("CNI config %s has no plugins", f)
			continue
		}
		n.list, n.loadErr = list, nil
		return
	}
	if n.loadErr != nil {
		return
	}
	list, err := libcni.ConfListFromBytes(n.embeddedConfList())
	if err != nil {
		n.loadErr = fmt.Errorf("embedded CNI config: %w", err)
		return
	}
	n.list, n.embedded = list, true
}

func (n *Network) current() (*libcni.NetworkConfigList, bool, error) {
	n.reload()
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.list, n.embedded, n.loadErr
}

// Ready says whether pods can be attached: a usable configuration and every
// plugin it names present in the search list. The error says what to do.
func (n *Network) Ready() error {
	list, _, err := n.current()
	if err != nil {
		return err
	}
	types := []string{"loopback"}
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	for _, t := range types {
		if _, err := invoke.FindInPath(t, n.cfg.BinDirs); err != nil {
			return fmt.Errorf("CNI plugin %q not found in %s: build it with `make build` or install the CNI reference plugins", t, strings.Join(n.cfg.BinDirs, ":"))
		}
	}
	return nil
}

// Describe names the network in use, for Status and logs.
func (n *Network) Describe() string {
	list, embedded, err := n.current()
	if err != nil {
		return "error: " + err.Error()
	}
	if embedded {
		return fmt.Sprintf("%s (embedded default: bridge %s, subnet %s)", list.Name, n.cfg.DefaultBridge, n.cfg.DefaultSubnet)
	}
	return list.Name + " (from " + n.cfg.ConfDir + ")"
}

// PortMapping is a hostPort of the pod, in CNI portmap's terms.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// AttachRequest is one pod to attach.
type AttachRequest struct {
	SandboxID    string
	PodName      string
	PodNamespace string
	PodUID       string
	PortMappings []PortMapping
	CgroupPath   string
	Annotations  map[string]string
}

// Attachment is everything needed to detach a pod later, by this or a
// restarted daemon, even after the configuration changed: it is persisted
// with the sandbox.
type Attachment struct {
	Network     string          `json:"network"`
	ConfList    json.RawMessage `json:"confList"`
	IfName      string          `json:"ifName"`
	Args        [][2]string     `json:"args"`
	CapArgs     map[string]any  `json:"capabilityArgs,omitempty"`
	Result      json.RawMessage `json:"result,omitempty"`
	IPs         []string        `json:"ips,omitempty"`
	Embedded    bool            `json:"embedded,omitempty"`
	LoopbackUp  bool            `json:"loopbackUp,omitempty"` // lo was set up by the loopback plugin (peapod before 2026-11-27), so DEL runs it
	LastDelFail string          `json:"lastDelFailure,omitempty"`
	// CNIID is the container ID the plugins know the attachment by, when
	// it is not the sandbox's id: a spare attachment made ahead of its pod
	// (sandbox/spare.go) keeps the id it was made with.
	CNIID string `json:"cniId,omitempty"`
}

// ContainerID is the container ID the plugins know the attachment of
// sandbox sandboxID by (ADD, DEL, CNI GC's valid attachments).
func (att *Attachment) ContainerID(sandboxID string) string {
	if att.CNIID != "" {
		return att.CNIID
	}
	return sandboxID
}

// SpareFits says whether a spare attachment made for no pod in particular
// can serve as att: the same embedded network configuration and interface,
// and nothing pod-specific that a plugin of it would see (host ports, a
// plugin that reads the pod's cgroup).
func (att *Attachment) SpareFits(spare *Attachment) bool {
	if !att.Embedded || !spare.Embedded || att.Network != spare.Network || att.IfName != spare.IfName {
		return false
	}
	if !bytes.Equal(att.ConfList, spare.ConfList) || att.UsesCgroup() {
		return false
	}
	_, ports := att.CapArgs["portMappings"]
	return !ports
}

// PodIfName is the pod's interface inside its netns.
const PodIfName = "eth0"

// Prepare returns the attachment that Attach will make, before anything is
// created, so the caller can persist its intent and a crashed daemon can
// still undo a half-made attachment.
func (n *Network) Prepare(req AttachRequest) (*Attachment, error) {
	list, embedded, err := n.current()
	if err != nil {
		return nil, err
	}
	confList := list.Bytes
	if embedded {
		confList = n.embeddedConfListFor(len(req.PortMappings) > 0)
	}
	att := &Attachment{
		Network:  list.Name,
		ConfList: json.RawMessage(confList),
		IfName:   PodIfName,
		Embedded: embedded,
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", req.PodNamespace},
			{"K8S_POD_NAME", req.PodName},
			{"K8S_POD_INFRA_CONTAINER_ID", req.SandboxID},
			{"K8S_POD_UID", req.PodUID},
		},
		CapArgs: map[string]any{},
	}
	if len(req.PortMappings) > 0 && !n.cfg.NoPortmap {
		att.CapArgs["portMappings"] = req.PortMappings
	}
	if req.CgroupPath != "" {
		att.CapArgs["cgroupPath"] = req.CgroupPath
	}
	if len(req.Annotations) > 0 {
		att.CapArgs["io.kubernetes.cri.pod-annotations"] = req.Annotations
	}
	return att, nil
}

// UsesCgroup says whether a plugin of the attachment's network asks for
// the pod's cgroup path (the cgroupPath capability), and so may look at
// that cgroup during ADD: the caller then makes it first.
func (att *Attachment) UsesCgroup() bool {
	var list struct {
		Plugins []struct {
			Capabilities map[string]bool `json:"capabilities"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(att.ConfList, &list); err != nil {
		return true // unreadable here: assume it does
	}
	for _, p := range list.Plugins {
		if p.Capabilities["cgroupPath"] {
			return true
		}
	}
	return false
}

func (att *Attachment) runtimeConf(id, netnsPath, ifName string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID:    id,
		NetNS:          netnsPath,
		IfName:         ifName,
		Args:           att.Args,
		CapabilityArgs: att.CapArgs,
	}
}

func loopbackList() *libcni.NetworkConfigList {
	l, _ := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"peapod-loopback","plugins":[{"type":"loopback"}]}`))
	return l
}

// Attach runs CNI ADD for the loopback and the pod network and fills in the
// result and IPs. On error the partial attachment is deleted again.
func (n *Network) Attach(ctx context.Context, att *Attachment, id, netnsPath string) (err error) {
	id = att.ContainerID(id)
	list, err := libcni.ConfListFromBytes(att.ConfList)
	if err != nil {
		return fmt.Errorf("CNI config of %s: %w", att.Network, err)
	}
	if att.Embedded {
		if err := n.ensureMasquerade(); err != nil {
			return err
		}
	}
	// The loopback device is brought up here, not by the loopback plugin:
	// it is one flag of one device in a namespace nobody else uses, and
	// the plugin's exec competed with the bridge plugin's for the CPU.
	if err := LoopbackUp(netnsPath); err != nil {
		return err
	}
	res, err := n.cni.AddNetworkList(ctx, list, att.runtimeConf(id, netnsPath, att.IfName))
	if err != nil {
		// ADD failed half-way: the spec says the runtime must DEL.
		_ = n.cni.DelNetworkList(context.WithoutCancel(ctx), list, att.runtimeConf(id, netnsPath, att.IfName))
		return fmt.Errorf("CNI ADD to network %s: %w", att.Network, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("CNI result of %s: %w", att.Network, err)
	}
	b, _ := json.Marshal(cur)
	att.Result = b
	att.IPs = nil
	for _, ip := range cur.IPs {
		// Only addresses of the pod's own interface (or unnamed ones).
		if ip.Interface != nil && *ip.Interface >= 0 && *ip.Interface < len(cur.Interfaces) {
			if cur.Interfaces[*ip.Interface].Sandbox == "" {
				continue
			}
		}
		att.IPs = append(att.IPs, ip.Address.IP.String())
	}
	return nil
}

// Detach runs CNI DEL for the attachment. netnsPath may be empty when the
// namespace is already gone; the plugins then clean up the host side from
// the cached result. It is safe to call more than once.
func (n *Network) Detach(ctx context.Context, att *Attachment, id, netnsPath string) error {
	id = att.ContainerID(id)
	list, err := libcni.ConfListFromBytes(att.ConfList)
	if err != nil {
		return fmt.Errorf("CNI config of %s: %w", att.Network, err)
	}
	if len(att.Result) > 0 {
		n.restoreCache(list, att, id, netnsPath)
	}
	// Only attachments made by an older peapod had the loopback plugin's
	// ADD, which wants its DEL.
	loErr := make(chan error, 1)
	go func() {
		if netnsPath == "" || !att.LoopbackUp {
			loErr <- nil
			return
		}
		loErr <- n.cni.DelNetworkList(ctx, loopbackList(), att.runtimeConf(id, netnsPath, "lo"))
	}()
	err = n.cni.DelNetworkList(ctx, list, att.runtimeConf(id, netnsPath, att.IfName))
	lerr := <-loErr
	if err != nil {
		return fmt.Errorf("CNI DEL from network %s: %w", att.Network, err)
	}
	if lerr != nil {
		return fmt.Errorf("CNI loopback DEL: %w", lerr)
	}
	return nil
}

// restoreCache puts our persisted result back into libcni's cache when it
// is missing (a wiped cache dir), so DEL still gets its prevResult.
func (n *Network) restoreCache(list *libcni.NetworkConfigList, att *Attachment, id, netnsPath string) {
	rt := att.runtimeConf(id, netnsPath, att.IfName)
	if r, err := n.cni.GetNetworkListCachedResult(list, rt); err == nil && r != nil {
		return
	}
	entry := map[string]any{
		"kind":           "cniCacheV1",
		"containerId":    id,
		"config":         []byte(att.ConfList),
		"ifName":         att.IfName,
		"networkName":    list.Name,
		"netns":          netnsPath,
		"cniArgs":        att.Args,
		"capabilityArgs": att.CapArgs,
		"result":         att.Result,
	}
	b, err := json.Marshal(entry)
	if err != nil {
		return
	}
	dir := filepath.Join(n.cfg.CacheDir, "results")
	_ = os.MkdirAll(dir, 0o700)
	_ = os.WriteFile(filepath.Join(dir, list.Name+"-"+id+"-"+att.IfName), b, 0o600)
}

// GarbageCollect releases the embedded network's allocations (IPs, iptables
// chains) of every sandbox not in valid. It only ever touches the embedded
// default, whose IPAM store belongs to this instance alone.
func (n *Network) GarbageCollect(ctx context.Context, valid []string) error {
	list, embedded, err := n.current()
	if err != nil || !embedded {
		return err
	}
	args := &libcni.GCArgs{}
	for _, id := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: id, IfName: PodIfName})
	}
	if err := n.cni.GCNetworkList(ctx, list, args); err != nil {
		return fmt.Errorf("CNI GC of %s: %w", list.Name, err)
	}
	return nil
}
