package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarDir writes the tree at dir as a tar file.
func tarDir(t *testing.T, dir, out string) {
	t.Helper()
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		h, err := tar.FileInfoHeader(fi, "")
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h.Name = rel
		if d.IsDir() {
			h.Name += "/"
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			src, err := os.Open(p)
			if err != nil {
				return err
			}
			defer src.Close()
			_, err = io.Copy(tw, src)
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

func ociArchive(t *testing.T, annotations map[string]string, imgs ...v1.Image) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range imgs {
		if err := p.AppendImage(img, layout.WithAnnotations(annotations), layout.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"})); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(t.TempDir(), "oci.tar")
	tarDir(t, dir, out)
	return out
}

func TestImportOCILayoutArchive(t *testing.T) {
	requireRoot(t)
	img := fiveLayerImage(t)
	archive := ociArchive(t, map[string]string{"org.opencontainers.image.ref.name": "example.com/imported/oci:1"}, img)
	s := openStore(t, "")
	var out bytes.Buffer
	imgs, err := s.Import(ctxT(t), archive, &out)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || imgs[0].ID != configDigest(t, img) {
		t.Fatalf("imported %+v", imgs)
	}
	manifestDigest, _ := img.Digest()
	got := imgs[0]
	if !slices.Equal(got.RepoTags, []string{"example.com/imported/oci:1"}) ||
		!slices.Equal(got.RepoDigests, []string{"example.com/imported/oci@" + manifestDigest.String()}) {
		t.Errorf("names: %v %v", got.RepoTags, got.RepoDigests)
	}
	if got.User != "1000:1001" || len(got.Layers) != 5 {
		t.Errorf("image: %+v", got)
	}
	if b := readFile(t, filepath.Join(got.Layers[3], "etc/b")); b != "b2\n" {
		t.Errorf("layer content %q", b)
	}
	text := out.String()
	if !strings.Contains(text, "layer 5/5") || strings.Contains(text, "\r") {
		t.Errorf("progress on a non-terminal:\n%s", text)
	}
	t.Logf("progress:\n%s", text)

	// Importing again finds every layer present.
	out.Reset()
	if _, err := s.Import(ctxT(t), archive, &out); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "already present") != 5 {
		t.Errorf("second import:\n%s", out.String())
	}
}

func TestImportOCILayoutWithOnlyATagImportsUnnamed(t *testing.T) {
	requireRoot(t)
	img := smallImage(t, "u")
	s := openStore(t, "")
	imgs, err := s.Import(ctxT(t), ociArchive(t, map[string]string{"org.opencontainers.image.ref.name": "1.0"}, img), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 1 || len(imgs[0].RepoTags) != 0 {
		t.Fatalf("imported %+v", imgs)
	}
	if _, err := s.Get(imgs[0].ID); err != nil {
		t.Error(err)
	}
}

func TestImportDockerSaveArchive(t *testing.T) {
	requireRoot(t)
	img := fiveLayerImage(t)
	other := smallImage(t, "other")
	dir := t.TempDir()
	archive := filepath.Join(dir, "docker.tar")
	refs := map[name.Reference]v1.Image{
		name.MustParseReference("example.com/imported/docker:2"): img,
		name.MustParseReference("busybox:latest"):                img,
		name.MustParseReference("example.com/other:1"):           other,
	}
	if err := tarball.MultiRefWriteToFile(archive, refs); err != nil {
		t.Fatal(err)
	}
	// And the same, gzip-compressed, as `docker save | gzip` makes it.
	gz := filepath.Join(dir, "docker.tar.gz")
	compress(t, archive, gz)

	for _, path := range []string{archive, gz} {
		t.Run(filepath.Base(path), func(t *testing.T) {
			s := openStore(t, "")
			imgs, err := s.Import(ctxT(t), path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(imgs) != 2 {
				t.Fatalf("imported %d images", len(imgs))
			}
			got, err := s.Get("busybox")
			if err != nil || got.ID != configDigest(t, img) {
				t.Fatalf("Get(busybox) = %+v, %v", got, err)
			}
			if !slices.Equal(got.RepoTags, []string{"docker.io/library/busybox:latest", "example.com/imported/docker:2"}) {
				t.Errorf("RepoTags = %v", got.RepoTags)
			}
			if _, err := s.Get("example.com/other:1"); err != nil {
				t.Error(err)
			}
			rootfs, err := s.MountRootfs("imported", got, false)
			if err != nil {
				t.Fatal(err)
			}
			if b := readFile(t, filepath.Join(rootfs, "etc/b")); b != "b2\n" {
				t.Errorf("etc/b = %q", b)
			}
		})
	}
}

func compress(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	zw := gzip.NewWriter(out)
	if _, err := io.Copy(zw, in); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestImportRejectsBadArchives(t *testing.T) {
	requireRoot(t)
	s := openStore(t, "")
	dir := t.TempDir()
	notTar := filepath.Join(dir, "junk")
	os.WriteFile(notTar, []byte(strings.Repeat("junk", 300)), 0o644)
	emptyTar := filepath.Join(dir, "empty.tar")
	os.WriteFile(emptyTar, tarBytes(t, []entry{{name: "README", body: "hi"}}), 0o644)
	for _, p := range []string{notTar, emptyTar, filepath.Join(dir, "missing.tar")} {
		if _, err := s.Import(ctxT(t), p, nil); err == nil {
			t.Errorf("import of %s succeeded", p)
		} else {
			t.Logf("%s: %v", filepath.Base(p), err)
		}
	}

	// A layer blob whose content does not match its digest.
	img := smallImage(t, "tampered")
	layoutDir := filepath.Join(t.TempDir(), "layout")
	p, err := layout.Write(layoutDir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	ls, _ := img.Layers()
	d, _ := ls[0].Digest()
	blob := filepath.Join(layoutDir, "blobs", "sha256", d.Hex)
	os.WriteFile(blob, tarBytes(t, []entry{{name: "tampered", body: "evil"}}), 0o644)
	out := filepath.Join(t.TempDir(), "tampered.tar")
	tarDir(t, layoutDir, out)
	_, err = s.Import(ctxT(t), out, nil)
	if err == nil || !strings.Contains(err.Error(), "corrupt or tampered") {
		t.Errorf("tampered import: %v", err)
	}
	if len(s.List()) != 0 {
		t.Errorf("images after failed imports: %v", s.List())
	}
	if _, err := s.Get("anything"); !errors.Is(err, ErrNotFound) {
		t.Error(err)
	}
}
