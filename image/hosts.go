package image

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// hostCapabilities say what a registry host may be trusted with, as in
// containerd's hosts.toml: "resolve" turns a tag into a digest, "pull"
// fetches content by digest. Push is accepted and ignored.
type hostCapabilities uint8

const (
	capPull hostCapabilities = 1 << iota
	capResolve
	capPush
)

// registryHost is one endpoint that can serve a registry host namespace: a
// mirror from a [host."..."] table, or the server.
type registryHost struct {
	scheme  string // "https" or "http"
	host    string // "127.0.0.1:5077"
	apiRoot string // URL path of the distribution API, "/v2" unless the config says otherwise
	caps    hostCapabilities
	// namespace is the registry the image belongs to when this endpoint is
	// another host (a mirror); it is sent as the ns query parameter.
	namespace string
	// httpFallback: the scheme is ambiguous (a localhost registry on a
	// non-standard port with no config): try https, use http if the server
	// answers in plain http.
	httpFallback bool
	tls          *tls.Config
	header       http.Header
	dialTimeout  time.Duration
}

func (h *registryHost) String() string { return h.scheme + "://" + h.host + h.apiRoot }

// hostsFile is a hosts.toml. Unknown keys are ignored, like containerd.
type hostsFile struct {
	hostFields
	Server string                `toml:"server"`
	Host   map[string]hostFields `toml:"host"`
}

type hostFields struct {
	Capabilities []string       `toml:"capabilities"`
	CA           any            `toml:"ca"`     // path or list of paths
	Client       any            `toml:"client"` // path, list of paths, or list of [cert, key] pairs
	SkipVerify   *bool          `toml:"skip_verify"`
	Header       map[string]any `toml:"header"`
	OverridePath bool           `toml:"override_path"`
	DialTimeout  string         `toml:"dial_timeout"`
}

const defaultDialTimeout = 30 * time.Second

// registryHosts returns the endpoints to try, in order, for a registry host
// namespace ("docker.io", "127.0.0.1:5000"), following containerd: the
// hosts.toml in <dir>/<host>_<port>_, <dir>/<host:port> or <dir>/_default,
// its [host] tables in file order, then its server (or the registry itself).
// Files are read on every pull, so edits need no restart.
func registryHosts(configDir, namespace string) ([]registryHost, error) {
	var hosts []registryHost
	if dir := hostsDirFor(configDir, namespace); dir != "" {
		var err error
		hosts, err = loadHostsDir(dir)
		if err != nil {
			return nil, err
		}
	}
	if len(hosts) == 0 {
		hosts = []registryHost{{}}
	}
	last := &hosts[len(hosts)-1]
	if last.host == "" {
		defaultServer(last, namespace)
	}
	for i := range hosts {
		if hosts[i].host != namespace && !(namespace == "docker.io" && hosts[i].host == "registry-1.docker.io") {
			hosts[i].namespace = namespace
		}
		if hosts[i].dialTimeout == 0 {
			hosts[i].dialTimeout = defaultDialTimeout
		}
	}
	return hosts, nil
}

// defaultServer fills in the registry itself as the server of its namespace.
func defaultServer(h *registryHost, namespace string) {
	if h.caps == 0 {
		h.caps = capPull | capResolve | capPush
	}
	if h.apiRoot == "" {
		h.apiRoot = "/v2"
	}
	switch {
	case namespace == "docker.io":
		h.scheme, h.host = "https", "registry-1.docker.io"
	case isLocalhost(namespace):
		h.scheme, h.host = "https", namespace
		if _, port, _ := net.SplitHostPort(namespace); port != "" && port != "443" {
			// Like containerd: a local registry on another port is most
			// likely plain http; https is tried first without verification.
			h.httpFallback = true
			if h.tls == nil {
				h.tls = &tls.Config{InsecureSkipVerify: true}
			}
		}
		if strings.HasSuffix(namespace, ":80") {
			h.scheme, h.httpFallback, h.tls = "http", false, nil
		}
	default:
		h.scheme, h.host = "https", namespace
	}
}

func isLocalhost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// hostsDirFor finds the host namespace directory, or "" when none applies.
func hostsDirFor(configDir, namespace string) string {
	if configDir == "" {
		return ""
	}
	var candidates []string
	if i := strings.LastIndex(namespace, ":"); i > 0 && !strings.HasSuffix(namespace, "]") {
		candidates = append(candidates, namespace[:i]+"_"+namespace[i+1:]+"_")
	}
	candidates = append(candidates, namespace, "_default")
	for _, c := range candidates {
		p := filepath.Join(configDir, c)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			return p
		}
	}
	return ""
}

// loadHostsDir reads <dir>/hosts.toml or, without one, Docker's certificate
// files (*.crt CA certificates, *.cert/*.key client pairs) for the server.
func loadHostsDir(dir string) ([]registryHost, error) {
	file := filepath.Join(dir, "hosts.toml")
	b, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(b) == 0 {
		return loadCertFiles(dir)
	}
	hosts, err := parseHostsFile(dir, b)
	if err != nil {
		return nil, fmt.Errorf("registry config %s: %w", file, err)
	}
	return hosts, nil
}

func parseHostsFile(dir string, b []byte) ([]registryHost, error) {
	var f hostsFile
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		return nil, err
	}
	// The order of [host."..."] tables is the order mirrors are tried.
	var order []string
	seen := map[string]bool{}
	for _, k := range md.Keys() {
		if len(k) >= 2 && k[0] == "host" && !seen[k[1]] {
			seen[k[1]] = true
			order = append(order, k[1])
		}
	}
	var hosts []registryHost
	for _, server := range order {
		h, err := parseHost(server, dir, f.Host[server])
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	h, err := parseHost(f.Server, dir, f.hostFields)
	if err != nil {
		return nil, err
	}
	return append(hosts, h), nil
}

func parseHost(server, dir string, c hostFields) (registryHost, error) {
	var h registryHost
	if server != "" {
		if !strings.HasPrefix(server, "http://") && !strings.HasPrefix(server, "https://") {
			server = "https://" + server
		}
		u, err := url.Parse(server)
		if err != nil {
			return h, fmt.Errorf("server %q: %w", server, err)
		}
		if u.Host == "" {
			return h, fmt.Errorf("server %q: no host", server)
		}
		h.scheme, h.host = u.Scheme, u.Host
		p := "/v2"
		if u.Path != "" && u.Path != "/" {
			p = path.Clean(u.Path)
			if !strings.HasSuffix(p, "/v2") && !c.OverridePath {
				p += "/v2"
			}
		} else if c.OverridePath {
			p = ""
		}
		h.apiRoot = p
	}
	if len(c.Capabilities) == 0 {
		h.caps = capPull | capResolve | capPush
	}
	for _, cp := range c.Capabilities {
		switch strings.ToLower(cp) {
		case "pull":
			h.caps |= capPull
		case "resolve":
			h.caps |= capResolve
		case "push":
			h.caps |= capPush
		default:
			return h, fmt.Errorf("host %q: unknown capability %q", server, cp)
		}
	}
	if c.SkipVerify != nil || c.CA != nil || c.Client != nil {
		cfg := &tls.Config{}
		if c.SkipVerify != nil {
			cfg.InsecureSkipVerify = *c.SkipVerify
		}
		cas, err := stringList(c.CA)
		if err != nil {
			return h, fmt.Errorf("host %q: ca: %w", server, err)
		}
		if len(cas) > 0 {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			for _, ca := range cas {
				pem, err := os.ReadFile(absTo(dir, ca))
				if err != nil {
					return h, fmt.Errorf("host %q: ca: %w", server, err)
				}
				if !pool.AppendCertsFromPEM(pem) {
					return h, fmt.Errorf("host %q: ca %s: no certificate found", server, ca)
				}
			}
			cfg.RootCAs = pool
		}
		pairs, err := clientPairs(c.Client)
		if err != nil {
			return h, fmt.Errorf("host %q: client: %w", server, err)
		}
		for _, p := range pairs {
			certFile, keyFile := absTo(dir, p[0]), absTo(dir, p[1])
			if p[1] == "" {
				keyFile = certFile
			}
			cert, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return h, fmt.Errorf("host %q: client certificate: %w", server, err)
			}
			cfg.Certificates = append(cfg.Certificates, cert)
		}
		h.tls = cfg
	}
	if len(c.Header) > 0 {
		h.header = http.Header{}
		for k, v := range c.Header {
			vals, err := stringList(v)
			if err != nil {
				return h, fmt.Errorf("host %q: header %s: %w", server, k, err)
			}
			for _, s := range vals {
				h.header.Add(k, s)
			}
		}
	}
	if c.DialTimeout != "" {
		d, err := time.ParseDuration(c.DialTimeout)
		if err != nil {
			return h, fmt.Errorf("host %q: dial_timeout: %w", server, err)
		}
		h.dialTimeout = d
	}
	return h, nil
}

// loadCertFiles is Docker's certs.d layout: the directory configures TLS
// for the registry itself.
func loadCertFiles(dir string) ([]registryHost, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var cfg *tls.Config
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".crt"):
			if cfg == nil {
				cfg = &tls.Config{}
			}
			if cfg.RootCAs == nil {
				if cfg.RootCAs, err = x509.SystemCertPool(); err != nil || cfg.RootCAs == nil {
					cfg.RootCAs = x509.NewCertPool()
				}
			}
			pem, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				return nil, err
			}
			cfg.RootCAs.AppendCertsFromPEM(pem)
		case strings.HasSuffix(name, ".cert"):
			key := filepath.Join(dir, strings.TrimSuffix(name, ".cert")+".key")
			cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name), key)
			if err != nil {
				return nil, fmt.Errorf("registry client certificate %s: %w", name, err)
			}
			if cfg == nil {
				cfg = &tls.Config{}
			}
			cfg.Certificates = append(cfg.Certificates, cert)
		}
	}
	return []registryHost{{tls: cfg}}, nil
}

func absTo(dir, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(dir, p)
}

func stringList(v any) ([]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return []string{v}, nil
	case []any:
		out := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, fmt.Errorf("want a string, got %T", e)
			}
			out = append(out, s)
		}
		return out, nil
	default:
		return nil, fmt.Errorf("want a string or a list of strings, got %T", v)
	}
}

func clientPairs(v any) ([][2]string, error) {
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		return [][2]string{{v, ""}}, nil
	case []any:
		var out [][2]string
		for _, e := range v {
			switch e := e.(type) {
			case string:
				out = append(out, [2]string{e, ""})
			case []any:
				s, err := stringList(e)
				if err != nil || len(s) != 2 {
					return nil, fmt.Errorf("want a [cert, key] pair, got %v", e)
				}
				out = append(out, [2]string{s[0], s[1]})
			default:
				return nil, fmt.Errorf("unexpected %T", e)
			}
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unexpected %T", v)
	}
}
