package image

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// isMountPoint (statx) and the mountinfo scan agree on a tmpfs, a bind
// mount of a directory onto itself (same filesystem, same device), stacked
// mounts, a plain directory and a missing path; and after each unmount.
func TestIsMountPointAgreesWithMountinfo(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	tmpfs, bind, stacked, plain := filepath.Join(dir, "tmpfs"), filepath.Join(dir, "bind"), filepath.Join(dir, "stacked"), filepath.Join(dir, "plain")
	for _, d := range []string{tmpfs, bind, stacked, plain} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mount := func(src, dst, fstype string, flags uintptr) {
		t.Helper()
		if err := unix.Mount(src, dst, fstype, flags, ""); err != nil {
			t.Fatalf("mount %s: %v", dst, err)
		}
		t.Cleanup(func() { _ = unix.Unmount(dst, unix.MNT_DETACH) })
	}
	mount("tmpfs", tmpfs, "tmpfs", 0)
	mount(bind, bind, "", unix.MS_BIND)
	mount("tmpfs", stacked, "tmpfs", 0)
	mount("tmpfs", stacked, "tmpfs", 0)

	check := func(p string, want bool) {
		t.Helper()
		got, err := isMountPoint(p)
		if err != nil {
			t.Fatalf("isMountPoint(%s): %v", p, err)
		}
		oracle, err := isMountPointFromMountinfo(p)
		if err != nil {
			t.Fatalf("mountinfo for %s: %v", p, err)
		}
		if got != want || oracle != want {
			t.Errorf("%s: statx says %v, mountinfo %v, want %v", p, got, oracle, want)
		}
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, tmpfs, 0, 0, &stx); err != nil || stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		t.Logf("statx has no mount-root attribute here (%v): this checks the mountinfo fallback only", err)
	}
	check(tmpfs, true)
	check(bind, true)
	check(stacked, true)
	check(plain, false)
	check(filepath.Join(dir, "missing"), false)
	check(filepath.Join(tmpfs, "."), true)

	if err := unix.Unmount(stacked, 0); err != nil {
		t.Fatal(err)
	}
	check(stacked, true) // the lower of the two is still there
	if err := unix.Unmount(stacked, 0); err != nil {
		t.Fatal(err)
	}
	check(stacked, false)
	if err := unix.Unmount(bind, 0); err != nil {
		t.Fatal(err)
	}
	check(bind, false)
}
