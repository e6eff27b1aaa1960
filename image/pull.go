package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Pull pulls an image (by tag or by digest) for linux/GOARCH from its
// registry or the mirrors configured for it, unpacks the layers the store
// does not have yet and records the image under the reference's name.
// Concurrent pulls of the same reference with the same credentials are done
// once; layers shared with other pulls are downloaded once.
func (s *Store) Pull(ctx context.Context, ref string, auth *Auth) (Image, error) {
	r, err := parseRef(ref)
	if err != nil {
		return Image{}, fmt.Errorf("pull: %w", err)
	}
	return s.pulls.do(ctx, r.String()+"\x00"+auth.key(), func(ctx context.Context) (Image, error) {
		img, err := s.pull(ctx, r, auth)
		if err != nil {
			return Image{}, fmt.Errorf("pull %s: %w", r, err)
		}
		return img, nil
	})
}

func (s *Store) pull(ctx context.Context, r imageRef, auth *Auth) (Image, error) {
	start := time.Now()
	hosts, err := registryHosts(s.hostsDir, r.domain)
	if err != nil {
		return Image{}, err
	}
	c := newRegistryClient(r, hosts, auth)
	defer c.close()

	desc, manifest, err := c.resolve(ctx)
	if err != nil {
		return Image{}, err
	}
	pulled := desc.Digest // what the repo digest names: the index, if any
	for depth := 0; desc.MediaType.IsIndex(); depth++ {
		if depth == 2 {
			return Image{}, fmt.Errorf("index nesting too deep")
		}
		child, err := pickPlatform(manifest)
		if err != nil {
			return Image{}, err
		}
		if desc, manifest, err = c.manifest(ctx, child.Digest.String()); err != nil {
			return Image{}, err
		}
	}
	m, err := parseImageManifest(desc.MediaType, manifest)
	if err != nil {
		return Image{}, err
	}

	lease, err := s.newLease(m.Config.Digest.Hex)
	if err != nil {
		return Image{}, err
	}
	defer lease.release()
	cfgBytes, err := s.configBlob(ctx, m.Config, func(ctx context.Context, use func(io.Reader) error) error {
		return c.blob(ctx, m.Config.Digest, use)
	})
	if err != nil {
		return Image{}, err
	}
	layers, err := layerSources(m, cfgBytes)
	if err != nil {
		return Image{}, err
	}
	rec := imageRecord{ID: m.Config.Digest.String(), RepoDigests: []string{r.withDigest(pulled.String())}}
	for _, l := range layers {
		rec.DiffIDs = append(rec.DiffIDs, l.diffID.Hex)
		rec.Size += l.size
	}
	if r.tag != "" {
		rec.RepoTags = []string{r.String()}
	}
	if err := lease.add(rec.DiffIDs...); err != nil {
		return Image{}, err
	}
	err = s.ensureLayers(ctx, layers, func(l layerSource) blobFetcher {
		return func(ctx context.Context, use func(io.Reader) error) error { return c.blob(ctx, l.digest, use) }
	})
	if err != nil {
		return Image{}, err
	}
	s.lock()
	img, err := s.commitLocked(rec)
	s.unlock()
	if err != nil {
		return Image{}, err
	}
	s.log.Info("pulled image", "ref", r.String(), "id", img.ID, "digest", pulled.String(), "layers", len(layers), "size", rec.Size, "took", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// pickPlatform chooses linux/GOARCH from an index, as a kubelet node
// would run it.
func pickPlatform(index []byte) (v1.Descriptor, error) {
	idx, err := v1.ParseIndexManifest(bytes.NewReader(index))
	if err != nil {
		return v1.Descriptor{}, fmt.Errorf("parse index: %w", err)
	}
	var found []string
	var match *v1.Descriptor
	for i, d := range idx.Manifests {
		p := d.Platform
		if p == nil {
			continue
		}
		found = append(found, p.String())
		if p.OS != "linux" || p.Architecture != runtime.GOARCH {
			continue
		}
		if !d.MediaType.IsImage() && !d.MediaType.IsIndex() && d.MediaType != "" {
			continue
		}
		// arm64 images may say variant v8 or nothing; prefer the plain one
		// only when nothing better came first.
		if match == nil || (match.Platform.Variant != "" && p.Variant == "") {
			match = &idx.Manifests[i]
		}
	}
	if match == nil {
		return v1.Descriptor{}, fmt.Errorf("no linux/%s image in the index (it has: %s)", runtime.GOARCH, strings.Join(found, ", "))
	}
	return *match, nil
}

func parseImageManifest(mt types.MediaType, b []byte) (*v1.Manifest, error) {
	if mt.IsSchema1() {
		return nil, fmt.Errorf("docker schema 1 manifests are not supported (%s)", mt)
	}
	m, err := v1.ParseManifest(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	if mt := m.Config.MediaType; mt != "" && !mt.IsConfig() {
		return nil, fmt.Errorf("not a container image: config media type %s", mt)
	}
	return m, nil
}

// layerSources pairs the manifest's layer blobs with the config's diff IDs.
func layerSources(m *v1.Manifest, cfgBytes []byte) ([]layerSource, error) {
	cf, err := v1.ParseConfigFile(bytes.NewReader(cfgBytes))
	if err != nil {
		return nil, fmt.Errorf("parse image config: %w", err)
	}
	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("image config lists %d layers, the manifest %d", len(cf.RootFS.DiffIDs), len(m.Layers))
	}
	out := make([]layerSource, len(m.Layers))
	for i, l := range m.Layers {
		if strings.Contains(string(l.MediaType), "encrypted") {
			return nil, fmt.Errorf("layer %s: encrypted layers are not supported", l.Digest)
		}
		d := cf.RootFS.DiffIDs[i]
		if d.Algorithm != "sha256" || l.Digest.Algorithm != "sha256" {
			return nil, fmt.Errorf("layer %s: only sha256 digests are supported", l.Digest)
		}
		out[i] = layerSource{diffID: d, digest: l.Digest, size: l.Size}
	}
	return out, nil
}
