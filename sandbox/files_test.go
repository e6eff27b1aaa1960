package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestPodFilesAreReadableByEveryUserWhateverTheUmask: containers running
// as other users read these through bind mounts.
func TestPodFilesAreReadableByEveryUserWhateverTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := t.TempDir()
	dns := &DNSConfig{Servers: []string{"10.0.0.10"}, Searches: []string{"ns.svc.cluster.local"}, Options: []string{"ndots:5"}}
	if err := writePodFiles(dir, "web-0", "10.88.0.7", dns); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		hostnameFile: "web-0\n",
		resolvFile:   "nameserver 10.0.0.10\nsearch ns.svc.cluster.local\noptions ndots:5\n",
		hostsFile:    "10.88.0.7\tweb-0\n",
	}
	for name, content := range want {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o644 {
			t.Errorf("%s has mode %v under umask 077, want 0644", name, st.Mode().Perm())
		}
		b, _ := os.ReadFile(p)
		if !strings.Contains(string(b), content) {
			t.Errorf("%s holds %q, want it to contain %q", name, b, content)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("dir holds %d entries, want the 3 files", len(ents))
	}
}
