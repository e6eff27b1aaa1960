package image

import (
	"archive/tar"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"
)

func pullFive(t *testing.T) (*Store, Image) {
	t.Helper()
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	reg.push(t, mirror, "five/layers:1", fiveLayerImage(t))
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	img, err := s.Pull(ctxT(t), "example.com/five/layers:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, img
}

func TestLayersHoldOverlayWhiteoutsAndMetadata(t *testing.T) {
	requireRoot(t)
	_, img := pullFive(t)
	files, whiteouts := img.Layers[1], img.Layers[2]

	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(whiteouts, "etc/a"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout etc/a: mode %o rdev %d, want a 0/0 char device", st.Mode, st.Rdev)
	}
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(whiteouts, "dir"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque dir xattr = %q, %v", buf[:n], err)
	}
	if _, err := os.Lstat(filepath.Join(whiteouts, "dir/.wh..wh..opq")); !os.IsNotExist(err) {
		t.Errorf("opaque marker left as a file: %v", err)
	}

	b := filepath.Join(files, "etc/b")
	if err := unix.Lstat(b, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o640 || st.Uid != 1000 || st.Gid != 1001 || st.Mtim.Sec != testMtime.Unix() {
		t.Errorf("etc/b: mode %o uid %d gid %d mtime %d", st.Mode&0o7777, st.Uid, st.Gid, st.Mtim.Sec)
	}
	var hl unix.Stat_t
	if err := unix.Lstat(filepath.Join(files, "etc/hardlink"), &hl); err != nil || hl.Ino != st.Ino {
		t.Errorf("hard link: ino %d vs %d, %v", hl.Ino, st.Ino, err)
	}
	n, err = unix.Lgetxattr(b, "user.peapod", buf)
	if err != nil || string(buf[:n]) != "yes" {
		t.Errorf("xattr user.peapod = %q, %v", buf[:n], err)
	}
	if l, err := os.Readlink(filepath.Join(files, "etc/link")); err != nil || l != "/etc/b" {
		t.Errorf("symlink = %q, %v", l, err)
	}
	if err := unix.Lstat(filepath.Join(files, "etc/suid"), &st); err != nil || st.Mode&0o7777 != 0o4755 {
		t.Errorf("setuid file mode %o, %v", st.Mode&0o7777, err)
	}
	if err := unix.Lstat(filepath.Join(files, "etc/fifo"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo mode %o, %v", st.Mode, err)
	}
	if err := unix.Lstat(filepath.Join(files, "dev/null"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("dev/null mode %o rdev %d, %v", st.Mode, st.Rdev, err)
	}
	if err := unix.Lstat(filepath.Join(files, "dir"), &st); err != nil || st.Mode&0o7777 != 0o750 || st.Uid != 7 || st.Mtim.Sec != testMtime.Unix() {
		t.Errorf("dir: mode %o uid %d mtime %d (want the tar's, set after its children), %v", st.Mode&0o7777, st.Uid, st.Mtim.Sec, err)
	}
}

func TestRootfsOverlayMergesLayersAndWritesToUpper(t *testing.T) {
	requireRoot(t)
	s, img := pullFive(t)
	rootfs, err := s.MountRootfs("c1", img, false)
	if err != nil {
		t.Fatal(err)
	}
	again, err := s.MountRootfs("c1", img, false)
	if err != nil || again != rootfs {
		t.Fatalf("second mount: %q, %v", again, err)
	}

	if _, err := os.Stat(filepath.Join(rootfs, "etc/a")); !os.IsNotExist(err) {
		t.Errorf("whited-out etc/a is visible: %v", err)
	}
	if b := readFile(t, filepath.Join(rootfs, "etc/b")); b != "b2\n" {
		t.Errorf("etc/b = %q, want the upper layer's", b)
	}
	entries, _ := os.ReadDir(filepath.Join(rootfs, "dir"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"z"}) {
		t.Errorf("opaque dir shows %v, want only [z]", names)
	}
	if _, err := os.Stat(filepath.Join(rootfs, "keep")); !os.IsNotExist(err) {
		t.Errorf("whited-out directory keep is visible: %v", err)
	}
	// A real program runs in it.
	out, err := exec.Command("chroot", rootfs, "/bin/sh", "-c", "cat /etc/b /etc/c /new/file; ls /dir").CombinedOutput()
	if err != nil || string(out) != "b2\nc\nnew\nz\n" {
		t.Errorf("chroot: %q, %v", out, err)
	}

	// Writes land in the container's upper directory.
	if err := os.WriteFile(filepath.Join(rootfs, "etc/written"), []byte("w"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(rootfs, "etc/c")); err != nil {
		t.Fatal(err)
	}
	upper := filepath.Join(s.root, "containers/c1/upper")
	if b := readFile(t, filepath.Join(upper, "etc/written")); b != "w" {
		t.Errorf("upper etc/written = %q", b)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "etc/c"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
		t.Errorf("deleting etc/c left no whiteout in upper: %v", err)
	}
	if b, inodes, err := s.WritableLayerUsage("c1"); err != nil || b == 0 || inodes < 3 {
		t.Errorf("WritableLayerUsage = %d bytes, %d inodes, %v", b, inodes, err)
	}
	// The image's layers are untouched.
	if b := readFile(t, filepath.Join(img.Layers[3], "etc/c")); b != "c\n" {
		t.Errorf("lower layer changed: %q", b)
	}

	if err := s.UnmountRootfs("c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.UnmountRootfs("c1"); err != nil {
		t.Fatalf("second unmount: %v", err)
	}
	if mounted, _ := isMountPoint(rootfs); mounted {
		t.Fatal("still mounted")
	}
	// Mounting again brings back the container's writes.
	if _, err := s.MountRootfs("c1", img, false); err != nil {
		t.Fatal(err)
	}
	if b := readFile(t, filepath.Join(rootfs, "etc/written")); b != "w" {
		t.Errorf("after remount etc/written = %q", b)
	}
	if err := s.RemoveRootfs("c1"); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveRootfs("c1"); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.root, "containers/c1")); !os.IsNotExist(err) {
		t.Errorf("container dir left: %v", err)
	}
	if mounted, _ := isMountPoint(rootfs); mounted {
		t.Fatal("still mounted after RemoveRootfs")
	}
}

func TestReadOnlyRootfsRefusesWrites(t *testing.T) {
	requireRoot(t)
	s, img := pullFive(t)
	rootfs, err := s.MountRootfs("ro", img, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "x"), nil, 0o644); !strings.Contains(fmt.Sprint(err), "read-only") {
		t.Errorf("write to read-only rootfs: %v", err)
	}
	if b := readFile(t, filepath.Join(rootfs, "etc/b")); b != "b2\n" {
		t.Errorf("etc/b = %q", b)
	}
}

func TestRootfsOfManyLayersUsesNewMountAPI(t *testing.T) {
	requireRoot(t)
	const n = 48
	var layers []v1.Layer
	for i := range n {
		layers = append(layers, layer(t, entry{name: fmt.Sprintf("f%02d", i), body: fmt.Sprint(i)}, entry{name: "top", body: fmt.Sprint(i)}))
	}
	deep, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	reg.push(t, mirror, "library/deep:1", deep)
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	img, err := s.Pull(ctxT(t), "deep:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if opts := len(strings.Join(img.Layers, ":")); opts < os.Getpagesize() {
		t.Fatalf("lowerdir is only %d bytes: the test does not exercise the long path", opts)
	}
	rootfs, err := s.MountRootfs("deep", img, false)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(rootfs)
	if len(entries) != n+1 {
		t.Errorf("%d entries, want %d", len(entries), n+1)
	}
	if b := readFile(t, filepath.Join(rootfs, "top")); b != fmt.Sprint(n-1) {
		t.Errorf("top = %q, want the topmost layer's", b)
	}
}

func TestUnpackRejectsPathTraversal(t *testing.T) {
	requireRoot(t)
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]entry{
		"dotdot":           {{name: "../../../../../../" + outside[1:] + "/evil", body: "x"}},
		"inner dotdot":     {{name: "a/../../evil", body: "x"}},
		"hardlink dotdot":  {{name: "ok", body: "x"}, {name: "hl", typ: tar.TypeLink, link: "../../etc/passwd"}},
		"through symlink":  {{name: "link", typ: tar.TypeSymlink, link: outside}, {name: "link/evil", body: "x"}},
		"symlink relative": {{name: "d/", typ: tar.TypeDir}, {name: "d/up", typ: tar.TypeSymlink, link: "../../../../../../../" + outside[1:]}, {name: "d/up/evil", body: "x"}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			b := tarBytes(t, entries)
			dst := filepath.Join(t.TempDir(), "layer")
			_, err := unpackLayer(ctxT(t), strings.NewReader(string(b)), dst, layerSource{diffID: diffIDOf(b)}, storeLayout{}, testLogger(t))
			if err == nil {
				t.Error("unpack succeeded")
			} else {
				t.Logf("rejected: %v", err)
			}
			if _, err := os.Stat(filepath.Join(outside, "evil")); !os.IsNotExist(err) {
				t.Fatalf("a file escaped the layer: %v", err)
			}
		})
	}
}

func TestUnpackResolvesAbsoluteSymlinksInsideLayer(t *testing.T) {
	requireRoot(t)
	b := tarBytes(t, []entry{
		{name: "etc/", typ: tar.TypeDir},
		{name: "etclink", typ: tar.TypeSymlink, link: "/etc"},
		{name: "etclink/passwd", body: "root:x:0:0::/root:/bin/sh\n"},
	})
	dst := filepath.Join(t.TempDir(), "layer")
	if _, err := unpackLayer(ctxT(t), strings.NewReader(string(b)), dst, layerSource{diffID: diffIDOf(b)}, storeLayout{}, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(dst, "etc/passwd")); !strings.HasPrefix(got, "root:") {
		t.Errorf("etc/passwd in layer = %q", got)
	}
}

func TestUnpackRejectsCorruptContent(t *testing.T) {
	requireRoot(t)
	b := tarBytes(t, []entry{{name: "f", body: "hello"}})
	wrong := diffIDOf([]byte("something else"))
	dst := filepath.Join(t.TempDir(), "layer")
	_, err := unpackLayer(ctxT(t), strings.NewReader(string(b)), dst, layerSource{diffID: wrong}, storeLayout{}, testLogger(t))
	if err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("err = %v, want a digest mismatch", err)
	}
}

func TestPullOfLayerWithTraversalFailsAndLeavesNoLayer(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	evil, err := mutate.AppendLayers(empty.Image, layer(t, entry{name: "fine", body: "ok"}), layer(t, entry{name: "../evil", body: "x"}))
	if err != nil {
		t.Fatal(err)
	}
	reg.push(t, mirror, "library/evil:1", evil)
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	_, err = s.Pull(ctxT(t), "evil:1", nil)
	if err == nil || !strings.Contains(err.Error(), "path traversal") {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Get("evil:1"); err == nil {
		t.Error("image recorded")
	}
	scratch, _ := filepath.Glob(filepath.Join(s.session.dir, "layer-*"))
	if len(scratch) != 0 {
		t.Errorf("half-unpacked layers left: %v", scratch)
	}
	layers, _ := os.ReadDir(filepath.Join(s.root, "layers"))
	for _, l := range layers {
		if _, err := os.Stat(filepath.Join(s.root, "layers", l.Name(), "diff", "fine")); err != nil {
			t.Errorf("unexpected layer %s", l.Name())
		}
	}
}
