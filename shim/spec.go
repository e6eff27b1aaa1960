package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// validID accepts what libcontainer accepts as a container id, which is
// also a safe file name.
func validID(id string) bool {
	if id == "" || id == "." || id == ".." {
		return false
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '+', r == '-', r == '.':
		default:
			return false
		}
	}
	return true
}

// Validate checks what the shim checks before a create: the id, the
// command, and the rootfs and mount paths (which must exist). The error
// wraps ErrInvalid.
func (cs *ContainerSpec) Validate() error {
	switch {
	case !validID(cs.ID):
		return fmt.Errorf("%w: container id %q: want [A-Za-z0-9_+.-]+", ErrInvalid, cs.ID)
	case len(cs.Args) == 0:
		return fmt.Errorf("%w: container %s: no command", ErrInvalid, cs.ID)
	case !filepath.IsAbs(cs.Rootfs):
		return fmt.Errorf("%w: container %s: rootfs %q is not an absolute path", ErrInvalid, cs.ID, cs.Rootfs)
	}
	if st, err := os.Stat(cs.Rootfs); err != nil || !st.IsDir() {
		return fmt.Errorf("%w: container %s: rootfs %q is not a directory", ErrInvalid, cs.ID, cs.Rootfs)
	}
	for _, m := range cs.Mounts {
		if !filepath.IsAbs(m.Destination) || !filepath.IsAbs(m.Source) {
			return fmt.Errorf("%w: container %s: mount %s→%s: paths must be absolute", ErrInvalid, cs.ID, m.Source, m.Destination)
		}
		if _, err := os.Stat(m.Source); err != nil {
			return fmt.Errorf("%w: container %s: mount source: %v", ErrInvalid, cs.ID, err)
		}
		switch m.Propagation {
		case "", PropagationPrivate, PropagationHostToContainer, PropagationBidirectional:
		default:
			return fmt.Errorf("%w: container %s: mount %s: propagation %q", ErrInvalid, cs.ID, m.Destination, m.Propagation)
		}
	}
	return nil
}

// DefaultPathEnv is the PATH a container or exec gets when its
// environment has none.
const DefaultPathEnv = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func hasEnv(env []string, name string) bool {
	for _, e := range env {
		if strings.HasPrefix(e, name+"=") {
			return true
		}
	}
	return false
}
