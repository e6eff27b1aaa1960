package cgroups

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// SweepOrphans removes the pod cgroups directly under defaultParent whose
// name is a sandbox id (64 hex digits) that keep rejects, together with
// everything beneath them (pause and container cgroups), after killing what
// still runs there. Only peapod creates cgroups under defaultParent, so an
// unknown sandbox id there is a leftover of a crash. It returns the removed
// cgroup paths; a failure on one pod does not stop the others.
func SweepOrphans(defaultParent string, keep func(sandboxID string) bool) ([]string, error) {
	if err := checkPath(defaultParent); err != nil || defaultParent == "/" {
		return nil, fmt.Errorf("sweep cgroups: default cgroup parent %q: must be an absolute, clean path below /", defaultParent)
	}
	mode := hostMode()
	roots, err := hierarchyRoots(mode)
	if err != nil {
		return nil, fmt.Errorf("sweep cgroups: %w", err)
	}
	var ids []string
	for _, root := range roots {
		entries, err := os.ReadDir(filepath.Join(root, defaultParent))
		if err != nil {
			continue // parent absent in this hierarchy: nothing to sweep
		}
		for _, e := range entries {
			if e.IsDir() && isSandboxID(e.Name()) && !slices.Contains(ids, e.Name()) && !keep(e.Name()) {
				ids = append(ids, e.Name())
			}
		}
	}
	slices.Sort(ids)

	var removed []string
	var errs []error
	for _, id := range ids {
		pod := filepath.Join(defaultParent, id)
		if err := removeTree(mode, roots, pod); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, pod)
	}
	return removed, errors.Join(errs...)
}

// removeTree kills everything in cgPath and removes it with its
// sub-cgroups in every hierarchy.
func removeTree(mode Mode, roots map[string]string, cgPath string) error {
	if err := killCgroup(mode, roots, cgPath, killBound); err != nil {
		return err
	}
	var errs []error
	for _, root := range roots {
		if err := cgroups.RemovePath(filepath.Join(root, cgPath)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RemoveParentIfEmpty removes defaultParent from every hierarchy when no pod
// cgroup is left beneath it, so an instance that stops with no pods leaves
// nothing behind (instances with a non-default root each have their own
// parent). A parent that still holds pods, or is already gone, is fine.
func RemoveParentIfEmpty(defaultParent string) error {
	if err := checkPath(defaultParent); err != nil || defaultParent == "/" {
		return fmt.Errorf("remove cgroup parent %q: must be an absolute, clean path below /", defaultParent)
	}
	roots, err := hierarchyRoots(hostMode())
	if err != nil {
		return fmt.Errorf("remove cgroup parent %s: %w", defaultParent, err)
	}
	var errs []error
	for _, root := range roots {
		err := os.Remove(filepath.Join(root, defaultParent))
		if err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.EBUSY) &&
			!(inUserNS() && errors.Is(err, os.ErrPermission)) { // rootless: a hierarchy not delegated (any more)
			errs = append(errs, fmt.Errorf("remove cgroup parent %s: %w", filepath.Join(root, defaultParent), err))
		}
	}
	return errors.Join(errs...)
}
