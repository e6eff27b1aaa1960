package image

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

func TestPullThroughDefaultMirrorServesAnyRegistryName(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	img := smallImage(t, "pause")
	reg.push(t, mirror, "pause:3.10", img)
	s := openStore(t, hostsDir(t, map[string]string{
		"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host),
	}))

	got, err := s.Pull(ctxT(t), "registry.k8s.io/pause:3.10", nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := configDigest(t, img); got.ID != want {
		t.Errorf("ID = %s, want %s", got.ID, want)
	}
	if !slices.Equal(got.RepoTags, []string{"registry.k8s.io/pause:3.10"}) {
		t.Errorf("RepoTags = %v", got.RepoTags)
	}
	if len(got.RepoDigests) != 1 || !strings.HasPrefix(got.RepoDigests[0], "registry.k8s.io/pause@sha256:") {
		t.Errorf("RepoDigests = %v", got.RepoDigests)
	}
	if !mirror.nsSeen["registry.k8s.io"] {
		t.Errorf("mirror requests lacked ns=registry.k8s.io (saw %v)", mirror.nsSeen)
	}
	if got.Size <= 0 || len(got.Layers) != 1 {
		t.Errorf("Size = %d, Layers = %v", got.Size, got.Layers)
	}
	if b := readFile(t, filepath.Join(got.Layers[0], "pause")); b != "content of pause\n" {
		t.Errorf("layer content = %q", b)
	}
}

func TestPullByTagAndDigestThroughHostMirrorWithFallback(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	img := fiveLayerImage(t)
	digest := reg.push(t, mirror, "team/app:v1", img)
	// A dead mirror first: it is skipped. The server is never needed.
	dir := hostsDir(t, map[string]string{
		"made.up.example": fmt.Sprintf(`server = "http://%s"

[host."http://%s"]
  capabilities = ["pull", "resolve"]

[host."http://%s"]
  capabilities = ["pull", "resolve"]
  [host."http://%s".header]
    X-Peapod-Test = "from-hosts-toml"
`, deadHost, deadHost, mirror.host, mirror.host),
	})

	s := openStore(t, dir)
	byTag, err := s.Pull(ctxT(t), "made.up.example/team/app:v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(byTag.Layers) != 5 {
		t.Fatalf("%d layers, want 5", len(byTag.Layers))
	}
	if got := mirror.blobGets.Load(); got != 6 {
		t.Errorf("%d blob GETs, want 6 (5 layers + config)", got)
	}
	if mirror.headers["X-Peapod-Test"] != "from-hosts-toml" {
		t.Errorf("hosts.toml header not sent: %v", mirror.headers)
	}
	wantDigest := "made.up.example/team/app@" + digest.String()
	if !slices.Equal(byTag.RepoDigests, []string{wantDigest}) {
		t.Errorf("RepoDigests = %v, want %s", byTag.RepoDigests, wantDigest)
	}
	if byTag.User != "1000:1001" || byTag.WorkingDir != "/etc" || byTag.StopSignal != "SIGINT" ||
		!slices.Equal(byTag.Env, []string{"PATH=/bin", "FOO=bar"}) ||
		!slices.Equal(byTag.Entrypoint, []string{"/bin/sh", "-c"}) || !slices.Equal(byTag.Cmd, []string{"cat /etc/b"}) ||
		byTag.Labels["org.peapod.test"] != "five" {
		t.Errorf("config not carried over: %+v", byTag)
	}
	var wantSize int64
	layers, _ := img.Layers()
	for _, l := range layers {
		n, _ := l.Size()
		wantSize += n
	}
	if byTag.Size != wantSize {
		t.Errorf("Size = %d, want %d (compressed layers)", byTag.Size, wantSize)
	}

	// Pull by digest into a fresh store.
	s2 := openStore(t, dir)
	byDigest, err := s2.Pull(ctxT(t), wantDigest, nil)
	if err != nil {
		t.Fatal(err)
	}
	if byDigest.ID != byTag.ID || len(byDigest.RepoTags) != 0 || !slices.Equal(byDigest.RepoDigests, []string{wantDigest}) {
		t.Errorf("by digest: %+v", byDigest)
	}
	// A digest that the registry does not have fails clearly.
	_, err = s2.Pull(ctxT(t), "made.up.example/team/app@sha256:"+strings.Repeat("0", 64), nil)
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("pull of an unknown digest: %v", err)
	}
}

func TestPullPlainHTTPLocalRegistryWithoutConfig(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	plain := reg.front(t, frontOpts{})
	reg.push(t, plain, "plain/img:1", smallImage(t, "f"))
	s := openStore(t, "")
	// No hosts.toml: like containerd, a local registry on a port is tried
	// over https first and used over plain http.
	img, err := s.Pull(ctxT(t), plain.host+"/plain/img:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(img.RepoTags, []string{plain.host + "/plain/img:1"}) {
		t.Errorf("RepoTags = %v", img.RepoTags)
	}
}

func TestPullHTTPSMirrorWithCAOrSkipVerify(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	plain := reg.front(t, frontOpts{})
	secure := reg.front(t, frontOpts{tls: true})
	reg.push(t, plain, "sec/img:1", smallImage(t, "s"))

	noTrust := hostsDir(t, map[string]string{
		"secure.example": fmt.Sprintf("server = %q\n", "https://"+secure.host),
	})
	if _, err := openStore(t, noTrust).Pull(ctxT(t), "secure.example/sec/img:1", nil); err == nil ||
		!strings.Contains(err.Error(), "certificate") {
		t.Fatalf("pull from an untrusted https mirror: %v, want a certificate error", err)
	}

	skip := hostsDir(t, map[string]string{
		"secure.example": fmt.Sprintf("server = %q\nskip_verify = true\n", "https://"+secure.host),
	})
	if _, err := openStore(t, skip).Pull(ctxT(t), "secure.example/sec/img:1", nil); err != nil {
		t.Fatalf("skip_verify: %v", err)
	}

	withCA := hostsDir(t, map[string]string{
		"secure.example": fmt.Sprintf("server = %q\n\n[host.%q]\n  ca = \"mirror-ca.pem\"\n", "http://"+deadHost, "https://"+secure.host),
	})
	writeCertPEM(t, secure, filepath.Join(withCA, "secure.example", "mirror-ca.pem"))
	if _, err := openStore(t, withCA).Pull(ctxT(t), "secure.example/sec/img:1", nil); err != nil {
		t.Fatalf("ca relative to hosts.toml: %v", err)
	}
}

func TestPullOverridePathMirror(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	plain := reg.front(t, frontOpts{})
	odd := reg.front(t, frontOpts{pathPrefix: "/api/registry"})
	reg.push(t, plain, "x/y:1", smallImage(t, "o"))
	dir := hostsDir(t, map[string]string{
		"odd.example": fmt.Sprintf("server = %q\noverride_path = true\n", "http://"+odd.host+"/api/registry"),
	})
	if _, err := openStore(t, dir).Pull(ctxT(t), "odd.example/x/y:1", nil); err != nil {
		t.Fatal(err)
	}
	if odd.blobGets.Load() == 0 {
		t.Error("override_path mirror served no blobs")
	}
}

func TestPullOnlyMirrorIsNotTrustedToResolveTags(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	upstream := reg.front(t, frontOpts{})
	pullOnly := reg.front(t, frontOpts{})
	reg.push(t, upstream, "lib/app:2", smallImage(t, "a", "b"))
	upstream.blobGets.Store(0)
	upstream.tagResolves.Store(0)
	dir := hostsDir(t, map[string]string{
		"trusted.example": fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\"]\n", "http://"+upstream.host, "http://"+pullOnly.host),
	})
	if _, err := openStore(t, dir).Pull(ctxT(t), "trusted.example/lib/app:2", nil); err != nil {
		t.Fatal(err)
	}
	if pullOnly.tagResolves.Load() != 0 || upstream.tagResolves.Load() == 0 {
		t.Errorf("tag resolved by pull-only mirror %d times, by server %d times", pullOnly.tagResolves.Load(), upstream.tagResolves.Load())
	}
	if pullOnly.blobGets.Load() != 3 || upstream.blobGets.Load() != 0 {
		t.Errorf("blobs: %d from mirror (want 3), %d from server (want 0)", pullOnly.blobGets.Load(), upstream.blobGets.Load())
	}
}

func TestPullWithBasicAuthFromRequest(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	open := reg.front(t, frontOpts{})
	locked := reg.front(t, frontOpts{user: "alice", pass: "s3cret"})
	reg.push(t, open, "private/app:1", smallImage(t, "p"))
	dir := hostsDir(t, map[string]string{
		"private.example": fmt.Sprintf("server = %q\n", "http://"+locked.host),
	})
	s := openStore(t, dir)

	_, err := s.Pull(ctxT(t), "private.example/private/app:1", nil)
	if err == nil || !strings.Contains(err.Error(), "needs credentials") {
		t.Fatalf("pull without credentials: %v, want a clear authorization error", err)
	}
	_, err = s.Pull(ctxT(t), "private.example/private/app:1", &Auth{Username: "alice", Password: "wrong"})
	if err == nil || !strings.Contains(err.Error(), "needs credentials") {
		t.Fatalf("pull with a wrong password: %v", err)
	}
	if _, err := s.Pull(ctxT(t), "private.example/private/app:1", &Auth{Username: "alice", Password: "s3cret"}); err != nil {
		t.Fatalf("pull with username and password: %v", err)
	}
	encoded := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	if _, err := openStore(t, dir).Pull(ctxT(t), "private.example/private/app:1", &Auth{Auth: encoded}); err != nil {
		t.Fatalf("pull with auth string: %v", err)
	}
	if len(s.session.dir) == 0 {
		t.Fatal("no session")
	}
}

func TestConcurrentPullsOfOneImageDownloadOnce(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	img := fiveLayerImage(t)
	reg.push(t, mirror, "library/busybox:1.36", img)
	// A second image sharing all five layers, pulled at the same time.
	extra, err := mutate.AppendLayers(img, layer(t, entry{name: "extra", body: "extra\n"}))
	if err != nil {
		t.Fatal(err)
	}
	reg.push(t, mirror, "library/busybox:extra", extra)
	mirror.blobGets.Store(0)
	s := openStore(t, hostsDir(t, map[string]string{"docker.io": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))

	const n = 8
	var wg sync.WaitGroup
	ids := make([]string, n+1)
	errs := make([]error, n+1)
	for i := range n {
		wg.Go(func() {
			var img Image
			img, errs[i] = s.Pull(ctxT(t), "busybox:1.36", nil)
			ids[i] = img.ID
		})
	}
	wg.Go(func() {
		var img Image
		img, errs[n] = s.Pull(ctxT(t), "docker.io/library/busybox:extra", nil)
		ids[n] = img.ID
	})
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("pull %d: %v", i, err)
		}
	}
	for i := 1; i < n; i++ {
		if ids[i] != ids[0] {
			t.Fatalf("pulls disagree: %s vs %s", ids[i], ids[0])
		}
	}
	// 6 distinct layers + 2 configs, each fetched once.
	if got := mirror.blobGets.Load(); got != 8 {
		t.Errorf("%d blob GETs for 9 concurrent pulls, want 8", got)
	}
	if len(s.List()) != 2 {
		t.Errorf("List = %v", s.List())
	}
}

func TestPullPicksLinuxAmd64FromIndex(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	amd := smallImage(t, "amd64-file")
	arm := smallImage(t, "arm64-file")
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
	)
	idxDigest := reg.push(t, mirror, "multi/arch:1", idx)
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	img, err := s.Pull(ctxT(t), "quay.io/multi/arch:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if img.ID != configDigest(t, amd) {
		t.Errorf("picked %s, want the amd64 image %s", img.ID, configDigest(t, amd))
	}
	if !slices.Equal(img.RepoDigests, []string{"quay.io/multi/arch@" + idxDigest.String()}) {
		t.Errorf("RepoDigests = %v, want the index digest", img.RepoDigests)
	}
	if _, err := os.Stat(filepath.Join(img.Layers[0], "amd64-file")); err != nil {
		t.Error(err)
	}
}

func TestPullUnknownImageFailsAndLeavesNothing(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	mirror := reg.front(t, frontOpts{})
	s := openStore(t, hostsDir(t, map[string]string{"_default": fmt.Sprintf("server = %q\n", "http://"+mirror.host)}))
	_, err := s.Pull(ctxT(t), "nothing/here:1", nil)
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Get("nothing/here:1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after failed pull: %v", err)
	}
	if _, err := s.Pull(ctxT(t), "Bad:Ref:!", nil); err == nil {
		t.Error("pull of an invalid reference succeeded")
	}
}

func TestStalledDownloadIsAbandonedForTheNextHost(t *testing.T) {
	requireRoot(t)
	defer func(d time.Duration) { pullStallTimeout = d }(pullStallTimeout)
	pullStallTimeout = 300 * time.Millisecond
	reg := newTestRegistry()
	good := reg.front(t, frontOpts{})
	stuck := reg.front(t, frontOpts{stallBlobs: true})
	reg.push(t, good, "slow/app:1", smallImage(t, "s"))

	onlyStuck := hostsDir(t, map[string]string{"slow.example": fmt.Sprintf("server = %q\n", "http://"+stuck.host)})
	start := time.Now()
	_, err := openStore(t, onlyStuck).Pull(ctxT(t), "slow.example/slow/app:1", nil)
	if err == nil || !strings.Contains(err.Error(), "no data received") {
		t.Fatalf("pull from a stalled registry: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %s", d)
	}

	withFallback := hostsDir(t, map[string]string{"slow.example": fmt.Sprintf("server = %q\n\n[host.%q]\n", "http://"+good.host, "http://"+stuck.host)})
	if _, err := openStore(t, withFallback).Pull(ctxT(t), "slow.example/slow/app:1", nil); err != nil {
		t.Fatalf("pull with a stalled mirror before a good server: %v", err)
	}
}

// TestPullPastItsDeadlineSaysSo: the endpoints' errors keep their causes,
// so a pull cut short by its caller's deadline or cancel says so (the CRI
// answers DeadlineExceeded or Canceled, not Unknown), whichever step it
// was in.
func TestPullPastItsDeadlineSaysSo(t *testing.T) {
	requireRoot(t)
	reg := newTestRegistry()
	good := reg.front(t, frontOpts{})
	stuck := reg.front(t, frontOpts{stallBlobs: true})
	reg.push(t, good, "slow/app:1", smallImage(t, "d"))
	s := openStore(t, hostsDir(t, map[string]string{"slow.example": fmt.Sprintf("server = %q\n", "http://"+stuck.host)}))

	ctx, cancel := context.WithTimeout(ctxT(t), 300*time.Millisecond)
	defer cancel()
	_, err := s.Pull(ctx, "slow.example/slow/app:1", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("pull stalled in a blob past its deadline: %v, want it to wrap context.DeadlineExceeded", err)
	}

	ctx, cancel = context.WithCancel(ctxT(t))
	time.AfterFunc(300*time.Millisecond, cancel)
	_, err = s.Pull(ctx, "slow.example/slow/app:1", nil)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("pull stalled in a blob, then cancelled: %v, want it to wrap context.Canceled", err)
	}

	ctx, cancel = context.WithTimeout(ctxT(t), time.Nanosecond)
	defer cancel()
	<-ctx.Done()
	_, err = s.Pull(ctx, "slow.example/slow/app:2", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("pull whose deadline passed before the manifest: %v, want it to wrap context.DeadlineExceeded", err)
	}
}
