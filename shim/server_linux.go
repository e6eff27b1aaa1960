package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"peapod/shim/internal/lcproto"
)

// ServeOptions configure the shim process (`peapod shim`).
type ServeOptions struct {
	Dir       string // the shim's directory, see the package doc
	PodCgroup string // parent of the containers' cgroups
	// Helper is the libcontainer helper program (peapod-lc), run as
	// `Helper lc`; "" runs the shim's own executable as `shim lc`, which
	// only the whole peapod serves.
	Helper string
	// Ready, when not nil, receives "ok\n" once the socket accepts calls,
	// or the error that stopped the shim from starting; then it is closed.
	Ready *os.File
}

type server struct {
	dir       string
	runcRoot  string
	podCgroup string
	reaper    *reaper
	trim      *trimmer
	log       *slog.Logger
	listener  *net.UnixListener
	// helperExe is the executable of the helpers, helperArgs their argv
	// (before --idle).
	helperExe  string
	helperArgs []string

	spareMu       sync.Mutex
	spare         *helperProc   // started ahead of the first call (preSpawn)
	spareSpawning chan struct{} // closed once preSpawn's helper started

	mu         sync.Mutex
	containers map[string]*container
	shutdown   bool
	answered   chan struct{} // closed once Shutdown was answered
}

// Serve runs the shim until Shutdown is called. It is the whole of the
// `peapod shim` subcommand.
func Serve(opts ServeOptions) error {
	err := serve(opts)
	if err != nil && opts.Ready != nil {
		fmt.Fprintf(opts.Ready, "%v\n", err)
		opts.Ready.Close()
	}
	return err
}

func serve(opts ServeOptions) error {
	if opts.Dir == "" || !filepath.IsAbs(opts.Dir) {
		return fmt.Errorf("shim: dir %q must be an absolute path", opts.Dir)
	}
	// Orphans of the pod's processes come to the shim, not to the host's
	// init, and the shim reaps them.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("shim: set child subreaper: %w", err)
	}
	// Signals for the daemon's process group never reach a shim in its own
	// session; these would only come from a stray terminal.
	signal.Ignore(unix.SIGHUP, unix.SIGINT, unix.SIGPIPE)

	s := &server{
		dir:        opts.Dir,
		runcRoot:   filepath.Join(opts.Dir, runcDirName),
		podCgroup:  opts.PodCgroup,
		log:        slog.New(slog.NewTextHandler(os.Stderr, nil)).With("shim", opts.Dir),
		containers: map[string]*container{},
		answered:   make(chan struct{}),
	}
	if opts.Helper != "" {
		if !filepath.IsAbs(opts.Helper) {
			return fmt.Errorf("shim: helper %q must be an absolute path", opts.Helper)
		}
		s.helperExe, s.helperArgs = opts.Helper, []string{opts.Helper, lcproto.Arg}
	} else {
		// The running executable even if its file was replaced.
		s.helperExe, s.helperArgs = "/proc/self/exe", []string{os.Args[0], "shim", lcproto.Arg}
	}
	for _, d := range []string{opts.Dir, s.runcRoot, filepath.Join(opts.Dir, "containers")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("shim: %w", err)
		}
	}
	if c, err := Connect(context.Background(), opts.Dir); err == nil {
		return fmt.Errorf("shim: another shim (pid %d) serves %s", c.Pid(), opts.Dir)
	}
	s.reaper = newReaper()
	// The spare starts while the shim gets ready: the daemon's first
	// create follows right after.
	s.preSpawn()
	s.trim = newTrimmer(s.log)
	l, err := listenSocket(opts.Dir)
	if err != nil {
		return fmt.Errorf("shim: listen: %w", err)
	}
	s.listener = l
	if err := os.WriteFile(filepath.Join(opts.Dir, pidName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return fmt.Errorf("shim: %w", err)
	}
	if opts.Ready != nil {
		fmt.Fprintln(opts.Ready, "ok")
		opts.Ready.Close()
	}
	s.log.Info("shim serving", "pid", os.Getpid(), "podCgroup", opts.PodCgroup)
	for {
		conn, err := l.AcceptUnix()
		if err != nil {
			s.mu.Lock()
			done := s.shutdown
			s.mu.Unlock()
			if done {
				// Let the shutdown call answer before the process ends.
				<-s.answered
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go s.handle(conn)
	}
}

func (s *server) handle(conn *net.UnixConn) {
	defer conn.Close()
	var req request
	if err := readJSON(conn, &req); err != nil {
		return
	}
	if trims(req.Op) {
		defer s.trim.soon()
	} else {
		defer s.trim.afterPoll()
	}
	switch req.Op {
	case opExec:
		s.exec(conn, &req)
		return
	case opAttach:
		s.attach(conn, &req)
		return
	}
	resp := s.dispatch(conn, &req)
	_ = writeJSON(conn, resp)
	if req.Op == opShutdown && resp.Error == "" {
		s.log.Info("shim shut down")
		close(s.answered)
	}
}

func (s *server) dispatch(conn *net.UnixConn, req *request) *response {
	if req.Op == opPing {
		return &response{Pid: os.Getpid()}
	}
	if req.Op == opCreate {
		if req.Spec == nil {
			return errorResponse(fmt.Errorf("%w: no spec", ErrInvalid))
		}
		if err := s.create(*req.Spec); err != nil {
			s.log.Warn("create container", "container", req.Spec.ID, "err", err)
			return errorResponse(err)
		}
		return &response{}
	}
	if req.Op == opList {
		return &response{States: s.list()}
	}
	if req.Op == opShutdown {
		if err := s.shutdownAll(); err != nil {
			return errorResponse(err)
		}
		return &response{Pid: os.Getpid()}
	}
	c := s.get(req.ID)
	if c == nil {
		if req.Op == opDelete {
			return &response{}
		}
		return errorResponse(fmt.Errorf("%w: %s", ErrNotFound, req.ID))
	}
	switch req.Op {
	case opStart:
		if err := c.start(); err != nil {
			return errorResponse(err)
		}
		st := c.snapshot()
		return &response{State: &st}
	case opSignal:
		if err := c.signal(syscall.Signal(req.Signal), req.All); err != nil {
			return errorResponse(fmt.Errorf("signal container %s: %w", c.id, err))
		}
	case opStop:
		st := c.stop(req.Timeout)
		return &response{State: &st}
	case opState:
		st := c.snapshot()
		return &response{State: &st}
	case opWait:
		select {
		case <-c.exited:
		case <-closed(conn):
			return &response{Error: "client gone"}
		}
		st := c.snapshot()
		return &response{State: &st}
	case opDelete:
		if err := c.destroy(); err != nil {
			return errorResponse(err)
		}
		s.forget(c)
	case opUpdate:
		if err := c.update(req.Resources); err != nil {
			return errorResponse(err)
		}
	case opReopen:
		if err := c.log.reopen(); err != nil {
			return errorResponse(fmt.Errorf("reopen log of container %s: %w", c.id, err))
		}
	default:
		return errorResponse(fmt.Errorf("%w: unknown operation %q", ErrInvalid, req.Op))
	}
	return &response{}
}

// closed is closed when the peer closes conn (or sends anything: a
// call's connection carries nothing after the request).
func closed(conn *net.UnixConn) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		var b [1]byte
		_, _ = conn.Read(b[:])
		close(ch)
	}()
	return ch
}

// reserve claims an id for a container being created.
func (s *server) reserve(c *container) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.containers[c.id]; ok || s.shutdown {
		return false
	}
	s.containers[c.id] = c
	return true
}

func (s *server) forget(c *container) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.containers[c.id] == c {
		delete(s.containers, c.id)
	}
}

// get returns a container whose creation has finished, or nil.
func (s *server) get(id string) *container {
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c == nil || c.snapshot().Status == "" {
		return nil
	}
	return c
}

func (s *server) list() []ContainerState {
	s.mu.Lock()
	cs := make([]*container, 0, len(s.containers))
	for _, c := range s.containers {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	out := make([]ContainerState, 0, len(cs))
	for _, c := range cs {
		if st := c.snapshot(); st.Status != "" {
			out = append(out, st)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].CreatedAt.Before(out[j].CreatedAt) })
	return out
}

// shutdownAll kills and removes every container, then the shim's files.
func (s *server) shutdownAll() error {
	s.mu.Lock()
	s.shutdown = true
	cs := make([]*container, 0, len(s.containers))
	for _, c := range s.containers {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	var errs []error
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, c := range cs {
		if c.snapshot().Status == "" {
			continue // still being created; it fails on s.shutdown
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.destroy(); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
				return
			}
			s.forget(c)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		s.mu.Lock()
		s.shutdown = false
		s.mu.Unlock()
		return err
	}
	if h := s.takeSpare(); h != nil {
		s.reaper.signal(h.pid, unix.SIGKILL)
		h.conn.Close()
	}
	s.listener.Close()
	return os.RemoveAll(s.dir)
}
