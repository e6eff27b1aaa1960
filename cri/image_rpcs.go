package cri

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtime "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/image"
	"peapod/sandbox"
)

func (s *Server) imagesOrError() error {
	if s.images == nil {
		return status.Error(codes.Unimplemented, "this peapod runs without an image store")
	}
	return nil
}

func (s *Server) PullImage(ctx context.Context, req *runtime.PullImageRequest) (*runtime.PullImageResponse, error) {
	if err := s.imagesOrError(); err != nil {
		return nil, err
	}
	ref := req.GetImage().GetImage()
	if ref == "" {
		return nil, invalid("image.image is required (e.g. busybox:1.36)")
	}
	var auth *image.Auth
	if a := req.GetAuth(); a != nil {
		auth = &image.Auth{Username: a.Username, Password: a.Password, Auth: a.Auth, IdentityToken: a.IdentityToken, RegistryToken: a.RegistryToken}
	}
	img, err := s.images.Pull(ctx, ref, auth)
	if err != nil {
		return nil, imageError(err)
	}
	return &runtime.PullImageResponse{ImageRef: img.ID}, nil
}

func imageError(err error) error {
	switch {
	case errors.Is(err, image.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

func toCRIImage(img image.Image) *runtime.Image {
	out := &runtime.Image{
		Id:          img.ID,
		RepoTags:    img.RepoTags,
		RepoDigests: img.RepoDigests,
		Size:        uint64(img.Size),
		Pinned:      img.Pinned,
		Spec:        &runtime.ImageSpec{Image: img.ID},
	}
	user, _, _ := strings.Cut(img.User, ":")
	if uid, err := strconv.ParseInt(user, 10, 64); err == nil {
		out.Uid = &runtime.Int64Value{Value: uid}
	} else {
		out.Username = user
	}
	return out
}

func (s *Server) ListImages(ctx context.Context, req *runtime.ListImagesRequest) (*runtime.ListImagesResponse, error) {
	if err := s.imagesOrError(); err != nil {
		return nil, err
	}
	want := req.GetFilter().GetImage().GetImage()
	var wantID string
	if want != "" {
		img, err := s.images.Get(want)
		if err != nil {
			return &runtime.ListImagesResponse{}, nil
		}
		wantID = img.ID
	}
	resp := &runtime.ListImagesResponse{}
	for _, img := range s.images.List() {
		if wantID != "" && img.ID != wantID {
			continue
		}
		resp.Images = append(resp.Images, toCRIImage(img))
	}
	return resp, nil
}

func (s *Server) ImageStatus(ctx context.Context, req *runtime.ImageStatusRequest) (*runtime.ImageStatusResponse, error) {
	if err := s.imagesOrError(); err != nil {
		return nil, err
	}
	ref := req.GetImage().GetImage()
	if ref == "" {
		return nil, invalid("image.image is required")
	}
	img, err := s.images.Get(ref)
	if errors.Is(err, image.ErrNotFound) {
		// CRI: an absent image is a nil image, not an error.
		return &runtime.ImageStatusResponse{}, nil
	}
	if err != nil {
		return nil, imageError(err)
	}
	resp := &runtime.ImageStatusResponse{Image: toCRIImage(img)}
	if req.GetVerbose() {
		resp.Info = map[string]string{"info": `{"layers":` + strconv.Itoa(len(img.Layers)) + `}`}
	}
	return resp, nil
}

func (s *Server) RemoveImage(ctx context.Context, req *runtime.RemoveImageRequest) (*runtime.RemoveImageResponse, error) {
	if err := s.imagesOrError(); err != nil {
		return nil, err
	}
	ref := req.GetImage().GetImage()
	if ref == "" {
		return nil, invalid("image.image is required")
	}
	if err := s.images.Remove(ref); err != nil && !errors.Is(err, image.ErrNotFound) {
		return nil, imageError(err)
	}
	return &runtime.RemoveImageResponse{}, nil
}

func (s *Server) ImageFsInfo(ctx context.Context, req *runtime.ImageFsInfoRequest) (*runtime.ImageFsInfoResponse, error) {
	if err := s.imagesOrError(); err != nil {
		return nil, err
	}
	bytes, inodes, mp, err := s.images.FsUsage()
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	now := time.Now().UnixNano()
	fs := &runtime.FilesystemUsage{
		Timestamp:  now,
		FsId:       &runtime.FilesystemIdentifier{Mountpoint: mp},
		UsedBytes:  &runtime.UInt64Value{Value: bytes},
		InodesUsed: &runtime.UInt64Value{Value: inodes},
	}
	// Containers' writable layers live beside the images; count them
	// separately so the kubelet's eviction sees what containers wrote.
	var cBytes, cInodes uint64
	for _, c := range s.sandboxes.ListContainers(ctx, sandbox.ContainerFilter{}) {
		if b, i, err := s.images.WritableLayerUsage(c.ID); err == nil {
			cBytes += b
			cInodes += i
		}
	}
	cfs := &runtime.FilesystemUsage{
		Timestamp:  now,
		FsId:       &runtime.FilesystemIdentifier{Mountpoint: mp},
		UsedBytes:  &runtime.UInt64Value{Value: cBytes},
		InodesUsed: &runtime.UInt64Value{Value: cInodes},
	}
	return &runtime.ImageFsInfoResponse{ImageFilesystems: []*runtime.FilesystemUsage{fs}, ContainerFilesystems: []*runtime.FilesystemUsage{cfs}}, nil
}
