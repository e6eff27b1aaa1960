package binfile

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
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

// The default state dir is on /run, which systemd mounts noexec: the
// programs go to the next dir then, and where none is fit, the error says
// why for each.
func TestDirPassesOverNoexecFileSystems(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a noexec tmpfs")
	}
	noexec := t.TempDir()
	if err := unix.Mount("tmpfs", noexec, "tmpfs", unix.MS_NOEXEC|unix.MS_NOSUID|unix.MS_NODEV, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(noexec, unix.MNT_DETACH) })
	ok := filepath.Join(t.TempDir(), "root", "bin")

	got, err := Dir(filepath.Join(noexec, "bin"), ok)
	if err != nil || got != ok {
		t.Fatalf("Dir(noexec, exec) = %q, %v; want %q", got, err, ok)
	}
	p, err := Install(got, "tool", func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("#!/bin/sh\necho ran\n")), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(p).Output(); err != nil || string(out) != "ran\n" {
		t.Fatalf("installed program: %q, %v", out, err)
	}

	if got, err := Dir(ok); err != nil || got != ok {
		t.Errorf("Dir(exec) = %q, %v", got, err)
	}
	// Runnable judges a dir not made yet by where it would be made, and
	// makes nothing.
	notYet := filepath.Join(noexec, "state", "bin")
	if err := Runnable(notYet); err == nil || !strings.Contains(err.Error(), "noexec") {
		t.Errorf("Runnable(%s) = %v; want noexec", notYet, err)
	}
	if _, err := os.Stat(filepath.Join(noexec, "state")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Runnable made %s (%v)", filepath.Join(noexec, "state"), err)
	}
	if err := Runnable(filepath.Join(filepath.Dir(ok), "not", "yet")); err != nil {
		t.Errorf("Runnable of a dir to be made on an exec file system: %v", err)
	}
	_, err = Dir(filepath.Join(noexec, "bin"))
	if err == nil || !strings.Contains(err.Error(), "noexec") || !strings.Contains(err.Error(), noexec) {
		t.Errorf("Dir(noexec only) = %v; want an error naming the dir and noexec", err)
	}
}

// Prune takes what nothing uses: not this version's programs, not a
// program a process runs, not one a process names on its command line.
func TestPruneKeepsWhatIsInUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sleep, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, sleep, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	current, running, named, stale, temp := write("pause-aaaa"), write("pause-bbbb"), write("peapod-lc-cccc"), write("peapod-lc-dddd"), write(".pause-1234")

	run := exec.Command(running, "100")
	// A process that names the file among its arguments (argv[0] here;
	// a shim names its helper further on) without running it.
	name := exec.Command("/bin/sleep", "100")
	name.Args[0] = named
	for _, c := range []*exec.Cmd{run, name} {
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
	}

	removed, err := Prune(dir, current)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	if want := []string{temp, stale}; !slices.Equal(removed, want) {
		t.Errorf("Prune removed %v, want %v", removed, want)
	}
	for _, p := range []string{current, running, named} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}

	for _, c := range []*exec.Cmd{run, name} {
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	removed, err = Prune(dir, current)
	slices.Sort(removed)
	if want := []string{running, named}; err != nil || !slices.Equal(removed, want) {
		t.Errorf("Prune after the processes ended removed %v (%v), want %v", removed, err, want)
	}
	if _, err := os.Stat(current); err != nil {
		t.Errorf("this version's program: %v", err)
	}
}
