package embedded

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// With `make build` (or `make unit`) the binary is embedded: Install writes
// it once, named by its hash, and the result runs. Built without it, Install
// says so and writes nothing.
func TestInstall(t *testing.T) {
	state := t.TempDir()
	b := Binary()
	path, err := Install(state)
	if len(b) == 0 {
		if !errors.Is(err, ErrNone) || path != "" {
			t.Fatalf("nothing embedded: Install = %q, %v; want ErrNone", path, err)
		}
		if _, err := os.Stat(filepath.Join(state, "bin")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("nothing embedded, yet Install made %s/bin (%v)", state, err)
		}
		t.Log("no peapod-shim embedded (plain go test): only the fallback was checked; `make unit` checks the binary")
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != filepath.Join(state, "bin") || !strings.HasPrefix(filepath.Base(path), "peapod-shim-") {
		t.Fatalf("installed at %s", path)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("installed file differs from the embedded binary (%v)", err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm()&0o111 == 0 {
		t.Fatalf("%s is not executable: %v", path, st.Mode())
	}
	// Again: the same path, no second file and no temporary left.
	again, err := Install(state)
	if err != nil || again != path {
		t.Fatalf("second Install = %q, %v; want %q", again, err, path)
	}
	ents, _ := os.ReadDir(filepath.Join(state, "bin"))
	if len(ents) != 1 {
		t.Fatalf("bin holds %d entries, want 1", len(ents))
	}
	out, err := exec.Command(path, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "peapod-shim ") {
		t.Fatalf("%s version: %q, %v", path, out, err)
	}
}
