package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

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
				return fmt.Errorf("set sysctl %s=%q in the pod: %w", name, value, err)
			}
		}
		return nil
	})
}
