package binfile

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestInstallOnceByHash(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bin")
	opens := 0
	content := func(s string) func() (io.ReadCloser, error) {
		return func() (io.ReadCloser, error) {
			opens++
			return io.NopCloser(bytes.NewReader([]byte(s))), nil
		}
	}
	p1, err := Install(dir, "tool", content("#!/bin/sh\necho one\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p1); err != nil || st.Mode().Perm() != 0o755 || !strings.HasPrefix(filepath.Base(p1), "tool-") {
		t.Fatalf("installed %s: %v %v", p1, st, err)
	}
	opens = 0
	if p, err := Install(dir, "tool", content("#!/bin/sh\necho one\n")); err != nil || p != p1 || opens != 1 {
		t.Errorf("second install of the same content: %s %v, %d opens (want the same path, hashed only)", p, err, opens)
	}
	p2, err := Install(dir, "tool", content("#!/bin/sh\necho two\n"))
	if err != nil || p2 == p1 {
		t.Fatalf("new content: %s %v", p2, err)
	}
	if b, _ := os.ReadFile(p2); string(b) != "#!/bin/sh\necho two\n" {
		t.Errorf("content %q", b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("dir holds %d files, want the two installs and no temp file", len(ents))
	}
}
