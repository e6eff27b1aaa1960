package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersionAndCheckCommands(t *testing.T) {
	out, err := exec.Command(peapodBin, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "peapod ") {
		t.Errorf("peapod version: %v %q", err, out)
	}
	out, err = exec.Command(peapodBin, "check", "--cni-bin-dir", cniBinDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Errorf("peapod check on a good host: %v\n%s", err, out)
	}
	out, err = exec.Command(peapodBin, "check", "--cni-bin-dir", t.TempDir()).CombinedOutput()
	if err == nil {
		t.Errorf("peapod check without plugins succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "problem:") || !strings.Contains(string(out), "make build") {
		t.Errorf("peapod check does not say what is missing and what to do:\n%s", out)
	}
	out, err = exec.Command(peapodBin, "serve", "--socket", "relative.sock").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "absolute") {
		t.Errorf("serve with a relative socket: %v\n%s", err, out)
	}
}

// TestCheckCreatesNothing: `peapod check` is a diagnosis; run on a root
// that does not exist, it leaves it so.
func TestCheckCreatesNothing(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	state := filepath.Join(t.TempDir(), "state")
	out, _ := exec.Command(peapodBin, "check", "--root", root, "--state", state, "--cni-bin-dir", cniBinDir).CombinedOutput()
	for _, d := range []string{root, state} {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("peapod check made %s; output:\n%s", d, out)
		}
	}
}
