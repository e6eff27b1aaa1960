package image

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/moby/sys/userns"
	"golang.org/x/sys/unix"

	"peapod/internal/mountinfo"
)

// The user namespace of these tests maps its uid/gid 0..65535 to the host's
// 100000..165535, as rootless peapod does with a user's subordinate ids
// (its own uid 0 is the user there; here real root can write any map, so
// no newuidmap is needed).
const (
	nsHostBase = 100000
	nsSize     = 65536
	childEnv   = "PEAPOD_TEST_USERNS_DIR"
)

// usernsLayer has what a user namespace cannot reproduce: owners outside
// its map, devices, plus what it can (a fifo, the highest mapped id).
func usernsLayer(t *testing.T) v1.Layer {
	return layer(t,
		entry{name: "extra/", typ: tar.TypeDir},
		entry{name: "extra/far", body: "far\n", uid: 70000, gid: 70001},
		entry{name: "extra/halfmapped", body: "h\n", uid: 1234, gid: 200000},
		entry{name: "extra/mapped", body: "m\n", uid: 65535, gid: 65535},
		entry{name: "extra/fardir/", typ: tar.TypeDir, uid: 100000, gid: 0, mode: 0o711},
		entry{name: "extra/fardir/in", body: "in\n", uid: 5, gid: 6},
		entry{name: "extra/disk", typ: tar.TypeBlock, mode: 0o660, major: 8, minor: 0},
		entry{name: "extra/tty", typ: tar.TypeChar, mode: 0o620, major: 5, minor: 0},
		entry{name: "extra/fifo", typ: tar.TypeFifo, mode: 0o600, uid: 33, gid: 33},
	)
}

// sixLayerImage is fiveLayerImage plus usernsLayer on top.
func sixLayerImage(t *testing.T) v1.Image {
	img, err := appendLayers(fiveLayerImage(t), usernsLayer(t))
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// TestUserNamespaceStore runs TestUserNamespaceChild in a new user and
// mount namespace (uid 0 there is host uid 100000), then checks from
// outside what it left on disk.
func TestUserNamespaceStore(t *testing.T) {
	requireRoot(t)
	if userns.RunningInUserNS() {
		t.Skip("this test makes its own user namespace and needs to run as real root")
	}
	dir, err := os.MkdirTemp("", "peapod-userns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	// A store of real root with a layer (made accessible to the namespace,
	// so that only its layout can stop the child), and an empty one.
	rootStore := filepath.Join(dir, "root-store")
	s := openStoreAt(t, rootStore, "")
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	reg.push(t, mirror, "library/small:1", smallImage(t, "a"))
	if _, err := s.Pull(ctxT(t), mirror.host+"/library/small:1", nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	emptyRootStore := filepath.Join(dir, "empty-root-store")
	openStoreAt(t, emptyRootStore, "").Close()
	// And one the namespace cannot even read.
	openStoreAt(t, filepath.Join(dir, "private-root-store"), "").Close()
	for _, p := range []string{dir, rootStore, emptyRootStore} {
		if err := chownTree(p, nsHostBase, nsHostBase, p != dir); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/proc/self/exe", "-test.run=^TestUserNamespaceChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: nsHostBase, Size: nsSize}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: nsHostBase, Size: nsSize}},
		Pdeathsig:   syscall.SIGKILL,
		// The host's root is not in the map: become the namespace's root.
		Credential: &syscall.Credential{Uid: 0, Gid: 0},
	}
	out, err := cmd.CombinedOutput()
	t.Logf("in the user namespace:\n%s", out)
	if err != nil {
		t.Fatalf("the test in the user namespace failed: %v", err)
	}
	if !bytes.Contains(out, []byte("--- PASS: TestUserNamespaceChild")) {
		t.Fatal("the test in the user namespace did not run")
	}

	// What the namespace unpacked carries host ids 100000+n.
	root := filepath.Join(dir, "images")
	var recs recordsFile
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(root, "images.json"))), &recs); err != nil {
		t.Fatal(err)
	}
	if len(recs.Images) != 1 || len(recs.Images[0].DiffIDs) != 6 {
		t.Fatalf("records: %+v", recs.Images)
	}
	l := func(i int, rel string) string {
		return filepath.Join(root, "layers", recs.Images[0].DiffIDs[i], "diff", rel)
	}
	wantOwner := func(p string, uid, gid uint32) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Error(err)
			return
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: host owner %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
		}
	}
	wantOwner(l(1, "etc/b"), nsHostBase+1000, nsHostBase+1001)
	wantOwner(l(1, "dir"), nsHostBase+7, nsHostBase+8)
	wantOwner(l(1, "etc/a"), nsHostBase, nsHostBase)
	wantOwner(l(2, "etc/a"), nsHostBase, nsHostBase) // whiteout
	wantOwner(l(2, "dir"), nsHostBase+7, nsHostBase+8)
	wantOwner(l(5, "extra/far"), nsHostBase, nsHostBase)
	wantOwner(l(5, "extra/halfmapped"), nsHostBase+1234, nsHostBase)
	wantOwner(l(5, "extra/mapped"), nsHostBase+65535, nsHostBase+65535)
	wantOwner(l(5, "extra/fardir"), nsHostBase, nsHostBase)
	wantOwner(l(5, "extra/fardir/in"), nsHostBase+5, nsHostBase+6)
	wantOwner(l(5, "extra/fifo"), nsHostBase+33, nsHostBase+33)
	var st unix.Stat_t
	if err := unix.Lstat(l(2, "etc/a"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("whiteout etc/a: mode %o rdev %d, %v", st.Mode, st.Rdev, err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(l(2, "dir"), "user.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque dir: user.overlay.opaque = %q, %v", buf[:max(n, 0)], err)
	}
	if _, err := unix.Lgetxattr(l(2, "dir"), "trusted.overlay.opaque", buf); !errors.Is(err, unix.ENODATA) {
		t.Errorf("opaque dir: trusted.overlay.opaque: %v, want none", err)
	}
	for _, p := range []string{l(1, "dev/null"), l(5, "extra/disk"), l(5, "extra/tty")} {
		if _, err := os.Lstat(p); !os.IsNotExist(err) {
			t.Errorf("device node %s: %v, want it left out", p, err)
		}
	}
	for _, d := range []string{"containers", "tmp"} {
		if entries, _ := os.ReadDir(filepath.Join(root, d)); len(entries) != 0 {
			t.Errorf("%s/ left: %v", d, entries)
		}
	}
	if mounts := mountsUnder(t, dir); len(mounts) != 0 {
		t.Errorf("mounts left: %v", mounts)
	}

	// Real root refuses the namespace's store rather than mount it with
	// the wrong owners.
	_, err = Open(Config{Root: root, Log: testLogger(t)})
	var le *LayoutError
	if !errors.As(err, &le) || !le.Store.UserNamespace || le.Process.UserNamespace ||
		!strings.Contains(err.Error(), "user namespace") {
		t.Fatalf("real root opening the namespace's store: %v", err)
	}
	t.Logf("refused as it should: %v", err)
}

// TestUserNamespaceChild is the part of TestUserNamespaceStore that runs
// in the user namespace; on its own it has nothing to do.
func TestUserNamespaceChild(t *testing.T) {
	dir := os.Getenv(childEnv)
	if dir == "" {
		t.Skip("runs only in the user namespace TestUserNamespaceStore makes")
	}
	if !userns.RunningInUserNS() || os.Geteuid() != 0 {
		t.Fatalf("not root in a user namespace (euid %d)", os.Geteuid())
	}

	t.Run("store of real root is refused", func(t *testing.T) {
		_, err := Open(Config{Root: filepath.Join(dir, "root-store"), Log: testLogger(t)})
		var le *LayoutError
		if !errors.As(err, &le) || le.Store.UserNamespace || !le.Process.UserNamespace {
			t.Fatalf("err = %v, want a LayoutError", err)
		}
		t.Logf("refused: %v", err)
		_, err = Open(Config{Root: filepath.Join(dir, "private-root-store"), Log: testLogger(t)})
		if err == nil || !strings.Contains(err.Error(), "user namespace") {
			t.Fatalf("store the namespace cannot read: %v", err)
		}
		t.Logf("refused: %v", err)
	})
	t.Run("empty store of real root is taken over", func(t *testing.T) {
		s, err := Open(Config{Root: filepath.Join(dir, "empty-root-store"), Log: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if !s.layout.UserNamespace {
			t.Error("layout not switched")
		}
	})

	logs := &logBuffer{}
	log := slog.New(slog.NewTextHandler(teeWriter{logs, testWriter{t}}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	reg.push(t, mirror, "six/layers:1", sixLayerImage(t))
	locked, err := appendLayers(smallImage(t, "a"), layer(t,
		entry{name: "private/", typ: tar.TypeDir, mode: 0o700, uid: 7, gid: 7},
		entry{name: "private/secret", body: "s\n", mode: 0o400, uid: 9, gid: 9},
		entry{name: "private/far", body: "f\n", mode: 0o400, uid: 80000, gid: 80000},
	))
	if err != nil {
		t.Fatal(err)
	}
	reg.push(t, mirror, "locked/files:1", locked)
	root := filepath.Join(dir, "images")
	s, err := Open(Config{Root: root, Log: log,
		RegistryConfigDir: hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)})})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	img, err := s.Pull(ctxT(t), "example.com/six/layers:1", nil)
	if err != nil {
		t.Fatalf("pull in a user namespace: %v", err)
	}
	if !s.layout.UserNamespace || s.layout.UIDMap != "0 100000 65536" || s.layout.GIDMap != "0 100000 65536" {
		t.Errorf("layout %+v", s.layout)
	}
	var lay storeLayout
	if err := json.Unmarshal([]byte(readFile(t, filepath.Join(root, "layout.json"))), &lay); err != nil || lay != s.layout {
		t.Errorf("layout.json = %+v, %v", lay, err)
	}
	// One line per layer for what could not be kept.
	if n := logs.count("owners this user namespace does not map"); n != 1 {
		t.Errorf("%d log lines about unmapped owners, want 1 (the top layer's)", n)
	}
	if !logs.contains("files=3 ") {
		t.Errorf("the unmapped-owner line does not count 3 files")
	}
	if n := logs.count("device nodes, which cannot be created"); n != 2 {
		t.Errorf("%d log lines about device nodes, want 2 (dev/null, and the top layer's two)", n)
	}

	// Metadata a user namespace can set is kept in the layers.
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(img.Layers[1], "etc/b"), "user.peapod", buf); err != nil || string(buf[:n]) != "yes" {
		t.Errorf("xattr user.peapod = %q, %v", buf[:max(n, 0)], err)
	}
	var st, hl unix.Stat_t
	if err := unix.Lstat(filepath.Join(img.Layers[1], "etc/b"), &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(filepath.Join(img.Layers[1], "etc/hardlink"), &hl); err != nil || hl.Ino != st.Ino {
		t.Errorf("hard link: ino %d vs %d, %v", hl.Ino, st.Ino, err)
	}
	if st.Mtim.Sec != testMtime.Unix() {
		t.Errorf("etc/b mtime %d", st.Mtim.Sec)
	}

	rootfs, err := s.MountRootfs("c1", img, false)
	if err != nil {
		t.Fatalf("mount in a user namespace: %v", err)
	}
	if opts := mountOptions(t, rootfs); !slices.Contains(opts, "userxattr") {
		t.Errorf("overlay options %v lack userxattr", opts)
	}

	// What the container sees, seen from inside it.
	script := `cat /etc/b; ls /dir
test -e /etc/a || echo etc/a gone; test -e /keep || echo keep gone
stat -c '%a %n' /etc/suid /etc/b
stat -c '%u:%g %n' /etc/b /dir /extra/far /extra/halfmapped /extra/mapped /extra/fardir /extra/fardir/in /extra/fifo
ls /extra; test -e /dev/null || echo dev/null left out
echo b3 > /etc/b; bb=/bin/busybox; $bb rm /etc/c; $bb rm -r /dir; $bb mkdir /dir; echo w > /dir/w
echo n > /n; $bb chown 4321:4322 /n`
	out, err := exec.Command("chroot", rootfs, "/bin/sh", "-c", script).CombinedOutput()
	want := `b2
z
etc/a gone
keep gone
4755 /etc/suid
640 /etc/b
1000:1001 /etc/b
7:8 /dir
0:0 /extra/far
1234:0 /extra/halfmapped
65535:65535 /extra/mapped
0:0 /extra/fardir
5:6 /extra/fardir/in
33:33 /extra/fifo
far
fardir
fifo
halfmapped
mapped
dev/null left out
`
	if err != nil || string(out) != want {
		t.Errorf("in the container: %v\n%s\nwant\n%s", err, out, want)
	}
	// The container's writes went to its upper directory the userxattr
	// way: a whiteout device, user.overlay.opaque on the recreated dir,
	// owners kept on copy-up.
	upper := filepath.Join(root, "containers/c1/upper")
	if err := unix.Lstat(filepath.Join(upper, "etc/c"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("rm /etc/c: upper etc/c mode %o, %v; want a whiteout", st.Mode, err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(upper, "dir"), "user.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("recreated /dir: user.overlay.opaque = %q, %v", buf[:max(n, 0)], err)
	}
	if err := unix.Lstat(filepath.Join(upper, "etc/b"), &st); err != nil || st.Uid != 1000 || st.Gid != 1001 {
		t.Errorf("copied-up etc/b: %d:%d, %v", st.Uid, st.Gid, err)
	}
	if err := unix.Lstat(filepath.Join(upper, "n"), &st); err != nil || st.Uid != 4321 || st.Gid != 4322 {
		t.Errorf("chowned /n: %d:%d, %v", st.Uid, st.Gid, err)
	}
	if b, inodes, err := s.WritableLayerUsage("c1"); err != nil || b == 0 || inodes < 4 {
		t.Errorf("WritableLayerUsage = %d, %d, %v", b, inodes, err)
	}
	if b, inodes, mp, err := s.FsUsage(); err != nil || b < 1<<20 || inodes < 20 || mp != root {
		t.Errorf("FsUsage = %d, %d, %q, %v", b, inodes, mp, err)
	}

	// An image whose files only their (mapped) owners may read is removed
	// with all its layers.
	if _, err := s.Pull(ctxT(t), "example.com/locked/files:1", nil); err != nil {
		t.Fatal(err)
	}
	layersBefore, _ := os.ReadDir(filepath.Join(root, "layers"))
	if err := s.Remove("example.com/locked/files:1"); err != nil {
		t.Fatal(err)
	}
	if layersAfter, _ := os.ReadDir(filepath.Join(root, "layers")); len(layersBefore) != 8 || len(layersAfter) != 6 {
		t.Errorf("layers: %d with the locked image, %d after removing it; want 8 and 6", len(layersBefore), len(layersAfter))
	}
	if trash, _ := filepath.Glob(filepath.Join(s.session.dir, "*")); len(trash) != 0 {
		t.Errorf("garbage left in the session: %v", trash)
	}

	// A deep image goes through the new mount API (fsconfig), with
	// userxattr too.
	const n = 40
	var deepLayers []v1.Layer
	deepLayers = append(deepLayers, layer(t, entry{name: "dir/", typ: tar.TypeDir}, entry{name: "dir/old", body: "old"}))
	for i := range n - 2 {
		deepLayers = append(deepLayers, layer(t, entry{name: fmt.Sprintf("f%02d", i), body: fmt.Sprint(i)}))
	}
	deepLayers = append(deepLayers, layer(t, entry{name: "dir/", typ: tar.TypeDir}, entry{name: "dir/.wh..wh..opq"}, entry{name: "dir/new", body: "new"}))
	deep, err := appendLayers(empty.Image, deepLayers...)
	if err != nil {
		t.Fatal(err)
	}
	reg.push(t, mirror, "deep/layers:1", deep)
	deepImg, err := s.Pull(ctxT(t), "example.com/deep/layers:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if opts := len(strings.Join(deepImg.Layers, ":")); opts < os.Getpagesize() {
		t.Fatalf("lowerdir is only %d bytes: the test does not exercise the new mount API", opts)
	}
	deepRootfs, err := s.MountRootfs("deep", deepImg, false)
	if err != nil {
		t.Fatalf("mount a deep image in a user namespace: %v", err)
	}
	if opts := mountOptions(t, deepRootfs); !slices.Contains(opts, "userxattr") {
		t.Errorf("deep overlay options %v lack userxattr", opts)
	}
	if entries, err := os.ReadDir(deepRootfs); err != nil || len(entries) != n-1 {
		t.Errorf("deep rootfs has %d entries, want %d: %v", len(entries), n-1, err)
	}
	if entries, err := os.ReadDir(filepath.Join(deepRootfs, "dir")); err != nil || len(entries) != 1 || entries[0].Name() != "new" {
		t.Errorf("opaque dir of the deep image shows %v, %v; want only new", entries, err)
	}
	if err := s.RemoveRootfs("deep"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(deepImg.ID); err != nil {
		t.Fatal(err)
	}

	// Unmount, mount again read-only, remove: nothing left.
	if err := s.UnmountRootfs("c1"); err != nil {
		t.Fatal(err)
	}
	if mounted, _ := isMountPoint(rootfs); mounted {
		t.Fatal("still mounted after UnmountRootfs")
	}
	if _, err := s.MountRootfs("c1", img, true); err != nil {
		t.Fatalf("read-only remount: %v", err)
	}
	if b := readFile(t, filepath.Join(rootfs, "etc/b")); b != "b3\n" {
		t.Errorf("after remount etc/b = %q", b)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to the read-only rootfs: %v", err)
	}
	if err := s.RemoveRootfs("c1"); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "containers")); len(entries) != 0 {
		t.Errorf("containers left: %v", entries)
	}
	if mounts := mountsUnder(t, dir); len(mounts) != 0 {
		t.Errorf("mounts left: %v", mounts)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "tmp")); len(entries) != 0 {
		t.Errorf("scratch left: %v", entries)
	}
}

func TestStoreLayoutIsRecordedAndChecked(t *testing.T) {
	requireRoot(t)
	if userns.RunningInUserNS() {
		t.Skip("checks real root's layout")
	}
	s, _ := pullFive(t)
	root := s.root
	s.Close()
	lp := filepath.Join(root, "layout.json")
	if got := readFile(t, lp); got != `{"version":1,"userNamespace":false}` {
		t.Errorf("layout.json = %s", got)
	}

	// A store from before layout.json was real root's.
	if err := os.Remove(lp); err != nil {
		t.Fatal(err)
	}
	s = openStoreAt(t, root, "")
	s.Close()
	if got := readFile(t, lp); got != `{"version":1,"userNamespace":false}` {
		t.Errorf("layout.json of an old store = %s", got)
	}

	// Layers of a user namespace are refused, as long as there are any.
	ns := `{"version":1,"userNamespace":true,"uidMap":"0 100000 65536","gidMap":"0 100000 65536"}`
	if err := os.WriteFile(lp, []byte(ns), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{Root: root, Log: testLogger(t)})
	var le *LayoutError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), `uid map "0 100000 65536"`) {
		t.Fatalf("err = %v", err)
	}
	if readFile(t, lp) != ns {
		t.Error("a refused open changed layout.json")
	}
	if err := os.WriteFile(lp, []byte(`{"version":2}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Config{Root: root, Log: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("newer layout: %v", err)
	}
	if err := os.WriteFile(lp, []byte(ns), 0o600); err != nil {
		t.Fatal(err)
	}
	// Emptied (what the remedy in the message says), it is taken over.
	for _, d := range []string{"layers", "containers"} {
		entries, _ := os.ReadDir(filepath.Join(root, d))
		for _, e := range entries {
			os.RemoveAll(filepath.Join(root, d, e.Name()))
		}
	}
	s = openStoreAt(t, root, "")
	defer s.Close()
	if s.layout.UserNamespace || readFile(t, lp) != `{"version":1,"userNamespace":false}` {
		t.Errorf("empty store not taken over: %s", readFile(t, lp))
	}
}

func openStoreAt(t *testing.T, root, hosts string) *Store {
	t.Helper()
	s, err := Open(Config{Root: root, RegistryConfigDir: hosts, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// chownTree gives p (and, if recursive, everything under it) to uid:gid.
func chownTree(p string, uid, gid int, recursive bool) error {
	if !recursive {
		return os.Lchown(p, uid, gid)
	}
	return filepath.Walk(p, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// mountsUnder lists this mount namespace's mount points under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(mountinfo.Unescape(f[4]), dir) {
			out = append(out, f[4])
		}
	}
	return out
}

// mountOptions are the superblock options of the mount on p.
func mountOptions(t *testing.T, p string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && mountinfo.Unescape(f[4]) == p {
			if i := slices.Index(f, "-"); i > 0 && i+3 < len(f) {
				return strings.Split(f[i+3], ",")
			}
		}
	}
	t.Fatalf("%s is not mounted", p)
	return nil
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), s)
}

func (l *logBuffer) contains(s string) bool { return l.count(s) > 0 }

type teeWriter struct {
	a, b interface{ Write([]byte) (int, error) }
}

func (w teeWriter) Write(p []byte) (int, error) {
	w.a.Write(p)
	return w.b.Write(p)
}
