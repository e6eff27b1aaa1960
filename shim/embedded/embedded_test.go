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

// With `make build` (or `make unit`) both programs are embedded: Install
// writes each once, named by its hash, returns the resident's path, and
// both run. Built without them, Install says so and writes nothing.
func TestInstall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bin")
	shimBin, helperBin := Binary(ShimName), Binary(HelperName)
	path, helper, err := Install(dir)
	if len(shimBin) == 0 && len(helperBin) == 0 {
		if !errors.Is(err, ErrNone) || path != "" {
			t.Fatalf("nothing embedded: Install = %q, %v; want ErrNone", path, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("nothing embedded, yet Install made %s (%v)", dir, err)
		}
		t.Log("no peapod-shim or peapod-lc embedded (plain go test): only the fallback was checked; `make unit` checks the binaries")
		return
	}
	if len(shimBin) == 0 || len(helperBin) == 0 {
		if err == nil {
			t.Fatalf("only one program embedded (shim %d bytes, lc %d bytes), yet Install = %q", len(shimBin), len(helperBin), path)
		}
		t.Fatalf("only one program embedded (shim %d bytes, lc %d bytes): rebuild with `make shim`", len(shimBin), len(helperBin))
	}
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != dir || !strings.HasPrefix(filepath.Base(path), ShimName+"-") {
		t.Fatalf("installed at %s", path)
	}
	helpers, _ := filepath.Glob(filepath.Join(dir, HelperName+"-*"))
	if len(helpers) != 1 || helpers[0] != helper {
		t.Fatalf("installed helpers %v, want one, %s", helpers, helper)
	}
	for p, want := range map[string][]byte{path: shimBin, helpers[0]: helperBin} {
		got, err := os.ReadFile(p)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("installed %s differs from the embedded binary (%v)", p, err)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm()&0o111 == 0 {
			t.Fatalf("%s is not executable: %v", p, st.Mode())
		}
	}
	// Again: the same path, no more files and no temporary left.
	again, againHelper, err := Install(dir)
	if err != nil || again != path || againHelper != helper {
		t.Fatalf("second Install = %q, %v; want %q", again, err, path)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("bin holds %d entries, want 2", len(ents))
	}
	for p, name := range map[string]string{path: ShimName, helpers[0]: HelperName} {
		out, err := exec.Command(p, "version").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), name+" ") {
			t.Fatalf("%s version: %q, %v", p, out, err)
		}
	}
	// The resident refuses to serve without its helper: it carries no
	// libcontainer.
	if out, err := exec.Command(path, "shim", "--dir", filepath.Join(filepath.Dir(dir), "x")).CombinedOutput(); err == nil || !strings.Contains(string(out), "--lc") {
		t.Fatalf("%s shim without --lc: %q, %v; want a refusal naming --lc", path, out, err)
	}
}
