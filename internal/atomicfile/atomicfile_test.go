package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileAndReplaceLeaveOnlyTheNewContent(t *testing.T) {
	syncer := NewSyncer(func(p string, err error) { t.Errorf("sync %s: %v", p, err) })
	defer syncer.Close()
	for name, write := range map[string]func(string, []byte, os.FileMode) error{"WriteFile": WriteFile, "Replace": Replace, "ReplaceLater": func(p string, b []byte, m os.FileMode) error { return ReplaceLater(syncer, p, b, m) }} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "rec.json")
			for _, content := range []string{"first", "second, longer"} {
				if err := write(p, []byte(content), 0o640); err != nil {
					t.Fatal(err)
				}
				b, err := os.ReadFile(p)
				if err != nil || string(b) != content {
					t.Fatalf("content %q, %v; want %q", b, err, content)
				}
				st, _ := os.Stat(p)
				if st.Mode().Perm() != 0o640 {
					t.Errorf("mode %v", st.Mode())
				}
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("dir holds %d entries (temporary files left?)", len(ents))
			}
			if err := write(filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); err == nil {
				t.Error("write into a missing dir succeeded")
			}
		})
	}
}
