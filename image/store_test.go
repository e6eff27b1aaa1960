package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestGetByNameDigestIDAndPrefix(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	digest := reg.push(t, mirror, "library/busybox:1.36", smallImage(t, "bb"))
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	img, err := s.Pull(ctxT(t), "busybox:1.36", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(img.RepoTags, []string{"docker.io/library/busybox:1.36"}) {
		t.Errorf("RepoTags = %v", img.RepoTags)
	}
	if !slices.Equal(img.RepoDigests, []string{"docker.io/library/busybox@" + digest.String()}) {
		t.Errorf("RepoDigests = %v", img.RepoDigests)
	}
	hex := strings.TrimPrefix(img.ID, "sha256:")
	for _, ref := range []string{
		"busybox:1.36", "docker.io/busybox:1.36", "docker.io/library/busybox:1.36", "index.docker.io/library/busybox:1.36",
		"busybox@" + digest.String(), img.ID, hex, img.ID[:19], hex[:12],
	} {
		got, err := s.Get(ref)
		if err != nil || got.ID != img.ID {
			t.Errorf("Get(%q) = %s, %v", ref, got.ID, err)
		}
	}
	for _, ref := range []string{"busybox", "busybox:1.37", "sha256:" + strings.Repeat("f", 64), "ffffffffffff", "other/busybox:1.36"} {
		if _, err := s.Get(ref); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%q) = %v, want ErrNotFound", ref, err)
		}
	}
	if list := s.List(); len(list) != 1 || list[0].ID != img.ID || list[0].Pinned {
		t.Errorf("List = %+v", list)
	}
}

func TestTagMovesToNewImage(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	reg.push(t, mirror, "library/app:latest", smallImage(t, "v1"))
	old, err := s.Pull(ctxT(t), "app", nil)
	if err != nil {
		t.Fatal(err)
	}
	reg.push(t, mirror, "library/app:latest", smallImage(t, "v2"))
	cur, err := s.Pull(ctxT(t), "app", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cur.ID == old.ID {
		t.Fatal("same image")
	}
	got, err := s.Get(old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.RepoTags) != 0 || len(got.RepoDigests) != 1 {
		t.Errorf("old image keeps RepoTags %v RepoDigests %v; want the tag moved, the digest kept", got.RepoTags, got.RepoDigests)
	}
	if g, _ := s.Get("app"); g.ID != cur.ID {
		t.Errorf("app resolves to %s, want %s", g.ID, cur.ID)
	}
}

func TestRemoveCollectsUnusedLayersAndKeepsThoseInUse(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	base := layer(t, entry{name: "shared", body: "shared\n"})
	a := smallImage(t)
	b := smallImage(t)
	var err error
	if a, err = appendLayers(a, base, layer(t, entry{name: "only-a", body: "a"})); err != nil {
		t.Fatal(err)
	}
	if b, err = appendLayers(b, base, layer(t, entry{name: "only-b", body: "b"})); err != nil {
		t.Fatal(err)
	}
	reg.push(t, mirror, "library/a:1", a)
	reg.push(t, mirror, "library/b:1", b)
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	imgA, err := s.Pull(ctxT(t), "a:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	imgB, err := s.Pull(ctxT(t), "b:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if imgA.Layers[0] != imgB.Layers[0] {
		t.Fatalf("shared layer unpacked twice: %s, %s", imgA.Layers[0], imgB.Layers[0])
	}
	if got := layerDirs(t, s); len(got) != 3 {
		t.Fatalf("%d layer dirs, want 3", len(got))
	}

	if err := s.Remove("a:1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(imgA.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed image still there: %v", err)
	}
	if _, err := os.Stat(imgA.Layers[1]); !os.IsNotExist(err) {
		t.Errorf("layer only A used survives: %v", err)
	}
	if _, err := os.Stat(imgA.Layers[0]); err != nil {
		t.Errorf("shared layer removed: %v", err)
	}
	if _, err := os.Stat(s.configPath(imgA.ID)); !os.IsNotExist(err) {
		t.Errorf("config of A survives: %v", err)
	}

	// A container's rootfs keeps its layers after its image is gone.
	rootfs, err := s.MountRootfs("user-of-b", imgB, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(imgB.ID[:20]); err != nil {
		t.Fatal(err)
	}
	if b := readFile(t, filepath.Join(rootfs, "only-b")); b != "b" {
		t.Errorf("rootfs lost a file after image removal: %q", b)
	}
	if got := layerDirs(t, s); len(got) != 2 {
		t.Errorf("layer dirs %v, want the 2 of the container", got)
	}
	if _, err := s.MountRootfs("another", imgB, false); err == nil {
		t.Error("mounted a rootfs of a removed image")
	}
	if err := s.RemoveRootfs("user-of-b"); err != nil {
		t.Fatal(err)
	}
	if got := layerDirs(t, s); len(got) != 0 {
		t.Errorf("layers left after the last user went: %v", got)
	}
	if blobs, _ := os.ReadDir(filepath.Join(s.root, "blobs/sha256")); len(blobs) != 0 {
		t.Errorf("blobs left: %v", blobs)
	}
	if err := s.Remove("never/pulled:1"); err != nil {
		t.Errorf("removing an unknown image: %v", err)
	}
	if err := s.Remove(imgB.ID); err != nil {
		t.Errorf("removing twice: %v", err)
	}
}

func layerDirs(t *testing.T, s *Store) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestFsUsageCountsLayers(t *testing.T) {
	requireRoot(t)
	s, img := pullFive(t)
	b, inodes, mp, err := s.FsUsage()
	if err != nil {
		t.Fatal(err)
	}
	if b < 1<<20 || inodes < 30 || mp != s.root {
		t.Errorf("FsUsage = %d bytes, %d inodes, %q", b, inodes, mp)
	}
	if err := s.Remove(img.ID); err != nil {
		t.Fatal(err)
	}
	b2, inodes2, _, err := s.FsUsage()
	if err != nil || b2 >= b || inodes2 >= inodes {
		t.Errorf("after removal FsUsage = %d bytes, %d inodes, %v", b2, inodes2, err)
	}
}

func TestOpenRemovesRemainsOfACrashButNotOfALiveStore(t *testing.T) {
	requireRoot(t)
	s, img := pullFive(t)
	root := s.root

	// A process that died half-way through an unpack, and a layer that was
	// committed but never recorded.
	dead := filepath.Join(root, "tmp", "deadbeef")
	if err := os.MkdirAll(filepath.Join(dead, "layer-1-x", "diff", "usr"), 0o755); err != nil {
		t.Fatal(err)
	}
	orphan := filepath.Join(root, "layers", strings.Repeat("ab", 32))
	if err := os.MkdirAll(filepath.Join(orphan, "diff"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A torn write of the records never replaced images.json.
	if err := os.WriteFile(filepath.Join(root, ".images.json.tmp-123"), []byte(`{"images": [`), 0o600); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(Config{Root: root, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("dead scratch left: %v", err)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan layer left: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, ".images.json.tmp-123")); !os.IsNotExist(err) {
		t.Errorf("torn records file left: %v", err)
	}
	if _, err := os.Stat(s.session.dir); err != nil {
		t.Errorf("scratch of the live store removed: %v", err)
	}
	got, err := s2.Get("example.com/five/layers:1")
	if err != nil || got.ID != img.ID || !slices.Equal(got.Layers, img.Layers) {
		t.Errorf("second store sees %+v, %v", got, err)
	}
	// Changes by one store are seen by the other.
	if err := s2.Remove(img.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(img.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("first store still sees the removed image: %v", err)
	}
}

func TestPinnedImages(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	reg.push(t, mirror, "pause:3.10", smallImage(t, "p"))
	dir := hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)})
	s, err := Open(Config{Root: filepath.Join(t.TempDir(), "images"), RegistryConfigDir: dir, PinnedImages: []string{"registry.k8s.io/pause:3.10"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	img, err := s.Pull(ctxT(t), "registry.k8s.io/pause:3.10", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !img.Pinned {
		t.Error("pinned image not reported pinned")
	}
}
