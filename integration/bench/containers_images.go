package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The images of the container section, built here (no registry is
// reachable) and served to both runtimes by an in-process registry on
// 127.0.0.1. They are byte-for-byte the same in every run: fixed
// timestamps, a seeded generator for the random layer, gzip at a fixed
// level, so both runtimes pull the same digests.
const (
	busyboxRepo = "peapod-bench/busybox:1"
	layers5Repo = "peapod-bench/layers5:1"
)

// benchImage is one built image and what the report says about it.
type benchImage struct {
	img                  v1.Image
	digest               string
	layers               int
	compressed, unpacked int64 // bytes of the layer blobs, of the layer tars
	files                int
}

type benchImages struct {
	busybox, layers5 *benchImage
}

var (
	imagesOnce  sync.Once
	imagesBuilt *benchImages
	imagesErr   error
)

// buildBenchImages builds the images once per run; both runtimes get them.
func buildBenchImages() (*benchImages, error) {
	imagesOnce.Do(func() {
		bb, err := os.ReadFile("/usr/bin/busybox")
		if err != nil {
			imagesErr = fmt.Errorf("the container section needs a static busybox (apt-get install busybox-static): %w", err)
			return
		}
		var imgs benchImages
		if imgs.busybox, err = assembleImage([]*tarLayer{busyboxLayer(bb, nil)}); err != nil {
			imagesErr = fmt.Errorf("busybox image: %w", err)
			return
		}
		if imgs.layers5, err = assembleImage(fiveLayers(bb)); err != nil {
			imagesErr = fmt.Errorf("5-layer image: %w", err)
			return
		}
		imagesBuilt = &imgs
	})
	return imagesBuilt, imagesErr
}

// tarLayer writes one layer's tar with fixed metadata.
type tarLayer struct {
	buf   bytes.Buffer
	tw    *tar.Writer
	files int
}

var epoch = time.Unix(0, 0).UTC()

func newTarLayer() *tarLayer {
	l := &tarLayer{}
	l.tw = tar.NewWriter(&l.buf)
	return l
}

func (l *tarLayer) dir(p string) {
	_ = l.tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch})
}

func (l *tarLayer) file(p string, mode int64, b []byte) {
	_ = l.tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(b)), ModTime: epoch})
	_, _ = l.tw.Write(b)
	l.files++
}

func (l *tarLayer) symlink(p, target string) {
	_ = l.tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777, ModTime: epoch})
	l.files++
}

// busyboxLayer is Debian's static busybox with the applets the bench and a
// shell user need, and a passwd/group; extra adds files (so that another
// image's base layer differs from this one's).
func busyboxLayer(bb []byte, extra map[string]string) *tarLayer {
	l := newTarLayer()
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "var/", "home/"} {
		l.dir(d)
	}
	l.file("bin/busybox", 0o755, bb)
	for _, a := range []string{"sh", "sleep", "echo", "cat", "ls", "true", "false", "env", "ps", "kill"} {
		l.symlink("bin/"+a, "busybox")
	}
	l.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n"))
	l.file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	for p, c := range extra {
		l.file(p, 0o644, []byte(c))
	}
	return l
}

// fiveLayers is an image shaped like an application image: a base, many
// small files, an incompressible blob, a large compressible file, and a
// small top layer that changes a file and deletes one (a whiteout).
func fiveLayers(bb []byte) []*tarLayer {
	base := busyboxLayer(bb, map[string]string{"etc/os-release": "NAME=peapod-bench-layers5\n"})

	small := newTarLayer()
	small.dir("usr/")
	small.dir("usr/share/")
	small.dir("usr/share/bench/")
	for i := range 1000 {
		small.file(fmt.Sprintf("usr/share/bench/f%04d.txt", i), 0o644, []byte(strings.Repeat(fmt.Sprintf("file %d of the small-files layer\n", i), 32)))
	}

	random := newTarLayer()
	random.dir("opt/")
	random.dir("opt/bench/")
	blob := make([]byte, 8<<20)
	_, _ = rand.NewChaCha8([32]byte{'p', 'e', 'a', 'p', 'o', 'd'}).Read(blob)
	random.file("opt/bench/random.bin", 0o644, blob)

	text := newTarLayer()
	text.dir("opt/")
	text.dir("opt/bench/")
	var b bytes.Buffer
	for i := 0; b.Len() < 8<<20; i++ {
		fmt.Fprintf(&b, "2026-01-01T00:00:%02d.%06dZ INFO request %d served in %d µs from cache shard %d\n", i%60, i%1000000, i, (i*7919)%100000, i%16)
	}
	text.file("opt/bench/text.log", 0o644, b.Bytes())

	top := newTarLayer()
	top.dir("etc/")
	top.file("etc/bench.conf", 0o644, []byte("layers = 5\n"))
	top.dir("usr/")
	top.dir("usr/share/")
	top.dir("usr/share/bench/")
	top.file("usr/share/bench/.wh.f0000.txt", 0o644, nil)
	return []*tarLayer{base, small, random, text, top}
}

// assembleImage makes an OCI image of the layers (gzip, compressed once
// here) whose default command is a shell.
func assembleImage(tls []*tarLayer) (*benchImage, error) {
	bi := &benchImage{layers: len(tls)}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var layers []v1.Layer
	for _, tl := range tls {
		if err := tl.tw.Close(); err != nil {
			return nil, err
		}
		var gz bytes.Buffer
		zw, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
		if err != nil {
			return nil, err
		}
		if _, err := zw.Write(tl.buf.Bytes()); err != nil {
			return nil, err
		}
		if err := zw.Close(); err != nil {
			return nil, err
		}
		compressed := gz.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(compressed)), nil
		}, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			return nil, err
		}
		layers = append(layers, layer)
		bi.compressed += int64(len(compressed))
		bi.unpacked += int64(tl.buf.Len())
		bi.files += tl.files
	}
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg := cf.Config
	cfg.Env = []string{"PATH=/bin"}
	cfg.Cmd = []string{"sh"}
	if img, err = mutate.Config(img, cfg); err != nil {
		return nil, err
	}
	if img, err = mutate.CreatedAt(img, v1.Time{Time: epoch}); err != nil {
		return nil, err
	}
	d, err := img.Digest()
	if err != nil {
		return nil, err
	}
	bi.img, bi.digest = img, d.String()
	return bi, nil
}

// benchRegistry is an in-process registry on 127.0.0.1 holding the bench
// images. Both runtimes pull from it by its address
// (127.0.0.1:<port>/peapod-bench/...): each speaks plain http to a
// loopback registry on its own (containerd 1.6's CRI plugin picks http for
// localhost hosts when no config_path is set; peapod, like containerd's
// hosts.toml code, tries https without verification first and stays with
// http once the registry answers in plain http), so neither needs a mirror
// configuration.
type benchRegistry struct {
	host string
	srv  *http.Server
}

// startBenchRegistry builds the images (once per bench run) and serves
// them from a new registry that cl stops.
func startBenchRegistry(cl *cleanups) (*benchRegistry, error) {
	imgs, err := buildBenchImages()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{
		Handler:           registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		ReadHeaderTimeout: 30 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	r := &benchRegistry{host: ln.Addr().String(), srv: srv}
	cl.add("registry on "+r.host, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			return errors.Join(err, srv.Close())
		}
		return nil
	})
	for repo, bi := range map[string]*benchImage{busyboxRepo: imgs.busybox, layers5Repo: imgs.layers5} {
		ref, err := name.ParseReference(r.ref(repo), name.Insecure)
		if err != nil {
			return nil, err
		}
		if err := remote.Write(ref, bi.img); err != nil {
			return nil, fmt.Errorf("push %s: %w", ref, err)
		}
	}
	return r, nil
}

func (r *benchRegistry) ref(repo string) string { return r.host + "/" + repo }
