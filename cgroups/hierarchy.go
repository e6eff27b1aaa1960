package cgroups

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/cgroups/fs"
)

// hierarchyRoots maps each mounted hierarchy to the directory of its root
// cgroup. v1 keys are controller names ("cpu", "memory"), named hierarchies
// ("name=systemd") and "" for the hybrid cgroup2 mount; v2 has only "".
func hierarchyRoots(mode Mode) (map[string]string, error) {
	switch mode {
	case ModeV2:
		return map[string]string{"": unifiedMountpoint}, nil
	case ModeV1:
		v1Cache.Lock()
		defer v1Cache.Unlock()
		if v1Cache.roots == nil || time.Since(v1Cache.at) >= hierarchyCacheTTL {
			roots, err := findV1Roots()
			if err != nil {
				return nil, err
			}
			v1Cache.roots, v1Cache.at = roots, time.Now()
		}
		return maps.Clone(v1Cache.roots), nil
	}
	return nil, fmt.Errorf("unknown cgroup mode %q", mode)
}

// v1Cache keeps the v1 hierarchy roots for hierarchyCacheTTL: finding
// them reads mountinfo (about 0.15 ms), and each step of a pod's life
// asks, several times in RunPodSandbox, as does every stats read.
var v1Cache struct {
	sync.Mutex
	roots map[string]string
	at    time.Time
}

// Mounts hardly ever change; the cached v1 roots are found again after
// this long.
const hierarchyCacheTTL = 30 * time.Second

func findV1Roots() (map[string]string, error) {
	// The v1 manager resolves every mounted hierarchy (including
	// co-mounted "cpu,cpuacct" and the hybrid cgroup2 mount) for a
	// path; for "/" that is the hierarchy roots. Missing devices is
	// not fatal here: Check reports it.
	cg := &cgroups.Cgroup{Path: "/", Resources: &cgroups.Resources{SkipDevices: true}}
	m, err := fs.NewManager(cg, nil)
	if err != nil {
		return nil, fmt.Errorf("find cgroup v1 hierarchies: %w", err)
	}
	roots := maps.Clone(m.GetPaths())
	if len(roots) == 0 {
		return nil, fmt.Errorf("find cgroup v1 hierarchies: none mounted")
	}
	return roots, nil
}

// optionalHierarchy tells the hierarchies that the v1 manager joins on a
// best-effort basis (named ones, misc, the hybrid cgroup2): a missing
// directory there is not an error.
func optionalHierarchy(mode Mode, key string) bool {
	return mode == ModeV1 && (key == "" || key == "misc" || strings.HasPrefix(key, "name="))
}

func joinAll(roots map[string]string, cgPath string) map[string]string {
	dirs := make(map[string]string, len(roots))
	for k, root := range roots {
		dirs[k] = filepath.Join(root, cgPath)
	}
	return dirs
}

func exists(dir string) bool {
	_, err := os.Lstat(dir)
	return err == nil
}

// missingDirs lists, deepest first, the directories of cgPath and its
// ancestors under root that do not exist yet: what creating cgPath will
// add. It stops at shared and its ancestors (a parent all default pods
// share, which a rollback must not race other pods for).
func missingDirs(root, cgPath, shared string) []string {
	var dirs []string
	for c := cgPath; c != "/"; c = filepath.Dir(c) {
		if shared != "" && (c == shared || strings.HasPrefix(shared, c+"/")) {
			break
		}
		dir := filepath.Join(root, c)
		if exists(dir) {
			break
		}
		dirs = append(dirs, dir)
	}
	return dirs
}

// checkPath accepts absolute, clean paths without NUL or "..".
func checkPath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty path")
	case strings.IndexByte(p, 0) >= 0:
		return fmt.Errorf("%q contains NUL", p)
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("%q is not absolute", p)
	case filepath.Clean(p) != p:
		return fmt.Errorf("%q is not clean (want %q)", p, filepath.Clean(p))
	}
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return fmt.Errorf("%q contains \"..\"", p)
		}
	}
	return nil
}

// checkParent validates a kubelet's cgroup_parent.
func checkParent(parent string) error {
	if err := checkPath(parent); err != nil {
		hint := "want an absolute cgroupfs path such as /kubepods/burstable/pod<uid>"
		if strings.HasSuffix(parent, ".slice") && !strings.Contains(parent, "/") {
			hint = "this is a systemd slice; peapod uses the cgroupfs driver: run the kubelet with --cgroup-driver=cgroupfs"
		}
		return fmt.Errorf("%w: %v: %s", ErrInvalidParent, err, hint)
	}
	return nil
}

// checkSandboxID accepts ids that are a single, ordinary path element.
func checkSandboxID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("pod cgroup: invalid sandbox id %q", id)
	}
	return nil
}

// isSandboxID matches peapod's sandbox ids: 64 lowercase hex digits.
func isSandboxID(name string) bool {
	if len(name) != 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
