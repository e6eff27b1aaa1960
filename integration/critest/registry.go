package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// localRegistry is go-containerregistry's in-memory registry on 127.0.0.1.
type localRegistry struct {
	addr string // 127.0.0.1:port
	srv  *http.Server
}

func startRegistry(listen, logPath string) (*localRegistry, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(logPath)
	if err != nil {
		ln.Close()
		return nil, err
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(logf, "", log.LstdFlags|log.Lmicroseconds)))}
	go func() { _ = srv.Serve(ln) }()
	return &localRegistry{addr: ln.Addr().String(), srv: srv}, nil
}

func (r *localRegistry) close() { _ = r.srv.Close() }

// local is the reference of a critest name in this registry.
func (r *localRegistry) local(critestName string) (name.Reference, error) {
	repo, tag := repoTag(critestName)
	return name.ParseReference(r.addr+"/"+repo+":"+tag, name.Insecure)
}

// push writes every image under every one of its names, as a manifest list
// of one linux/<arch> image where upstream has a multi-arch name.
func (r *localRegistry) push(ctx context.Context, imgs []*testImage) error {
	pushed := map[string]string{} // local ref → image digest: names of two registries may share a repository
	for _, ti := range imgs {
		var write func(ref name.Reference) error
		var dig v1.Hash
		var err error
		if ti.index {
			idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
			idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
				Add:        ti.img,
				Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}},
			})
			if dig, err = idx.Digest(); err != nil {
				return err
			}
			write = func(ref name.Reference) error { return remote.WriteIndex(ref, idx, remote.WithContext(ctx)) }
		} else {
			if dig, err = ti.img.Digest(); err != nil {
				return err
			}
			write = func(ref name.Reference) error { return remote.Write(ref, ti.img, remote.WithContext(ctx)) }
		}
		for _, n := range ti.names {
			ref, err := r.local(n)
			if err != nil {
				return fmt.Errorf("%s: %w", n, err)
			}
			if d, ok := pushed[ref.String()]; ok {
				if d != dig.String() {
					return fmt.Errorf("%s: another image already has its repository and tag", n)
				}
				continue
			}
			if err := write(ref); err != nil {
				return fmt.Errorf("push %s as %s: %w", n, ref, err)
			}
			pushed[ref.String()] = dig.String()
		}
	}
	return nil
}

// verify pulls every name back from the registry the way a runtime does:
// manifest (list), config and every layer, each checked against its digest
// (and each layer's diff ID against the config).
func (r *localRegistry) verify(ctx context.Context, imgs []*testImage) ([]string, error) {
	var lines []string
	for _, ti := range imgs {
		for _, n := range ti.names {
			ref, err := r.local(n)
			if err != nil {
				return nil, err
			}
			desc, err := remote.Get(ref, remote.WithContext(ctx))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", n, err)
			}
			var img v1.Image
			switch {
			case desc.MediaType.IsIndex():
				idx, err := desc.ImageIndex()
				if err != nil {
					return nil, fmt.Errorf("%s: %w", n, err)
				}
				im, err := idx.IndexManifest()
				if err != nil {
					return nil, fmt.Errorf("%s: %w", n, err)
				}
				for _, m := range im.Manifests {
					if m.Platform != nil && m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH {
						if img, err = idx.Image(m.Digest); err != nil {
							return nil, fmt.Errorf("%s: %w", n, err)
						}
					}
				}
				if img == nil {
					return nil, fmt.Errorf("%s: no linux/%s image in its list", n, runtime.GOARCH)
				}
			default:
				if img, err = desc.Image(); err != nil {
					return nil, fmt.Errorf("%s: %w", n, err)
				}
			}
			cf, size, err := checkImage(img)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", n, err)
			}
			layers := cf.RootFS.DiffIDs
			lines = append(lines, fmt.Sprintf("%s  %s  %d layer(s) %d bytes  user=%q entrypoint=%q cmd=%q",
				n, desc.Digest.String()[:19], len(layers), size, cf.Config.User, cf.Config.Entrypoint, cf.Config.Cmd))
		}
	}
	return lines, nil
}

// writeHostsDir writes a containerd-style registry config dir that sends
// every registry to this one: _default/hosts.toml, and the same file for
// each registry host critest names.
// server is the registry's address as the daemon reaches it.
func (r *localRegistry) writeHostsDir(dir, server string, hosts []string) error {
	content := fmt.Sprintf(`# Written by peapod's integration/critest: every registry is served by the
# harness's in-process registry (plain http on loopback).
server = "http://%s"
`, server)
	for _, h := range append([]string{"_default"}, hosts...) {
		d := filepath.Join(dir, h)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// checkImage reads an image's config and every layer, compressed and not,
// and checks each against its digest, diff ID and size.
func checkImage(img v1.Image) (*v1.ConfigFile, int64, error) {
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, 0, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, 0, err
	}
	if h, _, _ := v1.SHA256(bytes.NewReader(raw)); h != m.Config.Digest {
		return nil, 0, fmt.Errorf("config digest %s, manifest says %s", h, m.Config.Digest)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, 0, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, 0, err
	}
	if len(layers) != len(cf.RootFS.DiffIDs) || len(layers) != len(m.Layers) {
		return nil, 0, fmt.Errorf("%d layers, %d diff IDs, %d manifest layers", len(layers), len(cf.RootFS.DiffIDs), len(m.Layers))
	}
	var total int64
	for i, l := range layers {
		for _, c := range []struct {
			open func() (io.ReadCloser, error)
			want v1.Hash
			size int64
		}{{l.Compressed, m.Layers[i].Digest, m.Layers[i].Size}, {l.Uncompressed, cf.RootFS.DiffIDs[i], -1}} {
			rc, err := c.open()
			if err != nil {
				return nil, 0, fmt.Errorf("layer %d: %w", i, err)
			}
			h, n, err := v1.SHA256(rc)
			rc.Close()
			if err != nil {
				return nil, 0, fmt.Errorf("layer %d: %w", i, err)
			}
			if h != c.want || (c.size >= 0 && n != c.size) {
				return nil, 0, fmt.Errorf("layer %d: got %s (%d bytes), want %s (%d bytes)", i, h, n, c.want, c.size)
			}
			if c.size >= 0 {
				total += n
			}
		}
	}
	return cf, total, nil
}
