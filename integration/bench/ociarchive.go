package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	goruntime "runtime"
	"strings"
	"time"
)

// OCI media types (image-spec v1.0).
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"
)

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *ociPlatform      `json:"platform,omitempty"`
}

type ociPlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// writePauseImage writes an OCI image layout archive with one layer holding
// the static pause binary as /pause and a config whose entrypoint runs it,
// named ref (e.g. peapod.local/bench/pause:1). `ctr images import` reads the
// name from the io.containerd.image.name annotation of the index.
func writePauseImage(path, pauseBinary, ref string) error {
	bin, err := os.ReadFile(pauseBinary)
	if err != nil {
		return err
	}
	// A fixed timestamp keeps the layer digest stable from run to run.
	epoch := time.Unix(0, 0).UTC()

	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	if err := tw.WriteHeader(&tar.Header{Name: "pause", Mode: 0o755, Size: int64(len(bin)), ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
		return err
	}
	if _, err := tw.Write(bin); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	layerDigest := digestOf(layer.Bytes())

	config, err := json.Marshal(map[string]any{
		"created":      epoch.Format(time.RFC3339),
		"architecture": goruntime.GOARCH,
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": []string{"/pause"},
			"WorkingDir": "/",
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
		"history": []map[string]any{{"created": epoch.Format(time.RFC3339), "created_by": "peapod bench: pause/embedded/pause.bin as /pause"}},
	})
	if err != nil {
		return err
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeManifest,
		"config":        ociDescriptor{MediaType: mediaTypeConfig, Digest: digestOf(config), Size: int64(len(config))},
		"layers":        []ociDescriptor{{MediaType: mediaTypeLayer, Digest: layerDigest, Size: int64(layer.Len())}},
	})
	if err != nil {
		return err
	}
	tag := ref[strings.LastIndexByte(ref, ':')+1:]
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaTypeIndex,
		"manifests": []ociDescriptor{{
			MediaType: mediaTypeManifest,
			Digest:    digestOf(manifest),
			Size:      int64(len(manifest)),
			Annotations: map[string]string{
				"io.containerd.image.name":          ref,
				"org.opencontainers.image.ref.name": tag,
			},
			Platform: &ociPlatform{Architecture: goruntime.GOARCH, OS: "linux"},
		}},
	})
	if err != nil {
		return err
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	out := tar.NewWriter(f)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{blobPath(layerDigest), layer.Bytes()},
		{blobPath(digestOf(config)), config},
		{blobPath(digestOf(manifest)), manifest},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := out.WriteHeader(&tar.Header{Name: dir, Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
			f.Close()
			return err
		}
	}
	for _, e := range files {
		if err := out.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: epoch, Typeflag: tar.TypeReg}); err != nil {
			f.Close()
			return err
		}
		if _, err := out.Write(e.data); err != nil {
			f.Close()
			return err
		}
	}
	if err := out.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func blobPath(digest string) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:")
}
