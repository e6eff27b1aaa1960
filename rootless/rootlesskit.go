package rootless

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"peapod/netns"
	"peapod/rootless/portfwd"
)

// A daemon started under RootlessKit (`rootlesskit --port-driver=builtin
// ... peapod serve`) runs in RootlessKit's namespaces and publishes pods'
// hostPorts through RootlessKit's REST API ($ROOTLESSKIT_STATE_DIR/api.sock)
// instead of host sockets of its own: RootlessKit's parent, in the host's
// namespaces, listens on the host port and its builtin driver connects to
// the pod IP from the daemon's network namespace.
//
// The API (RootlessKit's pkg/api/openapi.yaml, v1): GET /v1/info, GET
// /v1/ports, POST /v1/ports with a PortSpec (201 and the PortStatus with
// its id), DELETE /v1/ports/{id}. Errors are a 4xx/5xx with
// {"message": "..."}.

// envRootlessKitStateDir is set by RootlessKit for its child.
const envRootlessKitStateDir = "ROOTLESSKIT_STATE_DIR"

// RootlessKitStateDir is RootlessKit's state dir (the parent of its
// api.sock) when this process runs under RootlessKit, else "".
func RootlessKitStateDir() string { return os.Getenv(envRootlessKitStateDir) }

// rkSpec is RootlessKit's PortSpec.
type rkSpec struct {
	Proto      string `json:"proto"`
	ParentIP   string `json:"parentIP,omitempty"`
	ParentPort int    `json:"parentPort"`
	ChildIP    string `json:"childIP,omitempty"`
	ChildPort  int    `json:"childPort"`
}

func (s rkSpec) String() string {
	return fmt.Sprintf("%s/%s -> %s", net.JoinHostPort(s.ParentIP, strconv.Itoa(s.ParentPort)), s.Proto,
		net.JoinHostPort(s.ChildIP, strconv.Itoa(s.ChildPort)))
}

// same compares two specs as RootlessKit stores them (an empty and an
// unspecified-but-spelled-out address are not the same listener).
func (s rkSpec) same(o rkSpec) bool {
	return s.Proto == o.Proto && s.ParentPort == o.ParentPort && s.ChildPort == o.ChildPort &&
		sameIP(s.ParentIP, o.ParentIP) && sameIP(s.ChildIP, o.ChildIP)
}

func sameIP(a, b string) bool {
	if a == b {
		return true
	}
	ia, ib := net.ParseIP(a), net.ParseIP(b)
	return ia != nil && ib != nil && ia.Equal(ib)
}

// rkPort is RootlessKit's PortStatus: a published port and its id.
type rkPort struct {
	ID   int    `json:"id"`
	Spec rkSpec `json:"spec"`
}

// rkInfo is the part of GET /v1/info this package reads.
type rkInfo struct {
	APIVersion string `json:"apiVersion"`
	Version    string `json:"version"`
	StateDir   string `json:"stateDir"`
	ChildPID   int    `json:"childPID"`
	PortDriver *struct {
		Driver string   `json:"driver"`
		Protos []string `json:"protos"`
	} `json:"portDriver"`
}

// rkError is an error answer of the API.
type rkError struct {
	Status  int
	Message string
}

func (e *rkError) Error() string {
	if strings.HasPrefix(strings.ToLower(e.Message), "conflict with id") {
		// RootlessKit publishes that port already (for another pod).
		return e.Message + ": the host port is already in use"
	}
	return e.Message
}

// Unwrap maps what RootlessKit says to the errno it stands for: the
// wording is RootlessKit's (v1.1: "listen tcp :80: bind: address already
// in use", "conflict with ID 3" for a port it already publishes, "cannot
// expose privileged port 80, ... bind: permission denied").
func (e *rkError) Unwrap() error {
	m := strings.ToLower(e.Message)
	switch {
	case strings.Contains(m, "address already in use"), strings.HasPrefix(m, "conflict with id"):
		return syscall.EADDRINUSE
	case strings.Contains(m, "privileged port"), strings.Contains(m, "permission denied"):
		return syscall.EACCES
	case strings.Contains(m, "cannot assign requested address"):
		return syscall.EADDRNOTAVAIL
	}
	return nil
}

// rkClient speaks RootlessKit's API over its unix socket.
type rkClient struct {
	sock string
	http *http.Client
}

func newRKClient(sock string, timeout time.Duration) *rkClient {
	var d net.Dialer
	return &rkClient{sock: sock, http: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "unix", sock)
			},
			DisableKeepAlives: true,
		},
	}}
}

// do sends a request and decodes a `want` answer into out; any other
// status is an *rkError with RootlessKit's message.
func (c *rkClient) do(method, path string, in, out any, want int) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://rootlesskit/v1"+path, body)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("rootlesskit API %s: %w", c.sock, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("rootlesskit API %s %s: %w", method, path, err)
	}
	if resp.StatusCode != want {
		var e struct {
			Message string `json:"message"`
		}
		if json.Unmarshal(b, &e) != nil || e.Message == "" {
			e.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
		}
		return &rkError{Status: resp.StatusCode, Message: e.Message}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("rootlesskit API %s %s: bad answer %q: %w", method, path, b, err)
		}
	}
	return nil
}

func (c *rkClient) info() (*rkInfo, error) {
	var i rkInfo
	return &i, c.do(http.MethodGet, "/info", nil, &i, http.StatusOK)
}

func (c *rkClient) list() ([]rkPort, error) {
	var ps []rkPort
	return ps, c.do(http.MethodGet, "/ports", nil, &ps, http.StatusOK)
}

func (c *rkClient) add(s rkSpec) (rkPort, error) {
	var p rkPort
	err := c.do(http.MethodPost, "/ports", s, &p, http.StatusCreated)
	if err == nil && p.ID == 0 {
		err = fmt.Errorf("rootlesskit API: POST /ports answered no id")
	}
	return p, err
}

// remove deletes a port; one RootlessKit does not know is already gone.
func (c *rkClient) remove(id int) error {
	err := c.do(http.MethodDelete, "/ports/"+strconv.Itoa(id), nil, nil, http.StatusOK)
	var e *rkError
	if errors.As(err, &e) && strings.HasPrefix(e.Message, "unknown id") {
		return nil
	}
	return err
}

// RootlessKitOptions configure RootlessKitPorts.
type RootlessKitOptions struct {
	// StateDir is RootlessKit's state dir, which holds api.sock; default
	// $ROOTLESSKIT_STATE_DIR.
	StateDir string
	// Journal is the file that records the ports this daemon added, so
	// that a restarted daemon under the same RootlessKit removes them
	// when their pods go (required).
	Journal string
	// Timeout bounds one API call; default 10s.
	Timeout time.Duration
	Log     *slog.Logger
}

// RootlessKitPorts publishes pods' hostPorts through RootlessKit's port
// API. It implements sandbox.PortPublisher.
//
// A pod's mappings are added all or none. A busy host port is an error
// wrapping syscall.EADDRINUSE (RootlessKit could not listen, or publishes
// that port already), a privileged one syscall.EACCES.
//
// The ports RootlessKit publishes outlive the daemon (they go with
// RootlessKit). So the ids this daemon added are recorded in a journal: a
// daemon restarted under the same RootlessKit removes them when their pod
// is stopped, and before adding a port it removes any entry with exactly
// the same spec (the same pod republished, after a crash between adding
// and recording). A journal from another RootlessKit (another child pid)
// is dropped: its ports went with it.
type RootlessKitPorts struct {
	c       *rkClient
	journal string
	log     *slog.Logger
	// refuse is why no hostPort can be published (nil when they can).
	refuse error
	protos map[string]bool

	mu sync.Mutex
	st rkJournal
}

// rkJournal is the journal's content.
type rkJournal struct {
	// Instance is the RootlessKit the ids belong to.
	StateDir string `json:"stateDir"`
	ChildPID int    `json:"childPID"`
	// Pods maps a sandbox id to the ports added for it.
	Pods map[string][]rkPort `json:"pods"`
}

// NewRootlessKitPorts connects to RootlessKit's API and checks that its
// port driver can publish hostPorts (builtin). When it cannot, or the API
// does not answer, the publisher refuses every pod with hostPorts and says
// why (Err); pods without hostPorts are not affected.
func NewRootlessKitPorts(opts RootlessKitOptions) *RootlessKitPorts {
	if opts.StateDir == "" {
		opts.StateDir = RootlessKitStateDir()
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	p := &RootlessKitPorts{
		c:       newRKClient(filepath.Join(opts.StateDir, "api.sock"), opts.Timeout),
		journal: opts.Journal,
		log:     opts.Log,
		protos:  map[string]bool{},
		st:      rkJournal{Pods: map[string][]rkPort{}},
	}
	if opts.StateDir == "" {
		p.refuse = errors.New("not running under RootlessKit ($ROOTLESSKIT_STATE_DIR is not set)")
		return p
	}
	info, err := p.c.info()
	if err != nil {
		p.refuse = fmt.Errorf("RootlessKit's API does not answer: %w", err)
		return p
	}
	p.st.StateDir, p.st.ChildPID = info.StateDir, info.ChildPID
	driver := ""
	if info.PortDriver != nil {
		driver = info.PortDriver.Driver
		for _, proto := range info.PortDriver.Protos {
			p.protos[proto] = true
		}
	}
	switch driver {
	case "builtin":
	case "", "none":
		p.refuse = errors.New("RootlessKit runs without a port driver (--port-driver=none): restart it with --port-driver=builtin to publish hostPorts")
		return p
	default:
		p.refuse = fmt.Errorf("RootlessKit's port driver %q cannot forward to pod IPs: restart it with --port-driver=builtin to publish hostPorts", driver)
		return p
	}
	p.load()
	opts.Log.Info("hostPorts are published through RootlessKit", "version", info.Version, "api", info.APIVersion, "stateDir", info.StateDir, "portDriver", driver)
	return p
}

// Err tells why hostPorts cannot be published, nil when they can.
func (p *RootlessKitPorts) Err() error { return p.refuse }

// load reads the journal of an earlier daemon under the same RootlessKit.
func (p *RootlessKitPorts) load() {
	b, err := os.ReadFile(p.journal)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			p.log.Warn("rootlesskit port journal unreadable; its ports are only removed when republished", "path", p.journal, "err", err)
		}
		return
	}
	var j rkJournal
	if err := json.Unmarshal(b, &j); err != nil {
		p.log.Warn("rootlesskit port journal unreadable; its ports are only removed when republished", "path", p.journal, "err", err)
		return
	}
	if j.StateDir != p.st.StateDir || j.ChildPID != p.st.ChildPID {
		p.log.Info("rootlesskit port journal of another RootlessKit dropped: its ports went with it", "path", p.journal)
		_ = os.Remove(p.journal)
		return
	}
	for id, ports := range j.Pods {
		if len(ports) > 0 {
			p.st.Pods[id] = ports
		}
	}
}

// save writes the journal, or removes it when no port is recorded.
func (p *RootlessKitPorts) save() error {
	if len(p.st.Pods) == 0 {
		if err := os.Remove(p.journal); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	b, err := json.Marshal(p.st)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.journal), 0o700); err != nil {
		return err
	}
	tmp := p.journal + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p.journal)
}

// specs turns a pod's mappings into RootlessKit's PortSpecs.
func (p *RootlessKitPorts) specs(ip string, mappings []netns.PortMapping) ([]rkSpec, []string, error) {
	podIP := net.ParseIP(ip)
	if podIP == nil {
		return nil, nil, fmt.Errorf("publish hostPorts: pod IP %q is not an IP address", ip)
	}
	var out []rkSpec
	var names []string
	for _, pm := range mappings {
		m, err := portfwd.ParseMapping(pm)
		if err != nil {
			return nil, nil, err
		}
		name, proto := m.Name, m.Proto
		if (proto != "tcp" && proto != "udp") || !p.protos[proto] {
			return nil, nil, fmt.Errorf("%s: RootlessKit's port driver does not publish %s ports", name, proto)
		}
		host, listen := "", proto
		if m.HostIP != nil {
			host = m.HostIP.String()
			// An IPv4 address (0.0.0.0 too) is IPv4 only: a plain "tcp"
			// on 0.0.0.0 would listen on IPv6 as well (Go's rule, which
			// RootlessKit follows).
			if p.protos[proto+m.Family()] {
				listen = proto + m.Family()
			}
		}
		out = append(out, rkSpec{Proto: listen, ParentIP: host, ParentPort: m.HostPort, ChildIP: podIP.String(), ChildPort: m.ContainerPort})
		names = append(names, name)
	}
	return out, names, nil
}

// Publish has RootlessKit publish every mapping of the sandbox to ip, all
// or none. Publishing a sandbox again replaces what it had.
func (p *RootlessKitPorts) Publish(sandboxID, ip string, mappings []netns.PortMapping) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.unpublish(sandboxID); err != nil {
		return fmt.Errorf("hostPorts published before: %w", err)
	}
	if len(mappings) == 0 {
		return nil
	}
	if p.refuse != nil {
		return p.refuse
	}
	specs, names, err := p.specs(ip, mappings)
	if err != nil {
		return err
	}
	if err := p.removeStale(specs); err != nil {
		return err
	}
	var added []rkPort
	fail := func(err error) error {
		for _, a := range added {
			if rerr := p.c.remove(a.ID); rerr != nil {
				p.log.Warn("rootlesskit port of a failed publish left", "id", a.ID, "spec", a.Spec.String(), "err", rerr)
			}
		}
		return err
	}
	for i, s := range specs {
		port, err := p.c.add(s)
		if err != nil {
			return fail(fmt.Errorf("%s: rootlesskit: %w", names[i], err))
		}
		added = append(added, rkPort{ID: port.ID, Spec: s})
	}
	p.st.Pods[sandboxID] = added
	if err := p.save(); err != nil {
		delete(p.st.Pods, sandboxID)
		return fail(fmt.Errorf("record hostPorts in %s: %w", p.journal, err))
	}
	p.log.Debug("hostPorts published through RootlessKit", "sandbox", sandboxID, "ip", ip, "count", len(added))
	return nil
}

// removeStale removes the ports RootlessKit publishes with exactly one of
// specs: left by an earlier daemon for this same pod (it crashed before
// recording them, or before it could remove them). They would clash
// with the pod's own ports otherwise.
func (p *RootlessKitPorts) removeStale(specs []rkSpec) error {
	ports, err := p.c.list()
	if err != nil {
		return err
	}
	for _, port := range ports {
		for _, s := range specs {
			if !port.Spec.same(s) {
				continue
			}
			p.log.Info("removing a stale RootlessKit port of an earlier daemon", "id", port.ID, "spec", s.String())
			if err := p.c.remove(port.ID); err != nil {
				return fmt.Errorf("remove stale rootlesskit port %d (%s): %w", port.ID, s, err)
			}
			p.forget(port.ID)
			break
		}
	}
	return nil
}

// forget drops an id from whichever sandbox's record holds it.
func (p *RootlessKitPorts) forget(id int) {
	for sb, ports := range p.st.Pods {
		kept := ports[:0:0]
		for _, q := range ports {
			if q.ID != id {
				kept = append(kept, q)
			}
		}
		if len(kept) == 0 {
			delete(p.st.Pods, sb)
		} else {
			p.st.Pods[sb] = kept
		}
	}
}

// Unpublish removes the sandbox's ports from RootlessKit, including those
// an earlier daemon under the same RootlessKit added. Unknown ids are
// fine.
func (p *RootlessKitPorts) Unpublish(sandboxID string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unpublish(sandboxID)
}

func (p *RootlessKitPorts) unpublish(sandboxID string) error {
	ports := p.st.Pods[sandboxID]
	if len(ports) == 0 {
		return nil
	}
	// An id is RootlessKit's counter: remove it only while it still is
	// the port recorded.
	current, err := p.c.list()
	if err != nil {
		return err
	}
	byID := map[int]rkSpec{}
	for _, c := range current {
		byID[c.ID] = c.Spec
	}
	var left []rkPort
	var errs []error
	for _, q := range ports {
		if s, ok := byID[q.ID]; !ok || !s.same(q.Spec) {
			continue
		}
		if err := p.c.remove(q.ID); err != nil {
			left = append(left, q)
			errs = append(errs, fmt.Errorf("remove rootlesskit port %d (%s): %w", q.ID, q.Spec, err))
		}
	}
	if len(left) > 0 {
		p.st.Pods[sandboxID] = left
	} else {
		delete(p.st.Pods, sandboxID)
	}
	if err := p.save(); err != nil {
		errs = append(errs, fmt.Errorf("record hostPorts in %s: %w", p.journal, err))
	}
	if len(errs) == 0 {
		p.log.Debug("hostPorts unpublished from RootlessKit", "sandbox", sandboxID, "count", len(ports))
	}
	return errors.Join(errs...)
}
