package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Import imports the images of an archive: an OCI image layout in a tar
// (as written by `docker save` since 25, buildx, skopeo, ctr export) or a
// docker-save tar (manifest.json), either possibly gzip or zstd
// compressed. Names come from the archive: docker-save RepoTags, or the
// io.containerd.image.name / org.opencontainers.image.ref.name annotations
// of index.json when they hold a full reference; other images are imported
// without a name. Blobs are verified against their digests. Progress goes
// to progress (nil: none): a live status line when it is a terminal,
// plain lines otherwise.
func (s *Store) Import(ctx context.Context, path string, progress io.Writer) ([]Image, error) {
	start := time.Now()
	a, err := s.openArchive(path)
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	defer a.close()
	plan, err := a.plan()
	if err != nil {
		return nil, fmt.Errorf("import %s: %w", path, err)
	}
	p := newProgress(progress)
	var total int64
	var layers int
	for _, im := range plan {
		for _, l := range im.layers {
			total += l.entry.size
			layers++
		}
	}
	p.linef("importing %s: %d image(s), %d layer(s), %s", path, len(plan), layers, humanBytes(total))
	p.bytesTotal, p.layersTotal = total, layers

	var out []Image
	for _, im := range plan {
		img, err := s.importImage(ctx, a, im, p)
		if err != nil {
			p.finish()
			return out, fmt.Errorf("import %s: %w", path, err)
		}
		out = append(out, img)
	}
	p.finish()
	s.log.Info("imported images", "archive", path, "images", len(out), "took", time.Since(start).Round(time.Millisecond))
	return out, nil
}

// importPlan is one image of an archive.
type importPlan struct {
	config      v1.Descriptor
	configEntry archiveEntry
	repoTags    []string
	repoDigests []string
	layers      []importLayer
}

type importLayer struct {
	src   layerSource
	entry archiveEntry
}

func (s *Store) importImage(ctx context.Context, a *archive, im importPlan, p *progress) (Image, error) {
	lease, err := s.newLease(im.config.Digest.Hex)
	if err != nil {
		return Image{}, err
	}
	defer lease.release()
	cfgBytes, err := s.configBlob(ctx, im.config, func(ctx context.Context, use func(io.Reader) error) error {
		return use(a.reader(im.configEntry))
	})
	if err != nil {
		return Image{}, err
	}
	cf, err := v1.ParseConfigFile(bytes.NewReader(cfgBytes))
	if err != nil {
		return Image{}, fmt.Errorf("image config %s: %w", im.config.Digest, err)
	}
	if len(cf.RootFS.DiffIDs) != len(im.layers) {
		return Image{}, fmt.Errorf("image config %s lists %d layers, the manifest %d", im.config.Digest, len(cf.RootFS.DiffIDs), len(im.layers))
	}
	rec := imageRecord{ID: im.config.Digest.String(), RepoTags: im.repoTags, RepoDigests: im.repoDigests}
	for i := range im.layers {
		im.layers[i].src.diffID = cf.RootFS.DiffIDs[i]
		rec.DiffIDs = append(rec.DiffIDs, cf.RootFS.DiffIDs[i].Hex)
		rec.Size += im.layers[i].entry.size
	}
	if err := lease.add(rec.DiffIDs...); err != nil {
		return Image{}, err
	}
	// One layer at a time: they come from one file, and the display
	// follows them in order.
	for _, l := range im.layers {
		p.startLayer(l.src.diffID)
		present := s.layerPresent(l.src.diffID.Hex)
		err := s.ensureLayer(ctx, l.src, func(ctx context.Context, use func(io.Reader) error) error {
			return use(p.reader(a.reader(l.entry)))
		})
		if err != nil {
			return Image{}, err
		}
		p.doneLayer(l.src.diffID, l.entry.size, present)
	}
	s.lock()
	img, err := s.commitLocked(rec)
	s.unlock()
	if err != nil {
		return Image{}, err
	}
	return img, nil
}

// archive is an uncompressed tar file indexed by entry name, read at
// random.
type archive struct {
	f       *os.File
	tmp     string // decompressed copy, removed on close
	entries map[string]archiveEntry
}

type archiveEntry struct {
	name   string
	offset int64
	size   int64
}

func (s *Store) openArchive(p string) (*archive, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	a := &archive{f: f}
	br := bufio.NewReader(f)
	if magic, _ := br.Peek(4); isCompressed(magic) {
		dr, err := decompress(br)
		if err != nil {
			f.Close()
			return nil, err
		}
		// Random access needs the plain tar: decompress it into scratch.
		a.tmp = s.session.scratch("archive")
		out, err := os.OpenFile(a.tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, err = io.Copy(out, dr)
		}
		dr.Close()
		f.Close()
		a.f = out
		if err != nil {
			a.close()
			return nil, fmt.Errorf("decompress: %w", err)
		}
	}
	if err := a.index(); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

func isCompressed(magic []byte) bool {
	return bytes.HasPrefix(magic, []byte{0x1f, 0x8b}) || bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd})
}

func (a *archive) close() {
	if a.f != nil {
		a.f.Close()
	}
	if a.tmp != "" {
		os.Remove(a.tmp)
	}
}

// index records where each file's data lies. archive/tar reads whole
// blocks and seeks over data, so the file offset after Next is the data's.
func (a *archive) index() error {
	if _, err := a.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	a.entries = map[string]archiveEntry{}
	links := map[string]string{}
	tr := tar.NewReader(a.f)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("not a tar archive: %w", err)
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeRegA:
			off, err := a.f.Seek(0, io.SeekCurrent)
			if err != nil {
				return err
			}
			a.entries[name] = archiveEntry{name: name, offset: off, size: hdr.Size}
		case tar.TypeSymlink:
			links[name] = path.Join(path.Dir(name), hdr.Linkname)
		case tar.TypeLink:
			links[name] = path.Clean(strings.TrimPrefix(hdr.Linkname, "./"))
		}
	}
	// docker save links identical layers to one copy.
	for name, target := range links {
		for range 8 {
			if e, ok := a.entries[target]; ok {
				a.entries[name] = e
				break
			}
			next, ok := links[target]
			if !ok {
				break
			}
			target = next
		}
	}
	return nil
}

func (a *archive) reader(e archiveEntry) io.Reader { return io.NewSectionReader(a.f, e.offset, e.size) }

func (a *archive) readAll(name string, limit int64) ([]byte, error) {
	e, ok := a.entries[name]
	if !ok {
		return nil, fmt.Errorf("archive has no %s", name)
	}
	if e.size > limit {
		return nil, fmt.Errorf("%s: %d bytes is too large", name, e.size)
	}
	return io.ReadAll(a.reader(e))
}

// blob reads and verifies a blob of an OCI layout.
func (a *archive) blob(d v1.Descriptor, limit int64) ([]byte, error) {
	b, err := a.readAll(blobPath(d.Digest), limit)
	if err != nil {
		return nil, err
	}
	return b, verifyBlob(d, b)
}

func blobPath(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }

func (a *archive) plan() ([]importPlan, error) {
	if _, ok := a.entries["index.json"]; ok {
		return a.planOCI()
	}
	if _, ok := a.entries["manifest.json"]; ok {
		return a.planDocker()
	}
	return nil, errors.New("neither an OCI image layout (index.json) nor a docker-save archive (manifest.json)")
}

func (a *archive) planOCI() ([]importPlan, error) {
	b, err := a.readAll("index.json", maxConfigBytes)
	if err != nil {
		return nil, err
	}
	idx, err := v1.ParseIndexManifest(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("index.json: %w", err)
	}
	var plans []importPlan
	for _, d := range idx.Manifests {
		if d.Platform != nil && (d.Platform.OS != "linux" || d.Platform.Architecture != runtime.GOARCH) {
			continue
		}
		var im importPlan
		if ref, ok := annotatedName(d.Annotations); ok {
			if ref.tag != "" {
				im.repoTags = []string{ref.String()}
			}
			im.repoDigests = []string{ref.withDigest(d.Digest.String())}
		}
		desc := d
		for depth := 0; desc.MediaType.IsIndex(); depth++ {
			if depth == 2 {
				return nil, fmt.Errorf("%s: index nesting too deep", d.Digest)
			}
			ib, err := a.blob(desc, maxConfigBytes)
			if err != nil {
				return nil, err
			}
			if desc, err = pickPlatform(ib); err != nil {
				return nil, fmt.Errorf("%s: %w", d.Digest, err)
			}
		}
		if !desc.MediaType.IsImage() {
			continue // attestations, signatures and other artifacts
		}
		mb, err := a.blob(desc, maxConfigBytes)
		if err != nil {
			return nil, err
		}
		m, err := parseImageManifest(desc.MediaType, mb)
		if err != nil {
			return nil, fmt.Errorf("manifest %s: %w", desc.Digest, err)
		}
		ce, ok := a.entries[blobPath(m.Config.Digest)]
		if !ok {
			return nil, fmt.Errorf("archive lacks config blob %s", m.Config.Digest)
		}
		im.config, im.configEntry = m.Config, ce
		for _, l := range m.Layers {
			le, ok := a.entries[blobPath(l.Digest)]
			if !ok {
				return nil, fmt.Errorf("archive lacks layer blob %s", l.Digest)
			}
			if strings.Contains(string(l.MediaType), "encrypted") {
				return nil, fmt.Errorf("layer %s: encrypted layers are not supported", l.Digest)
			}
			im.layers = append(im.layers, importLayer{src: layerSource{digest: l.Digest, size: l.Size}, entry: le})
		}
		plans = append(plans, im)
	}
	if len(plans) == 0 {
		return nil, fmt.Errorf("no linux/%s image in index.json", runtime.GOARCH)
	}
	return plans, nil
}

// annotatedName is the image name an OCI layout gives a manifest: the
// containerd annotation, or ref.name when it is a full reference rather
// than just a tag.
func annotatedName(ann map[string]string) (imageRef, bool) {
	if n := ann["io.containerd.image.name"]; n != "" {
		if r, err := parseRef(n); err == nil {
			return r, true
		}
	}
	if n := ann["org.opencontainers.image.ref.name"]; strings.ContainsAny(n, "/:@") {
		if r, err := parseRef(n); err == nil {
			return r, true
		}
	}
	return imageRef{}, false
}

func (a *archive) planDocker() ([]importPlan, error) {
	b, err := a.readAll("manifest.json", maxConfigBytes)
	if err != nil {
		return nil, err
	}
	var entries []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("manifest.json: %w", err)
	}
	var plans []importPlan
	for _, e := range entries {
		cb, err := a.readAll(path.Clean(e.Config), maxConfigBytes)
		if err != nil {
			return nil, err
		}
		h, _, err := v1.SHA256(bytes.NewReader(cb))
		if err != nil {
			return nil, err
		}
		im := importPlan{
			config:      v1.Descriptor{MediaType: types.DockerConfigJSON, Digest: h, Size: int64(len(cb))},
			configEntry: a.entries[path.Clean(e.Config)],
		}
		for _, t := range e.RepoTags {
			r, err := parseRef(t)
			if err != nil {
				return nil, fmt.Errorf("manifest.json: %w", err)
			}
			im.repoTags = append(im.repoTags, r.String())
		}
		for _, l := range e.Layers {
			name := path.Clean(l)
			le, ok := a.entries[name]
			if !ok {
				return nil, fmt.Errorf("archive lacks layer %s", l)
			}
			var src layerSource
			// Docker 25+ stores layers as blobs/sha256/<digest>: check it.
			if hex, ok := strings.CutPrefix(name, "blobs/sha256/"); ok {
				src.digest = v1.Hash{Algorithm: "sha256", Hex: hex}
				src.size = le.size
			}
			im.layers = append(im.layers, importLayer{src: src, entry: le})
		}
		plans = append(plans, im)
	}
	if len(plans) == 0 {
		return nil, errors.New("manifest.json lists no image")
	}
	return plans, nil
}
