package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The images of critest v1.37.0's validation suite (pkg/validate,
// pkg/framework and images/ of sigs.k8s.io/cri-tools), rebuilt from a busybox
// built with its default config and from imgbin. Every name is the one
// critest uses, registry host included; the mirror config sends every
// registry host to the one in-process registry, so a name is pushed there as
// its repository path and tag.

// stamp is the time of every file and config: the same inputs give the same
// digests on every run.
var stamp = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// testImage is one image (or manifest list) and every name it is pushed as.
type testImage struct {
	names []string // as critest writes them; all must share one image
	what  string   // content, for the report
	// index: push a manifest list holding the linux/<arch> image, as
	// upstream does for its multi-arch images.
	index bool
	img   v1.Image
}

// digestPinned are the references critest pulls by a digest of upstream
// content: they cannot be served here. Each maps to the spec that uses it.
var digestPinned = map[string]string{
	"gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2f5bf2c45f2f605a0bd3bce7cf37420ec9d3ed50ac2758413308766bf": "Image Manager public image with digest should be pulled and removed [Conformance]",
}

// inputs are the binaries the images are made of.
type inputs struct {
	busybox []byte   // static busybox, default config
	applets []string // its applet names
	imgbin  []byte   // static imgbin (nginx, nnp, pause)
}

func loadInputs(busyboxPath, imgbinPath string) (*inputs, error) {
	bb, err := os.ReadFile(busyboxPath)
	if err != nil {
		return nil, fmt.Errorf("busybox: %w (build it with `make %s`)", err, busyboxPath)
	}
	out, err := exec.Command(busyboxPath, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busyboxPath, err)
	}
	applets := strings.Fields(string(out))
	need := []string{"sh", "top", "pgrep", "pidof", "ipcs", "httpd", "id", "ls", "cat", "echo", "sleep", "touch",
		"hostname", "netstat", "ping", "mount", "grep", "dd", "seq", "sync", "mkdir", "chmod", "brctl", "nc", "wget"}
	have := map[string]bool{}
	for _, a := range applets {
		have[a] = true
	}
	for _, a := range need {
		if !have[a] {
			return nil, fmt.Errorf("%s lacks the %q applet critest needs: build busybox with its default config", busyboxPath, a)
		}
	}
	ib, err := os.ReadFile(imgbinPath)
	if err != nil {
		return nil, err
	}
	return &inputs{busybox: bb, applets: applets, imgbin: ib}, nil
}

// busybox's /etc/passwd and /etc/group, as in the busybox image.
const (
	etcPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
`
	etcGroup = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
`
)

// layerBuilder writes one layer tar.
type layerBuilder struct {
	buf bytes.Buffer
	tw  *tar.Writer
	err error
}

func newLayer() *layerBuilder {
	b := &layerBuilder{}
	b.tw = tar.NewWriter(&b.buf)
	return b
}

func (b *layerBuilder) hdr(h *tar.Header, body []byte) {
	if b.err != nil {
		return
	}
	h.ModTime, h.Format = stamp, tar.FormatPAX
	if h.Typeflag == tar.TypeReg {
		h.Size = int64(len(body))
	}
	if b.err = b.tw.WriteHeader(h); b.err == nil && len(body) > 0 {
		_, b.err = b.tw.Write(body)
	}
}

func (b *layerBuilder) dir(name string, mode int64, uidgid ...int) {
	h := &tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode}
	if len(uidgid) == 2 {
		h.Uid, h.Gid = uidgid[0], uidgid[1]
	}
	b.hdr(h, nil)
}

func (b *layerBuilder) file(name string, mode int64, body []byte) {
	b.hdr(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode}, body)
}

func (b *layerBuilder) hardlink(name, target string) {
	b.hdr(&tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o755}, nil)
}

func (b *layerBuilder) symlink(name, target string) {
	b.hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}, nil)
}

// layer gzips the tar once; the digests are those of these exact bytes.
func (b *layerBuilder) layer() (v1.Layer, error) {
	if b.err == nil {
		b.err = b.tw.Close()
	}
	if b.err != nil {
		return nil, b.err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	if _, err := zw.Write(b.buf.Bytes()); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	data := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.DockerLayer))
}

// busyboxLayer is the busybox image: /bin/busybox with every applet as a
// hard link next to it, the busybox image's /etc/passwd and /etc/group.
func busyboxLayer(in *inputs) (v1.Layer, error) {
	b := newLayer()
	for _, d := range []string{"bin", "dev", "etc", "home", "usr", "usr/bin", "usr/sbin", "usr/local", "usr/local/bin", "var", "var/spool", "var/spool/mail", "var/www"} {
		b.dir(d, 0o755)
	}
	b.dir("root", 0o700)
	b.dir("tmp", 0o1777)
	b.file("bin/busybox", 0o755, in.busybox)
	applets := append([]string(nil), in.applets...)
	sort.Strings(applets)
	for _, a := range applets {
		if a != "busybox" && !strings.Contains(a, "/") {
			b.hardlink("bin/"+a, "bin/busybox")
		}
	}
	b.file("etc/passwd", 0o644, []byte(etcPasswd))
	b.file("etc/group", 0o644, []byte(etcGroup))
	return b.layer()
}

// image assembles a Docker schema 2 image for linux/<GOARCH>.
func image(cfg v1.Config, comment string, layers ...v1.Layer) (v1.Image, error) {
	cf := &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: stamp},
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	}
	img, err := mutate.ConfigFile(empty.Image, cf)
	if err != nil {
		return nil, err
	}
	var adds []mutate.Addendum
	for i, l := range layers {
		adds = append(adds, mutate.Addendum{Layer: l, History: v1.History{
			Created:   v1.Time{Time: stamp},
			CreatedBy: fmt.Sprintf("peapod integration/critest: %s (layer %d)", comment, i+1),
		}})
	}
	return mutate.Append(img, adds...)
}

// buildImages builds every image critest's validation suite pulls.
func buildImages(in *inputs) ([]*testImage, error) {
	base, err := busyboxLayer(in)
	if err != nil {
		return nil, err
	}
	shCfg := func() v1.Config { return v1.Config{Env: []string{defaultPath}, Cmd: []string{"sh"}} }
	var imgs []*testImage
	add := func(what string, index bool, cfg v1.Config, layers []v1.Layer, names ...string) error {
		img, err := image(cfg, what, layers...)
		if err != nil {
			return fmt.Errorf("%s: %w", names[0], err)
		}
		imgs = append(imgs, &testImage{names: names, what: what, index: index, img: img})
		return nil
	}
	// A busybox with one marker file, like cri-tools' images/image-test
	// (FROM busybox, ADD $TEST $TEST).
	marked := func(file string) ([]v1.Layer, error) {
		b := newLayer()
		b.file(file, 0o644, nil)
		l, err := b.layer()
		return []v1.Layer{base, l}, err
	}

	// The default image of every container spec.
	if err := add("busybox (default config, static), CMD [sh]", true, shCfg(), []v1.Layer{base},
		"registry.k8s.io/e2e-test-images/busybox:1.29-2"); err != nil {
		return nil, err
	}

	// images/image-test: busybox + /<name>.
	for _, t := range []struct{ file, name string }{
		{"test-image-1", "test-image-1:latest"},
		{"test-image-2", "test-image-2:latest"},
		{"test-image-3", "test-image-3:latest"},
		{"test-image-latest", "test-image-latest:latest"},
		{"test", "test-image-tag:test"},
		{"all", "test-image-tag:all"},
	} {
		layers, err := marked(t.file)
		if err != nil {
			return nil, err
		}
		if err := add("busybox + /"+t.file+", CMD [sh]", true, shCfg(), layers,
			"gcr.io/k8s-staging-cri-tools/"+t.name); err != nil {
			return nil, err
		}
	}
	// Three tags of one image.
	layers, err := marked("same-image")
	if err != nil {
		return nil, err
	}
	if err := add("busybox + /same-image, CMD [sh]; one image, three tags", true, shCfg(), layers,
		"gcr.io/k8s-staging-cri-tools/test-image-tags:1",
		"gcr.io/k8s-staging-cri-tools/test-image-tags:2",
		"gcr.io/k8s-staging-cri-tools/test-image-tags:3"); err != nil {
		return nil, err
	}
	// Upstream pulls it by a digest of upstream content; the tag is served
	// so that the pull gets as far as "manifest unknown".
	layers, err = marked("test-image-digest")
	if err != nil {
		return nil, err
	}
	if err := add("busybox + /test-image-digest (its tag only: critest pulls it by an upstream digest)", true, shCfg(), layers,
		"gcr.io/k8s-staging-cri-tools/test-image-digest:latest"); err != nil {
		return nil, err
	}

	// images/image-user: busybox with USER set.
	for _, u := range []struct{ name, user string }{
		{"test-image-user-uid", "1002"},
		{"test-image-user-username", "www-data"},
		{"test-image-user-uid-group", "1003:1004"},
		{"test-image-user-username-group", "www-data:1004"},
	} {
		cfg := shCfg()
		cfg.User = u.user
		if err := add("busybox, USER "+u.user+", CMD [sh]", true, cfg, []v1.Layer{base},
			"gcr.io/k8s-staging-cri-tools/"+u.name+":latest"); err != nil {
			return nil, err
		}
	}

	// images/image-predefined-group: adduser -u 1000 default-user, group
	// group-defined-in-image (50000) holding it, USER 1000.
	{
		b := newLayer()
		b.dir("etc", 0o755)
		b.file("etc/passwd", 0o644, []byte(etcPasswd+"default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"))
		b.file("etc/group", 0o644, []byte(etcGroup+"default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"))
		b.dir("home", 0o755)
		b.dir("home/default-user", 0o2755, 1000, 1000)
		l, err := b.layer()
		if err != nil {
			return nil, err
		}
		cfg := shCfg()
		cfg.User = "1000"
		if err := add("busybox + user default-user (1000) in group group-defined-in-image (50000), USER 1000", true, cfg,
			[]v1.Layer{base, l}, "gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest"); err != nil {
			return nil, err
		}
	}

	// nginx stand-ins: imgbin as /usr/sbin/nginx in front of busybox httpd.
	nginxLayer := func(port int) (v1.Layer, error) {
		b := newLayer()
		for _, d := range []string{"etc", "etc/nginx", "etc/nginx/conf.d", "usr", "usr/sbin", "usr/share", "usr/share/nginx", "usr/share/nginx/html", "var", "var/run", "var/log", "var/log/nginx"} {
			b.dir(d, 0o755)
		}
		b.file("usr/sbin/nginx", 0o755, in.imgbin)
		b.file("etc/nginx/conf.d/default.conf", 0o644, fmt.Appendf(nil,
			"# peapod critest stand-in: /usr/sbin/nginx serves root with busybox httpd on this port\nserver {\n    listen       %d;\n    server_name  localhost;\n    location / {\n        root   /usr/share/nginx/html;\n        index  index.html;\n    }\n}\n", port))
		b.file("usr/share/nginx/html/index.html", 0o644, []byte("<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1><p>(busybox httpd behind peapod's critest nginx stand-in)</p></body></html>\n"))
		return b.layer()
	}
	nginxCfg := func(port int, stop string) v1.Config {
		return v1.Config{
			Env:          []string{defaultPath, "NGINX_VERSION=stand-in"},
			Cmd:          []string{"nginx", "-g", "daemon off;"},
			ExposedPorts: map[string]struct{}{fmt.Sprintf("%d/tcp", port): {}},
			StopSignal:   stop,
		}
	}
	if l, err := nginxLayer(80); err != nil {
		return nil, err
	} else if err := add(`nginx stand-in on :80 (/usr/sbin/nginx = imgbin: pid in /var/run/nginx.pid, cmdline "nginx: master process ...", busybox httpd child), CMD [nginx -g daemon off;]`,
		true, nginxCfg(80, ""), []v1.Layer{base, l}, "registry.k8s.io/e2e-test-images/nginx:1.14-2"); err != nil {
		return nil, err
	}
	if l, err := nginxLayer(12003); err != nil {
		return nil, err
	} else if err := add("nginx stand-in on :12003 for host-network tests, STOPSIGNAL SIGQUIT, CMD [nginx -g daemon off;]",
		false, nginxCfg(12003, "SIGQUIT"), []v1.Layer{base, l}, "gcr.io/k8s-staging-cri-tools/hostnet-nginx-"+runtime.GOARCH+":latest"); err != nil {
		return nil, err
	}

	// httpd: busybox httpd on :80, announcing itself on stderr (critest
	// looks for "httpd" in the container log).
	{
		b := newLayer()
		for _, d := range []string{"usr", "usr/local", "usr/local/bin", "usr/local/apache2", "usr/local/apache2/htdocs"} {
			b.dir(d, 0o755)
		}
		b.file("usr/local/apache2/htdocs/index.html", 0o644, []byte("<html><body><h1>It works!</h1></body></html>\n"))
		b.file("usr/local/bin/httpd-foreground", 0o755, []byte(`#!/bin/sh
# peapod critest stand-in for Apache httpd: busybox httpd on :80.
echo "httpd-foreground: starting httpd (busybox) on 0.0.0.0:80, root /usr/local/apache2/htdocs" >&2
exec httpd -f -v -p 0.0.0.0:80 -h /usr/local/apache2/htdocs
`))
		l, err := b.layer()
		if err != nil {
			return nil, err
		}
		cfg := v1.Config{
			Env:          []string{"PATH=/usr/local/apache2/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HTTPD_PREFIX=/usr/local/apache2"},
			Cmd:          []string{"httpd-foreground"},
			WorkingDir:   "/usr/local/apache2",
			ExposedPorts: map[string]struct{}{"80/tcp": {}},
		}
		if err := add("httpd stand-in: busybox httpd on :80 via /usr/local/bin/httpd-foreground (logs \"httpd...\" to stderr), WORKDIR /usr/local/apache2",
			true, cfg, []v1.Layer{base, l}, "registry.k8s.io/e2e-test-images/httpd:2.4.39-4"); err != nil {
			return nil, err
		}
	}

	// nonewprivs: a setuid-root probe printing its effective uid.
	{
		b := newLayer()
		for _, d := range []string{"usr", "usr/local", "usr/local/bin"} {
			b.dir(d, 0o755)
		}
		b.file("usr/local/bin/nnp", 0o4755, in.imgbin)
		l, err := b.layer()
		if err != nil {
			return nil, err
		}
		cfg := v1.Config{Env: []string{defaultPath}, Cmd: []string{"/usr/local/bin/nnp"}, User: "1000"}
		if err := add(`busybox + setuid-root /usr/local/bin/nnp (imgbin: prints "Effective uid: N"), USER 1000, CMD [/usr/local/bin/nnp]`,
			true, cfg, []v1.Layer{base, l}, "registry.k8s.io/e2e-test-images/nonewprivs:1.3"); err != nil {
			return nil, err
		}
	}

	// pause:3.9 from two registries: one image, two names.
	{
		b := newLayer()
		b.file("pause", 0o755, in.imgbin)
		l, err := b.layer()
		if err != nil {
			return nil, err
		}
		cfg := v1.Config{Env: []string{defaultPath}, Entrypoint: []string{"/pause"}, User: "65535:65535"}
		if err := add("/pause only (imgbin: sleeps, reaps, exits 0 on TERM), ENTRYPOINT [/pause], USER 65535:65535", true, cfg,
			[]v1.Layer{l}, "registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"); err != nil {
			return nil, err
		}
	}
	return imgs, nil
}

// registryHosts are the registry hosts of every name (for per-host mirror
// config next to _default).
func registryHosts(imgs []*testImage) []string {
	seen := map[string]bool{}
	var out []string
	for _, ti := range imgs {
		for _, n := range ti.names {
			h := strings.SplitN(n, "/", 2)[0]
			if !seen[h] {
				seen[h] = true
				out = append(out, h)
			}
		}
	}
	for ref := range digestPinned {
		if h := strings.SplitN(ref, "/", 2)[0]; !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out
}

// repoTag splits "host/path/name:tag" into "path/name" and "tag".
func repoTag(ref string) (repo, tag string) {
	rest := strings.SplitN(ref, "/", 2)[1]
	tag = "latest"
	if i := strings.LastIndex(rest, ":"); i > strings.LastIndex(rest, "/") {
		rest, tag = rest[:i], rest[i+1:]
	}
	return path.Clean(rest), tag
}
