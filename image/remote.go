package image

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Auth is the credential of a pull, as in the CRI AuthConfig: a user and
// password, Auth (base64 "user:password"), an identity token (OAuth2
// refresh token) or a registry token (bearer token).
type Auth struct {
	Username      string
	Password      string
	Auth          string
	IdentityToken string
	RegistryToken string
}

func (a *Auth) authenticator() authn.Authenticator {
	if a == nil || *a == (Auth{}) {
		return authn.Anonymous
	}
	return authn.FromConfig(authn.AuthConfig{
		Username:      a.Username,
		Password:      a.Password,
		Auth:          a.Auth,
		IdentityToken: a.IdentityToken,
		RegistryToken: a.RegistryToken,
	})
}

// key tells pulls with different credentials apart, so that one with bad
// credentials never answers for one with good ones.
func (a *Auth) key() string {
	if a == nil {
		return ""
	}
	return strings.Join([]string{a.Username, a.Password, a.Auth, a.IdentityToken, a.RegistryToken}, "\x00")
}

// registryClient talks to the endpoints of one repository for one pull,
// trying them in order: a mirror that fails is followed by the next one and
// finally by the server, as in containerd.
type registryClient struct {
	ref   imageRef
	hosts []registryHost
	auth  authn.Authenticator

	mu      sync.Mutex
	pullers map[int]*remote.Puller
	closers []func()
}

func newRegistryClient(ref imageRef, hosts []registryHost, auth *Auth) *registryClient {
	return &registryClient{ref: ref, hosts: hosts, auth: auth.authenticator(), pullers: map[int]*remote.Puller{}}
}

// close drops idle connections of this pull.
func (c *registryClient) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.closers {
		f()
	}
	c.closers = nil
}

// repository is the image's repository as served by endpoint i. The name
// given to go-containerregistry carries the endpoint's host; hostTransport
// puts back the configured scheme and API root.
func (c *registryClient) repository(i int) (name.Repository, error) {
	h := &c.hosts[i]
	var opts []name.Option
	if h.scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	return name.NewRepository(h.host+"/"+c.ref.path, opts...)
}

func (c *registryClient) puller(i int) (*remote.Puller, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.pullers[i]; ok {
		return p, nil
	}
	h := &c.hosts[i]
	base := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: h.dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       h.tls,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   maxConcurrentLayers + 1,
		ForceAttemptHTTP2:     true,
	}
	c.closers = append(c.closers, base.CloseIdleConnections)
	tr := &hostTransport{next: base, host: *h, scheme: h.scheme}
	p, err := remote.NewPuller(
		remote.WithTransport(tr),
		remote.WithAuth(c.auth),
		remote.WithUserAgent("peapod"),
		remote.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH}),
		// A mirror that is down should hand over to the next endpoint
		// quickly rather than after go-containerregistry's 13 s of retries.
		remote.WithRetryBackoff(remote.Backoff{Duration: 200 * time.Millisecond, Factor: 2, Jitter: 0.1, Steps: 2}),
	)
	if err != nil {
		return nil, err
	}
	c.pullers[i] = p
	return p, nil
}

// resolve turns the reference into the descriptor and bytes of its
// manifest (or index): a tag through endpoints trusted to resolve, a
// digest through any endpoint that can pull.
func (c *registryClient) resolve(ctx context.Context) (v1.Descriptor, []byte, error) {
	if c.ref.digest != "" {
		return c.manifest(ctx, c.ref.digest)
	}
	var errs hostErrors
	for i := range c.hosts {
		if c.hosts[i].caps&capResolve == 0 {
			continue
		}
		repo, err := c.repository(i)
		if err == nil {
			var p *remote.Puller
			if p, err = c.puller(i); err == nil {
				var d *remote.Descriptor
				if d, err = p.Get(ctx, repo.Tag(c.ref.tag)); err == nil {
					desc := d.Descriptor
					desc.MediaType = manifestMediaType(desc.MediaType, d.Manifest)
					return desc, d.Manifest, nil
				}
			}
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.hosts[i].String(), explainRegistryError(err)))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return v1.Descriptor{}, nil, fmt.Errorf("no registry host may resolve tags of %s (capabilities in hosts.toml)", c.ref.domain)
	}
	return v1.Descriptor{}, nil, fmt.Errorf("resolve %s: %w", c.ref, errs)
}

// manifest fetches a manifest or index by digest; go-containerregistry
// checks the bytes against the digest.
func (c *registryClient) manifest(ctx context.Context, digest string) (v1.Descriptor, []byte, error) {
	var errs hostErrors
	for i := range c.hosts {
		if c.hosts[i].caps&capPull == 0 {
			continue
		}
		repo, err := c.repository(i)
		if err == nil {
			var p *remote.Puller
			if p, err = c.puller(i); err == nil {
				var d *remote.Descriptor
				if d, err = p.Get(ctx, repo.Digest(digest)); err == nil {
					desc := d.Descriptor
					desc.MediaType = manifestMediaType(desc.MediaType, d.Manifest)
					return desc, d.Manifest, nil
				}
			}
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.hosts[i].String(), explainRegistryError(err)))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return v1.Descriptor{}, nil, fmt.Errorf("no registry host may pull from %s (capabilities in hosts.toml)", c.ref.domain)
	}
	return v1.Descriptor{}, nil, fmt.Errorf("fetch manifest %s@%s: %w", c.ref.repo(), digest, errs)
}

// blob runs use on the content of a blob from each pull endpoint in turn
// until one succeeds; use must verify what it reads.
func (c *registryClient) blob(ctx context.Context, digest v1.Hash, use func(io.Reader) error) error {
	var errs hostErrors
	for i := range c.hosts {
		if c.hosts[i].caps&capPull == 0 {
			continue
		}
		err := c.blobFrom(ctx, i, digest, use)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", c.hosts[i].String(), explainRegistryError(err)))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return fmt.Errorf("no registry host may pull from %s (capabilities in hosts.toml)", c.ref.domain)
	}
	return fmt.Errorf("fetch blob %s@%s: %w", c.ref.repo(), digest, errs)
}

// pullStallTimeout aborts a blob download that receives nothing for this
// long (containerd's image_pull_progress_timeout): a stuck registry must
// not hold a pull, and every pull waiting on it, for ever.
var pullStallTimeout = 5 * time.Minute

var errPullStalled = errors.New("no data received for too long")

func (c *registryClient) blobFrom(ctx context.Context, i int, digest v1.Hash, use func(io.Reader) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := pullStallTimeout
	watchdog := time.AfterFunc(stall, func() { cancel(errPullStalled) })
	defer watchdog.Stop()
	err := c.blobFromWithin(ctx, i, digest, func(r io.Reader) error {
		return use(&watchedReader{r: r, reset: func() { watchdog.Reset(stall) }})
	})
	if err != nil && errors.Is(context.Cause(ctx), errPullStalled) {
		return fmt.Errorf("%w (%s)", errPullStalled, stall)
	}
	return err
}

type watchedReader struct {
	r     io.Reader
	reset func()
}

func (w *watchedReader) Read(p []byte) (int, error) {
	n, err := w.r.Read(p)
	if n > 0 {
		w.reset()
	}
	return n, err
}

func (c *registryClient) blobFromWithin(ctx context.Context, i int, digest v1.Hash, use func(io.Reader) error) error {
	repo, err := c.repository(i)
	if err != nil {
		return err
	}
	p, err := c.puller(i)
	if err != nil {
		return err
	}
	l, err := p.Layer(ctx, repo.Digest(digest.String()))
	if err != nil {
		return err
	}
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	return use(rc)
}

// manifestMediaType trusts the registry's Content-Type when it names a
// manifest or index, and the document's own mediaType (or shape) otherwise.
func manifestMediaType(mt types.MediaType, b []byte) types.MediaType {
	if mt.IsIndex() || mt.IsImage() || mt.IsSchema1() {
		return mt
	}
	var probe struct {
		MediaType types.MediaType `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Layers    json.RawMessage `json:"layers"`
	}
	if json.NewDecoder(bytes.NewReader(b)).Decode(&probe) == nil {
		switch {
		case probe.MediaType != "":
			return probe.MediaType
		case probe.Manifests != nil:
			return types.OCIImageIndex
		case probe.Layers != nil:
			return types.OCIManifestSchema1
		}
	}
	return mt
}

// hostErrors are the failures of each registry endpoint tried, in one
// line; they keep their causes, so that a caller still tells a deadline
// or a cancel (gRPC DeadlineExceeded, Canceled) from a registry's refusal.
type hostErrors []error

func (e hostErrors) Error() string {
	parts := make([]string, len(e))
	for i, err := range e {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

func (e hostErrors) Unwrap() []error { return e }

// explainRegistryError adds what an operator should do to the errors a
// registry answers with.
func explainRegistryError(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("not authorized: the registry needs credentials for this image and none or wrong ones were given in the pull request: %w", err)
		case http.StatusNotFound:
			return fmt.Errorf("not found: %w", err)
		}
	}
	return err
}

// hostTransport sends requests for one registry endpoint with its
// configured scheme, API root, ns parameter and headers, whatever
// go-containerregistry guessed from the host name. Requests to other hosts
// (token services, redirects to blob storage) pass through untouched.
type hostTransport struct {
	next http.RoundTripper
	host registryHost

	mu     sync.Mutex
	scheme string // becomes "http" once an ambiguous endpoint answered in plain http
}

func (t *hostTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Host != t.host.host {
		return t.next.RoundTrip(req)
	}
	t.mu.Lock()
	scheme := t.scheme
	t.mu.Unlock()
	resp, err := t.next.RoundTrip(t.rewrite(req, scheme))
	if err != nil && t.host.httpFallback && scheme == "https" && req.Body == nil && isPlainHTTPAnswer(err) {
		t.mu.Lock()
		t.scheme = "http"
		t.mu.Unlock()
		return t.next.RoundTrip(t.rewrite(req, "http"))
	}
	return resp, err
}

func (t *hostTransport) rewrite(req *http.Request, scheme string) *http.Request {
	r := req.Clone(req.Context())
	r.URL.Scheme = scheme
	if p := r.URL.Path; t.host.apiRoot != "/v2" && (p == "/v2" || strings.HasPrefix(p, "/v2/")) {
		r.URL.Path = t.host.apiRoot + strings.TrimPrefix(p, "/v2")
		if r.URL.Path == "" {
			r.URL.Path = "/"
		}
		r.URL.RawPath = ""
	}
	if t.host.namespace != "" {
		q := r.URL.Query()
		q.Set("ns", t.host.namespace)
		r.URL.RawQuery = q.Encode()
	}
	for k, v := range t.host.header {
		if r.Header.Get(k) == "" {
			r.Header[k] = v
		}
	}
	return r
}

// isPlainHTTPAnswer: a TLS client got a plain-HTTP reply.
func isPlainHTTPAnswer(err error) bool {
	var rh tls.RecordHeaderError
	return errors.As(err, &rh) || strings.Contains(err.Error(), "server gave HTTP response to HTTPS client")
}
