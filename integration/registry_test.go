package integration

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testRegistry is an in-process registry on 127.0.0.1 and a containerd-style
// hosts dir that mirrors every registry name to it.
type testRegistry struct {
	srv      *httptest.Server
	Host     string
	HostsDir string
}

func startRegistry(t testing.TB) *testRegistry {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(nopLogger())))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "_default"), 0o755); err != nil {
		t.Fatal(err)
	}
	hosts := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", srv.URL, srv.URL)
	if err := os.WriteFile(filepath.Join(dir, "_default", "hosts.toml"), []byte(hosts), 0o644); err != nil {
		t.Fatal(err)
	}
	return &testRegistry{srv: srv, Host: host, HostsDir: dir}
}

// push stores img under repo:tag in the registry; pulling
// "<any-registry>/<repo>:<tag>" through the mirror finds it.
func (r *testRegistry) push(t testing.TB, repo string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(r.Host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, _ := img.Digest()
	return d.String()
}

// busyboxImage is a real, small image: Debian's static busybox with its
// applets linked, and a passwd/group with root and nobody.
func busyboxImage(t testing.TB, cfg func(*v1.Config)) v1.Image {
	t.Helper()
	bb, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed (apt-get install busybox-static): %v", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(p string) {
		_ = tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeDir, Mode: 0o755})
	}
	file := func(p string, mode int64, b []byte) {
		_ = tw.WriteHeader(&tar.Header{Name: p, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(b))})
		_, _ = tw.Write(b)
	}
	for _, d := range []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "var/", "home/"} {
		dir(d)
	}
	file("bin/busybox", 0o755, bb)
	for _, a := range []string{"sh", "sleep", "echo", "cat", "ls", "nc", "id", "hostname", "head", "yes", "true", "false", "env", "ps", "wc", "dd", "kill", "touch", "grep", "mkdir", "rm", "wget", "top", "unshare", "tty", "tr", "mount", "seq"} {
		_ = tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n"))
	file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	_ = tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	c := cf.Config
	c.Env = []string{"PATH=/bin"}
	c.Cmd = []string{"sh"}
	if cfg != nil {
		cfg(&c)
	}
	img, err = mutate.Config(img, c)
	if err != nil {
		t.Fatal(err)
	}
	return mutate.MediaType(img, "application/vnd.oci.image.manifest.v1+json")
}
