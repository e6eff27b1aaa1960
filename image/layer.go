package image

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"peapod/internal/atomicfile"
)

// maxConcurrentLayers is how many layers one pull downloads at once, the
// kubelet's and containerd's usual default.
const maxConcurrentLayers = 3

// maxConfigBytes bounds an image config read into memory.
const maxConfigBytes = 32 << 20

// blobFetcher hands a blob's content to use, trying sources in turn.
type blobFetcher func(ctx context.Context, use func(io.Reader) error) error

func (s *Store) layerPresent(diffIDHex string) bool {
	_, err := os.Stat(s.layerPath(diffIDHex))
	return err == nil
}

// ensureLayers unpacks the layers that are not in the store yet, a few at
// a time. Callers hold a lease on them.
func (s *Store) ensureLayers(ctx context.Context, layers []layerSource, fetch func(layerSource) blobFetcher) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, maxConcurrentLayers)
	errs := make(chan error, len(layers))
	for _, l := range layers {
		go func() {
			select {
			case sem <- struct{}{}:
				defer func() { <-sem }()
			case <-ctx.Done():
				errs <- ctx.Err()
				return
			}
			err := s.ensureLayer(ctx, l, fetch(l))
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	var first error
	for range layers {
		if err := <-errs; err != nil && (first == nil || isContextErr(first) && !isContextErr(err)) {
			first = err
		}
	}
	return first
}

// ensureLayer unpacks one layer unless it is there; concurrent pulls that
// need the same layer share one download.
func (s *Store) ensureLayer(ctx context.Context, src layerSource, fetch blobFetcher) error {
	_, err := s.layers.do(ctx, src.diffID.Hex, func(ctx context.Context) (struct{}, error) {
		if s.layerPresent(src.diffID.Hex) {
			return struct{}{}, nil
		}
		return struct{}{}, s.unpackAndCommit(ctx, src, fetch)
	})
	return err
}

// unpackAndCommit unpacks a layer into the session's scratch space, makes
// it durable, then renames it into layers/: a layer directory that exists
// is always complete and verified.
func (s *Store) unpackAndCommit(ctx context.Context, src layerSource, fetch blobFetcher) error {
	start := time.Now()
	var (
		tmp string
		u   usage
	)
	err := fetch(ctx, func(r io.Reader) error {
		tmp = s.session.scratch("layer-" + src.diffID.Hex[:12])
		if err := os.Mkdir(tmp, 0o700); err != nil {
			return err
		}
		var err error
		if u, err = unpackLayer(ctx, r, filepath.Join(tmp, "diff"), src, s.layout, s.log); err != nil {
			_ = os.RemoveAll(tmp)
		}
		return err
	})
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // only left when the rename below did not happen
	b, _ := json.Marshal(u)
	if err := os.WriteFile(filepath.Join(tmp, "usage.json"), b, 0o600); err != nil {
		return err
	}
	if err := syncFS(tmp); err != nil {
		return fmt.Errorf("sync layer %s: %w", src.diffID, err)
	}
	dst := s.layerDir(src.diffID.Hex)
	if err := os.Rename(tmp, dst); err != nil {
		if errors.Is(err, unix.EEXIST) || errors.Is(err, unix.ENOTEMPTY) {
			return nil // another process unpacked it first
		}
		return fmt.Errorf("commit layer %s: %w", src.diffID, err)
	}
	if err := atomicfile.SyncDir(filepath.Dir(dst)); err != nil {
		return err
	}
	s.mu.Lock()
	s.usage[src.diffID.Hex] = u
	s.mu.Unlock()
	s.log.Debug("unpacked layer", "diffID", src.diffID.String(), "bytes", u.Bytes, "inodes", u.Inodes, "took", time.Since(start))
	return nil
}

// syncFS flushes the filesystem holding dir: one syncfs(2) instead of an
// fsync per unpacked file, so a crash after the rename never exposes a
// layer whose files are still empty.
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// configBlob returns an image config, from the store or fetched, verified
// and stored. Callers hold a lease on it.
func (s *Store) configBlob(ctx context.Context, desc v1.Descriptor, fetch blobFetcher) ([]byte, error) {
	if desc.Digest.Algorithm != "sha256" {
		return nil, fmt.Errorf("image config %s: only sha256 digests are supported", desc.Digest)
	}
	p := s.configPath(desc.Digest.String())
	if b, err := os.ReadFile(p); err == nil {
		return b, nil
	}
	if desc.Size > maxConfigBytes {
		return nil, fmt.Errorf("image config %s: %d bytes is too large", desc.Digest, desc.Size)
	}
	var b []byte
	err := fetch(ctx, func(r io.Reader) error {
		var err error
		b, err = io.ReadAll(io.LimitReader(r, maxConfigBytes+1))
		if err != nil {
			return err
		}
		return verifyBlob(desc, b)
	})
	if err != nil {
		return nil, err
	}
	return b, s.storeConfig(desc.Digest.Hex, b)
}

func verifyBlob(desc v1.Descriptor, b []byte) error {
	if got := fmt.Sprintf("sha256:%x", sha256.Sum256(b)); got != desc.Digest.String() {
		return fmt.Errorf("blob %s: content has digest %s: corrupt or tampered", desc.Digest, got)
	}
	if desc.Size > 0 && int64(len(b)) != desc.Size {
		return fmt.Errorf("blob %s: %d bytes, the manifest says %d: corrupt or tampered", desc.Digest, len(b), desc.Size)
	}
	return nil
}

// storeConfig writes a verified config blob durably: built in the session,
// renamed into blobs/.
func (s *Store) storeConfig(hex string, b []byte) error {
	tmp := s.session.scratch("blob")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	dst := s.configPath("sha256:" + hex)
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return atomicfile.SyncDir(filepath.Dir(dst))
}
