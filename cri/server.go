package cri

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/image"
	"peapod/netns"
	"peapod/sandbox"
)

// Info describes the daemon for Version and Status.
type Info struct {
	Version      string
	CgroupDriver string // "cgroupfs" or "systemd"
	// StatusDetails are extra facts shown in verbose Status (config, paths).
	StatusDetails map[string]any
}

// Server implements the CRI services over a sandbox.Manager.
type Server struct {
	runtime.UnimplementedRuntimeServiceServer
	runtime.UnimplementedImageServiceServer

	sandboxes *sandbox.Manager
	network   *netns.Network
	images    *image.Store
	streaming *streamServer
	info      Info
	log       *slog.Logger
	grpc      *grpc.Server
}

// NewServer wires the CRI services. images may be nil (no ImageService,
// no containers).
func NewServer(m *sandbox.Manager, network *netns.Network, images *image.Store, info Info, log *slog.Logger) *Server {
	s := &Server{sandboxes: m, network: network, images: images, info: info, log: log}
	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(16<<20),
		grpc.MaxSendMsgSize(16<<20),
		grpc.ChainUnaryInterceptor(s.logCalls),
	)
	runtime.RegisterRuntimeServiceServer(s.grpc, s)
	runtime.RegisterImageServiceServer(s.grpc, s)
	return s
}

// Serve listens on the unix socket path until Stop. A stale socket file
// from a killed daemon is replaced.
// ready, if not nil, is called once the socket accepts connections.
func (s *Server) Serve(socket string, ready func()) error {
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", socket, err)
	}
	l, err := net.Listen("unix", socket)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", socket, err)
	}
	if err := os.Chmod(socket, 0o660); err != nil {
		l.Close()
		return err
	}
	if ready != nil {
		ready()
	}
	return s.grpc.Serve(l)
}

// Stop ends serving; in-flight calls finish.
func (s *Server) Stop() { s.grpc.GracefulStop() }

func (s *Server) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	if err != nil {
		s.log.Info("CRI call failed", "method", info.FullMethod, "took", time.Since(start), "err", err)
	} else {
		s.log.Debug("CRI call", "method", info.FullMethod, "took", time.Since(start))
	}
	return resp, err
}

// grpcError maps package errors to gRPC codes.
func grpcError(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, sandbox.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, sandbox.ErrNotFound), errors.Is(err, sandbox.ErrImageNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, sandbox.ErrExists):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, sandbox.ErrNotReady), errors.Is(err, sandbox.ErrNotRunning), errors.Is(err, sandbox.ErrHostPort):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, sandbox.ErrNoContainerRTS):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}
