package shim

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// residentForbidden are import paths (prefixes) the resident shim must not
// link: libcontainer and what it pulls in. Their package initialisation,
// data and threads would stay resident in every pod (helper_linux.go);
// they belong in peapod-lc (package shim/lc).
var residentForbidden = []string{
	"github.com/opencontainers/runc",
	"github.com/opencontainers/cgroups",
	"peapod/cgroups",
	"github.com/cilium/ebpf",
	"github.com/godbus/dbus",
	"github.com/coreos/go-systemd",
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	"github.com/seccomp/libseccomp-golang",
	"peapod/shim/lc",
	"runtime/cgo",
}

// TestResidentShimLinksNoLibcontainer lists the package graph of the
// resident program, as the Makefile builds it (no cgo), and fails on any
// forbidden package, naming who imports it.
func TestResidentShimLinksNoLibcontainer(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("go not in PATH: %v", err)
	}
	for _, pkg := range []string{"peapod/shim/peapod-shim", "peapod/shim"} {
		cmd := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		importers := map[string][]string{}
		var all []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			all = append(all, f[0])
			for _, imp := range f[1:] {
				importers[imp] = append(importers[imp], f[0])
			}
		}
		if len(all) < 10 {
			t.Fatalf("go list -deps %s listed only %v", pkg, all)
		}
		for _, p := range all {
			for _, bad := range residentForbidden {
				if p == bad || strings.HasPrefix(p, bad+"/") {
					t.Errorf("%s links %s (imported by %v)", pkg, p, importers[p])
				}
			}
		}
	}
}
