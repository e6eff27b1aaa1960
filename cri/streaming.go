package cri

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"

	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-streaming/pkg/streaming"
	remotecommand "k8s.io/cri-streaming/pkg/streaming/remotecommand"

	"peapod/netns"
	"peapod/sandbox"
	"peapod/shim"
)

// streamServer serves exec, attach and port-forward on 127.0.0.1; the CRI
// calls return URLs into it.
type streamServer struct {
	srv  streaming.Server
	http *http.Server
	l    net.Listener
}

// streamRuntime adapts the sandbox manager to the streaming library.
type streamRuntime struct{ m *sandbox.Manager }

func (r streamRuntime) Exec(ctx context.Context, id string, cmd []string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	spec := shim.ExecSpec{Args: cmd, Stdin: in, Tty: tty, Resize: convertResize(resize)}
	if out != nil {
		spec.Stdout = out
	}
	if errw != nil {
		spec.Stderr = errw
	}
	code, err := r.m.Exec(ctx, id, spec)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError(code)
	}
	return nil
}

func (r streamRuntime) Attach(ctx context.Context, id string, in io.Reader, out, errw io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	spec := shim.AttachSpec{Stdin: in, Resize: convertResize(resize)}
	if out != nil {
		spec.Stdout = out
	}
	if errw != nil {
		spec.Stderr = errw
	}
	return r.m.Attach(ctx, id, spec)
}

// PortForward dials the port inside the pod's network namespace and copies
// both ways.
func (r streamRuntime) PortForward(ctx context.Context, sandboxID string, port int32, stream io.ReadWriteCloser) error {
	sb, err := r.m.Get(sandboxID)
	if err != nil {
		return err
	}
	var conn net.Conn
	dial := func() error {
		var err error
		conn, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		return err
	}
	if p, ok := sb.Namespaces[netns.Net]; ok {
		err = netns.Do(map[netns.Kind]string{netns.Net: p}, dial)
	} else {
		err = dial()
	}
	if err != nil {
		return fmt.Errorf("port-forward to port %d of sandbox %s: %w", port, sandboxID, err)
	}
	defer conn.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, _ = io.Copy(stream, conn)
	wg.Wait()
	return nil
}

func convertResize(in <-chan remotecommand.TerminalSize) <-chan shim.TerminalSize {
	if in == nil {
		return nil
	}
	out := make(chan shim.TerminalSize)
	go func() {
		defer close(out)
		for s := range in {
			out <- shim.TerminalSize{Width: s.Width, Height: s.Height}
		}
	}()
	return out
}

// exitError carries a non-zero exit code to the streaming library, which
// reports it to the client.
type exitError int

func (e exitError) Error() string   { return fmt.Sprintf("command terminated with exit code %d", int(e)) }
func (e exitError) String() string  { return e.Error() }
func (e exitError) Exited() bool    { return true }
func (e exitError) ExitStatus() int { return int(e) }

// StartStreaming serves exec/attach/port-forward on l, which it owns from
// then on. Keep it on loopback: it has no auth. (A rootless daemon gets l
// from its parent, bound in the host's network namespace.)
func (s *Server) StartStreaming(l net.Listener) error {
	cfg := streaming.DefaultConfig
	cfg.Addr = l.Addr().String()
	srv, err := streaming.NewServer(cfg, streamRuntime{m: s.sandboxes})
	if err != nil {
		l.Close()
		return err
	}
	hs := &http.Server{Handler: srv}
	go func() { _ = hs.Serve(l) }()
	s.streaming = &streamServer{srv: srv, http: hs, l: l}
	return nil
}

func (s *Server) stream() (streaming.Server, error) {
	if s.streaming == nil {
		return nil, fmt.Errorf("streaming server not running")
	}
	return s.streaming.srv, nil
}

func (s *Server) Exec(ctx context.Context, req *runtime.ExecRequest) (*runtime.ExecResponse, error) {
	if req.GetContainerId() == "" || len(req.GetCmd()) == 0 {
		return nil, invalid("container_id and cmd are required")
	}
	if !req.GetStdout() && !req.GetStderr() && !req.GetStdin() {
		return nil, invalid("one of stdin, stdout and stderr must be set")
	}
	if _, err := s.sandboxes.ContainerStatus(ctx, req.GetContainerId()); err != nil {
		return nil, grpcError(err)
	}
	srv, err := s.stream()
	if err != nil {
		return nil, grpcError(err)
	}
	return srv.GetExec(req)
}

func (s *Server) Attach(ctx context.Context, req *runtime.AttachRequest) (*runtime.AttachResponse, error) {
	if req.GetContainerId() == "" {
		return nil, invalid("container_id is required")
	}
	if _, err := s.sandboxes.ContainerStatus(ctx, req.GetContainerId()); err != nil {
		return nil, grpcError(err)
	}
	srv, err := s.stream()
	if err != nil {
		return nil, grpcError(err)
	}
	return srv.GetAttach(req)
}

func (s *Server) PortForward(ctx context.Context, req *runtime.PortForwardRequest) (*runtime.PortForwardResponse, error) {
	if req.GetPodSandboxId() == "" {
		return nil, invalid("pod_sandbox_id is required")
	}
	if _, err := s.sandboxes.Get(req.GetPodSandboxId()); err != nil {
		return nil, grpcError(err)
	}
	srv, err := s.stream()
	if err != nil {
		return nil, grpcError(err)
	}
	return srv.GetPortForward(req)
}
