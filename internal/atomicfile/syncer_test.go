package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// fsync on a procfs file or directory fails with EINVAL, which lets these
// tests see each sync the Syncer makes through its error callback; a
// real file's sync succeeds and reports nothing.

type reports struct {
	mu    sync.Mutex
	order []string
	count map[string]int
}

func (r *reports) hear(path string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !errors.Is(err, syscall.EINVAL) {
		r.order = append(r.order, "unexpected "+path+": "+err.Error())
		return
	}
	r.order = append(r.order, path)
	r.count[path]++
}

func (r *reports) get(path string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count[path]
}

func TestSyncerSyncsFilesThenDirsBeforeFlushReturns(t *testing.T) {
	r := &reports{count: map[string]int{}}
	s := NewSyncer(r.hear)
	dir := t.TempDir()
	real := filepath.Join(dir, "rec")
	if err := os.WriteFile(real, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Later("/proc/self/stat", "/proc/self", dir)
	s.Later(real, filepath.Join(dir, "gone"))
	s.Later(filepath.Join(dir, "missing-file"))
	s.Flush()
	r.mu.Lock()
	got := append([]string(nil), r.order...)
	r.mu.Unlock()
	if len(got) != 2 || got[0] != "/proc/self/stat" || got[1] != "/proc/self" {
		t.Fatalf("syncs reported %q; want the queued file, then its dir (and nothing for real or missing paths)", got)
	}
	s.Flush() // nothing queued: returns at once
	s.Close()
	// After Close, Later syncs before it returns.
	s.Later("/proc/self/status")
	if r.get("/proc/self/status") != 1 {
		t.Error("Later after Close returned before syncing")
	}
}

func TestSyncerFlushWaitsForEveryEarlierLater(t *testing.T) {
	r := &reports{count: map[string]int{}}
	s := NewSyncer(r.hear)
	defer s.Close()
	paths := []string{"/proc/self/stat", "/proc/self/status", "/proc/self/cmdline", "/proc/self/limits", "/proc/self/io", "/proc/self/wchan"}
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Go(func() {
			for n := range 200 {
				before := r.get(p)
				if n%2 == 0 {
					s.Later(p)
				} else {
					s.Later("", p)
				}
				s.Flush()
				if after := r.get(p); after <= before {
					t.Errorf("worker %d: Flush returned before %s, queued before it, was synced", i, p)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestReplaceLaterIsAtomicAtOnceAndSyncedSoon(t *testing.T) {
	r := &reports{count: map[string]int{}}
	s := NewSyncer(r.hear)
	dir := t.TempDir()
	p := filepath.Join(dir, "rec.json")
	for _, content := range []string{"first", "second"} {
		if err := ReplaceLater(s, p, []byte(content), 0o600, "/proc/self"); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != content {
			t.Fatalf("content %q, %v; want %q", b, err, content)
		}
	}
	s.Flush()
	if r.get("/proc/self") == 0 {
		t.Error("the extra dir was not synced")
	}
	if err := ReplaceLater(s, filepath.Join(dir, "missing", "x"), []byte("x"), 0o600); err == nil {
		t.Error("write into a missing dir succeeded")
	}
	s.Close()
}
