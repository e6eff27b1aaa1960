package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/sys/userns"
	"golang.org/x/sys/unix"

	"peapod/netns"
)

// sysctlPath turns a sysctl name into its /proc/sys path. Names use dots,
// or slashes when a component (an interface like eth0.100) has a dot.
func sysctlPath(name string) string {
	if strings.Contains(name, "/") {
		return filepath.Join("/proc/sys", name)
	}
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

// configurePodNamespaces sets the hostname and the sysctls from inside the
// pod's own namespaces (procfs resolves /proc/sys/net and the IPC sysctls
// against the namespaces of the thread that opens them).
func configurePodNamespaces(pins netns.PinnedNamespaces, hostname string, sysctls map[string]string) error {
	paths := map[netns.Kind]string{}
	for _, k := range []netns.Kind{netns.Net, netns.IPC, netns.UTS} {
		if p, ok := pins[k]; ok {
			paths[k] = p
		}
	}
	_, ownUTS := paths[netns.UTS]
	if len(sysctls) == 0 && (!ownUTS || hostname == "") {
		return nil
	}
	return netns.Do(paths, func() error {
		if ownUTS && hostname != "" {
			if err := unix.Sethostname([]byte(hostname)); err != nil {
				return fmt.Errorf("set pod hostname %q: %w", hostname, err)
			}
		}
		for name, value := range sysctls {
			if err := os.WriteFile(sysctlPath(name), []byte(value), 0); err != nil {
				if errors.Is(err, os.ErrPermission) {
					// Some namespaced sysctls are read-only outside
					// the host's namespaces (nf_conntrack_max), more
					// of them to a rootless runtime: a request that
					// cannot be satisfied, not a failure.
					where := "in a pod's namespace"
					if userns.RunningInUserNS() {
						where = "by a rootless runtime (its user namespace is not the host's)"
					}
					return fmt.Errorf("%w: sysctl %s is read-only %s: %v", ErrInvalid, name, where, err)
				}
				return fmt.Errorf("set sysctl %s=%q in the pod: %w", name, value, err)
			}
		}
		return nil
	})
}
