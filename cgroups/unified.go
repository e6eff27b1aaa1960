package cgroups

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/cgroups"
)

// createUnified creates podPath and pausePath under the cgroup2 root,
// delegating every available controller down to the pod: in v2 a cgroup
// has a controller only if its parent lists it in cgroup.subtree_control.
// The pod enables them for its children too (the pause and, later, the
// containers, which have limits); the pause cgroup, a leaf, does not.
//
// Enabling is best effort, as in runc: a controller that cannot be enabled
// (one bound to a v1 hierarchy, or an ancestor with processes of its own)
// leaves the pod without it rather than without a cgroup; Check reports
// hosts where accounting controllers are missing.
func createUnified(root, podPath, pausePath string) error {
	cur := root
	for _, elem := range strings.Split(strings.TrimPrefix(podPath, "/"), "/") {
		if elem == "" {
			continue
		}
		enableControllers(cur)
		cur = filepath.Join(cur, elem)
		if err := os.Mkdir(cur, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
	}
	enableControllers(cur)
	if err := os.Mkdir(filepath.Join(root, pausePath), 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return nil
}

// enableControllers writes "+c" to dir's cgroup.subtree_control for every
// controller dir has and does not yet pass down.
func enableControllers(dir string) {
	avail, err := cgroups.ReadFile(dir, "cgroup.controllers")
	if err != nil {
		return
	}
	on, _ := cgroups.ReadFile(dir, "cgroup.subtree_control")
	enabled := make(map[string]bool)
	for _, c := range strings.Fields(on) {
		enabled[strings.TrimPrefix(c, "+")] = true
	}
	var want []string
	for _, c := range strings.Fields(avail) {
		if !enabled[c] {
			want = append(want, "+"+c)
		}
	}
	if len(want) == 0 {
		return
	}
	if cgroups.WriteFile(dir, "cgroup.subtree_control", strings.Join(want, " ")) == nil {
		return
	}
	// One refusal fails the whole write; enable what can be enabled.
	for _, c := range want {
		_ = cgroups.WriteFile(dir, "cgroup.subtree_control", c)
	}
}
