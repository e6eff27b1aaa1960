package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: layers hold whiteout devices, trusted xattrs and foreign owners")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// openStore opens a store in a fresh directory and, at the end of the test,
// unmounts whatever rootfs is still mounted under it and closes it.
func openStore(t *testing.T, hostsDir string) *Store {
	t.Helper()
	root := filepath.Join(t.TempDir(), "images")
	s, err := Open(Config{Root: root, RegistryConfigDir: hostsDir, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cleanupStore(t, s) })
	return s
}

func cleanupStore(t *testing.T, s *Store) {
	entries, _ := os.ReadDir(filepath.Join(s.root, "containers"))
	for _, e := range entries {
		if err := s.RemoveRootfs(e.Name()); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	s.Close()
}

// entry is one tar entry of a test layer.
type entry struct {
	name   string
	typ    byte // tar.TypeReg when 0
	body   string
	mode   int64
	uid    int
	gid    int
	link   string
	xattrs map[string]string
	mtime  time.Time
	major  int64
	minor  int64
}

var testMtime = time.Date(2020, 2, 29, 12, 34, 56, 0, time.UTC)

func tarBytes(t *testing.T, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{
			Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid,
			Linkname: e.link, ModTime: e.mtime, Devmajor: e.major, Devminor: e.minor,
			Format: tar.FormatPAX,
		}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.ModTime.IsZero() {
			h.ModTime = testMtime
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layer builds a gzip-compressed layer from entries.
func layer(t *testing.T, entries ...entry) v1.Layer {
	t.Helper()
	b := tarBytes(t, entries)
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func diffIDOf(b []byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(b))}
}

var (
	busyboxOnce  sync.Once
	busyboxBytes []byte
)

// busyboxLayer holds Debian's static busybox as /bin/busybox with a few
// applet links: a real program to run in a real rootfs.
func busyboxLayer(t *testing.T) v1.Layer {
	t.Helper()
	busyboxOnce.Do(func() { busyboxBytes, _ = os.ReadFile("/usr/bin/busybox") })
	if len(busyboxBytes) == 0 {
		t.Skip("needs /usr/bin/busybox (apt-get install busybox-static)")
	}
	entries := []entry{
		{name: "bin/", typ: tar.TypeDir},
		{name: "bin/busybox", body: string(busyboxBytes), mode: 0o755},
	}
	for _, applet := range []string{"sh", "cat", "ls", "echo", "test", "stat"} {
		entries = append(entries, entry{name: "bin/" + applet, typ: tar.TypeSymlink, link: "busybox"})
	}
	return layer(t, entries...)
}

// fiveLayerImage is busybox plus files, whiteouts of a file and a
// directory, an opaque directory and metadata worth checking.
func fiveLayerImage(t *testing.T) v1.Image {
	t.Helper()
	layers := []v1.Layer{
		busyboxLayer(t),
		layer(t,
			entry{name: "etc/", typ: tar.TypeDir},
			entry{name: "etc/a", body: "a1\n"},
			entry{name: "etc/b", body: "b1\n", mode: 0o640, uid: 1000, gid: 1001, xattrs: map[string]string{"user.peapod": "yes"}},
			entry{name: "etc/hardlink", typ: tar.TypeLink, link: "etc/b"},
			entry{name: "etc/link", typ: tar.TypeSymlink, link: "/etc/b"},
			entry{name: "etc/suid", body: "#!/bin/sh\n", mode: 0o4755},
			entry{name: "etc/fifo", typ: tar.TypeFifo, mode: 0o600},
			entry{name: "dev/", typ: tar.TypeDir},
			entry{name: "dev/null", typ: tar.TypeChar, mode: 0o666, major: 1, minor: 3},
			entry{name: "dir/", typ: tar.TypeDir, mode: 0o750, uid: 7, gid: 8},
			entry{name: "dir/x", body: "x\n"},
			entry{name: "dir/y", body: "y\n"},
			entry{name: "dir/sub/", typ: tar.TypeDir},
			entry{name: "dir/sub/deep", body: "deep\n"},
			entry{name: "keep/", typ: tar.TypeDir},
			entry{name: "keep/k", body: "k\n"},
		),
		layer(t,
			entry{name: "etc/", typ: tar.TypeDir},
			entry{name: "etc/.wh.a", body: ""},
			entry{name: "dir/", typ: tar.TypeDir, mode: 0o750, uid: 7, gid: 8},
			entry{name: "dir/.wh..wh..opq", body: ""},
			entry{name: "dir/z", body: "z\n"},
		),
		layer(t,
			entry{name: "etc/", typ: tar.TypeDir},
			entry{name: "etc/b", body: "b2\n", mode: 0o640, uid: 1000, gid: 1001},
			entry{name: "etc/c", body: "c\n"},
		),
		layer(t,
			entry{name: ".wh.keep", body: ""},
			entry{name: "new/", typ: tar.TypeDir},
			entry{name: "new/file", body: "new\n"},
		),
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config = v1.Config{
		User: "1000:1001", WorkingDir: "/etc", StopSignal: "SIGINT",
		Env:        []string{"PATH=/bin", "FOO=bar"},
		Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"cat /etc/b"},
		Labels: map[string]string{"org.peapod.test": "five"},
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// smallImage is an image of the given layers' contents, one file each.
func smallImage(t *testing.T, files ...string) v1.Image {
	t.Helper()
	var layers []v1.Layer
	for _, f := range files {
		layers = append(layers, layer(t, entry{name: f, body: "content of " + f + "\n"}))
	}
	img, err := mutate.AppendLayers(empty.Image, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// testRegistry is go-containerregistry's in-memory registry, reachable
// through any number of front servers on 127.0.0.1 that count requests
// and may demand credentials.
type testRegistry struct {
	handler http.Handler
}

type front struct {
	srv          *httptest.Server
	host         string
	blobGets     atomic.Int64
	manifestGets atomic.Int64
	tagResolves  atomic.Int64
	mu           sync.Mutex
	nsSeen       map[string]bool
	headers      map[string]string
}

func newTestRegistry() *testRegistry {
	return &testRegistry{handler: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
}

type frontOpts struct {
	tls        bool
	user, pass string
	pathPrefix string // served instead of /v2 (for override_path)
	stallBlobs bool   // send a little of each blob, then nothing
}

func (r *testRegistry) front(t *testing.T, o frontOpts) *front {
	t.Helper()
	f := &front{nsSeen: map[string]bool{}, headers: map[string]string{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if o.pathPrefix != "" {
			rest, ok := strings.CutPrefix(req.URL.Path, o.pathPrefix)
			if !ok {
				http.NotFound(w, req)
				return
			}
			req.URL.Path = "/v2" + rest
		}
		if o.user != "" {
			u, p, ok := req.BasicAuth()
			if !ok || u != o.user || p != o.pass {
				w.Header().Set("WWW-Authenticate", `Basic realm="peapod-test"`)
				http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
				return
			}
		}
		f.mu.Lock()
		if ns := req.URL.Query().Get("ns"); ns != "" {
			f.nsSeen[ns] = true
		}
		if v := req.Header.Get("X-Peapod-Test"); v != "" {
			f.headers["X-Peapod-Test"] = v
		}
		f.mu.Unlock()
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/") {
			f.blobGets.Add(1)
			if o.stallBlobs {
				w.WriteHeader(http.StatusOK)
				w.Write([]byte{0x1f})
				w.(http.Flusher).Flush()
				<-req.Context().Done()
				return
			}
		}
		if strings.Contains(req.URL.Path, "/manifests/") {
			f.manifestGets.Add(1)
			if !strings.Contains(req.URL.Path, "/manifests/sha256:") {
				f.tagResolves.Add(1)
			}
		}
		r.handler.ServeHTTP(w, req)
	})
	f.srv = httptest.NewUnstartedServer(h)
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // TLS handshakes the tests fail on purpose
	if o.tls {
		f.srv.StartTLS()
	} else {
		f.srv.Start()
	}
	t.Cleanup(f.srv.Close)
	f.host = strings.TrimPrefix(strings.TrimPrefix(f.srv.URL, "http://"), "https://")
	return f
}

// push stores img (or an index) in the registry as repo:tag through a
// plain front and returns its digest.
func (r *testRegistry) push(t *testing.T, via *front, repoTag string, img any) v1.Hash {
	t.Helper()
	ref, err := name.ParseReference(via.host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	switch img := img.(type) {
	case v1.Image:
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	case v1.ImageIndex:
		if err := remote.WriteIndex(ref, img); err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	t.Fatalf("cannot push %T", img)
	return v1.Hash{}
}

// hostsDir writes hosts.toml files: namespace → content.
func hostsDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs.d")
	for ns, content := range files {
		if err := os.MkdirAll(filepath.Join(dir, ns), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ns, "hosts.toml"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func writeCertPEM(t *testing.T, f *front, path string) {
	t.Helper()
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// deadHost is a loopback address nothing listens on: a mirror that is down,
// and a server that must never be needed (tests contact no other host).
const deadHost = "127.0.0.1:1"

func configDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	h, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func appendLayers(img v1.Image, layers ...v1.Layer) (v1.Image, error) {
	return mutate.AppendLayers(img, layers...)
}
