package image

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"peapod/internal/atomicfile"
)

// ErrNotFound is returned (wrapped) when no image matches a reference.
var ErrNotFound = errors.New("image not found")

// Config configures a Store.
type Config struct {
	// Root holds blobs, unpacked layers, records and container rootfs
	// directories, e.g. <peapod root>/images.
	Root string
	// RegistryConfigDir is a containerd-style hosts directory:
	// <dir>/<registry-host>/hosts.toml, or <dir>/_default/hosts.toml for
	// every registry without its own. Empty: registries are used directly.
	RegistryConfigDir string
	// PinnedImages are image names (normalised like any reference) reported
	// as pinned, so the kubelet never garbage-collects them.
	PinnedImages []string
	Log          *slog.Logger
}

// Image is an image in the store, with what CreateContainer needs from its
// config.
type Image struct {
	ID          string   // "sha256:<config digest>"
	RepoTags    []string // "docker.io/library/busybox:1.36"
	RepoDigests []string // "docker.io/library/busybox@sha256:..." (the digest pulled: an index or a manifest)
	Size        int64    // sum of the compressed layer sizes
	User        string
	Env         []string
	Entrypoint  []string
	Cmd         []string
	WorkingDir  string
	StopSignal  string
	Labels      map[string]string
	Layers      []string // unpacked layer directories, lowest first
	Pinned      bool
}

// Store is the image store under one root. Its methods are safe for
// concurrent use, and several processes may open the same root.
type Store struct {
	root     string
	hostsDir string
	log      *slog.Logger
	pinned   map[string]bool

	lockFile *os.File // <root>/lock, flock'd around record changes and GC
	session  *session

	mu              sync.Mutex // guards the fields below and, with lockFile, the records on disk
	records         map[string]*imageRecord
	stamp           fileStamp
	configs         map[string]imageConfig // parsed config blobs by ID; blobs never change
	usage           map[string]usage       // layer usage by diff ID hex
	overlayIndexOff bool
	metacopyParam   bool        // the overlay module has a metacopy parameter
	layout          storeLayout // how layers are written and mounted (layout.json)

	pulls  flightGroup[Image]
	layers flightGroup[struct{}]
}

// imageRecord is what images.json keeps of an image.
type imageRecord struct {
	ID          string   `json:"id"`
	RepoTags    []string `json:"repoTags,omitempty"`
	RepoDigests []string `json:"repoDigests,omitempty"`
	Size        int64    `json:"size"`
	DiffIDs     []string `json:"diffIDs"` // lowest first
}

type recordsFile struct {
	Images []*imageRecord `json:"images"`
}

// imageConfig is the part of an image config a container needs.
type imageConfig struct {
	User, WorkingDir, StopSignal string
	Env, Entrypoint, Cmd         []string
	Labels                       map[string]string
}

// usage is the disk usage of a directory tree.
type usage struct {
	Bytes  uint64 `json:"bytes"`
	Inodes uint64 `json:"inodes"`
}

type fileStamp struct {
	ino, size uint64
	mtime     int64
}

// Open opens (creating it if needed) the store under cfg.Root, removes
// scratch files of dead processes and garbage nobody references.
func Open(cfg Config) (*Store, error) {
	if cfg.Root == "" {
		return nil, errors.New("image store: no root directory")
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, err
	}
	if strings.ContainsAny(root, ":,") {
		// Layer paths go into overlay mount options, where these separate.
		return nil, fmt.Errorf("image store: root %q must not contain ':' or ','", root)
	}
	cur, err := currentLayout()
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	for _, d := range []string{"", "blobs/sha256", "layers", "containers", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, fmt.Errorf("image store: %w", permissionHint(root, err))
		}
	}
	// mountinfo shows resolved paths; compare like with like.
	if root, err = filepath.EvalSymlinks(root); err != nil {
		return nil, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		root:     root,
		hostsDir: cfg.RegistryConfigDir,
		log:      log.With("component", "image"),
		pinned:   map[string]bool{},
		configs:  map[string]imageConfig{},
		usage:    map[string]usage{},
		layout:   cur,
	}
	for _, n := range cfg.PinnedImages {
		if r, err := parseRef(n); err == nil {
			s.pinned[r.String()] = true
		} else if id, ok := fullID(n); ok {
			s.pinned[id] = true
		} else {
			return nil, fmt.Errorf("image store: pinned image %q: %w", n, err)
		}
	}
	if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
		// Layers are shared by many overlay mounts; the inode index would
		// tie a lower layer to one upper.
		s.overlayIndexOff = true
	}
	if _, err := os.Stat("/sys/module/overlay/parameters/metacopy"); err == nil {
		s.metacopyParam = true
	}
	s.lockFile, err = os.OpenFile(filepath.Join(root, "lock"), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", permissionHint(root, err))
	}
	s.lock()
	trash, err := s.openLocked()
	s.unlock()
	removeAll(trash)
	if err != nil {
		s.Close()
		var le *LayoutError
		if errors.As(err, &le) {
			return nil, err
		}
		return nil, fmt.Errorf("image store %s: %w", root, err)
	}
	return s, nil
}

func (s *Store) openLocked() ([]string, error) {
	sess, err := newSession(filepath.Join(s.root, "tmp"))
	if err != nil {
		return nil, err
	}
	s.session = sess
	if err := s.checkLayoutLocked(s.layout); err != nil {
		return nil, err
	}
	// Torn writes of the records (they are only written under the lock).
	if torn, err := filepath.Glob(filepath.Join(s.root, ".images.json.tmp-*")); err == nil {
		removeAll(torn)
	}
	if err := s.refreshLocked(); err != nil {
		return nil, err
	}
	return s.collectGarbageLocked()
}

// Close releases the store's scratch directory and lock file. Mounts stay.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.session != nil {
		s.session.close()
		s.session = nil
	}
	if s.lockFile != nil {
		err := s.lockFile.Close()
		s.lockFile = nil
		return err
	}
	return nil
}

// lock serialises record changes and GC with this process's goroutines and
// with other processes using the same root.
func (s *Store) lock() {
	s.mu.Lock()
	for {
		err := unix.Flock(int(s.lockFile.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			if err != nil {
				s.log.Error("image store lock", "err", err)
			}
			return
		}
	}
}

func (s *Store) unlock() {
	_ = unix.Flock(int(s.lockFile.Fd()), unix.LOCK_UN)
	s.mu.Unlock()
}

func (s *Store) recordsPath() string { return filepath.Join(s.root, "images.json") }

func (s *Store) configPath(id string) string {
	return filepath.Join(s.root, "blobs", "sha256", strings.TrimPrefix(id, "sha256:"))
}

func (s *Store) layerDir(diffIDHex string) string { return filepath.Join(s.root, "layers", diffIDHex) }

// layerPath is the directory an overlay mount uses for a layer.
func (s *Store) layerPath(diffIDHex string) string {
	return filepath.Join(s.layerDir(diffIDHex), "diff")
}

// refreshLocked reloads images.json when another process (or this one)
// replaced it. Callers hold s.mu.
func (s *Store) refreshLocked() error {
	var st unix.Stat_t
	err := unix.Stat(s.recordsPath(), &st)
	if errors.Is(err, unix.ENOENT) {
		s.records, s.stamp = map[string]*imageRecord{}, fileStamp{}
		return nil
	}
	if err != nil {
		return err
	}
	stamp := fileStamp{ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Nano()}
	if s.records != nil && stamp == s.stamp {
		return nil
	}
	b, err := os.ReadFile(s.recordsPath())
	if err != nil {
		return err
	}
	var f recordsFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("image records %s: %w", s.recordsPath(), err)
	}
	records := make(map[string]*imageRecord, len(f.Images))
	for _, r := range f.Images {
		if _, ok := s.configs[r.ID]; !ok {
			cfg, err := s.readConfig(r.ID)
			if err != nil {
				s.log.Warn("dropping image with unreadable config", "id", r.ID, "err", err)
				continue
			}
			s.configs[r.ID] = cfg
		}
		records[r.ID] = r
	}
	s.records, s.stamp = records, stamp
	return nil
}

func (s *Store) readConfig(id string) (imageConfig, error) {
	b, err := os.ReadFile(s.configPath(id))
	if err != nil {
		return imageConfig{}, err
	}
	return parseImageConfig(b)
}

func parseImageConfig(b []byte) (imageConfig, error) {
	var cf v1.ConfigFile
	if err := json.Unmarshal(b, &cf); err != nil {
		return imageConfig{}, fmt.Errorf("image config: %w", err)
	}
	c := cf.Config
	return imageConfig{
		User: c.User, WorkingDir: c.WorkingDir, StopSignal: c.StopSignal,
		Env: c.Env, Entrypoint: c.Entrypoint, Cmd: c.Cmd, Labels: c.Labels,
	}, nil
}

// writeRecordsLocked replaces images.json atomically. Callers hold the lock.
func (s *Store) writeRecordsLocked() error {
	f := recordsFile{Images: make([]*imageRecord, 0, len(s.records))}
	for _, r := range s.records {
		f.Images = append(f.Images, r)
	}
	sort.Slice(f.Images, func(i, j int) bool { return f.Images[i].ID < f.Images[j].ID })
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(s.recordsPath(), b, 0o600); err != nil {
		return fmt.Errorf("write image records: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Stat(s.recordsPath(), &st); err == nil {
		s.stamp = fileStamp{ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Nano()}
	}
	return nil
}

// image builds the public view of a record. Callers hold s.mu.
func (s *Store) image(r *imageRecord) Image {
	cfg := s.configs[r.ID]
	img := Image{
		ID:          r.ID,
		RepoTags:    slices.Clone(r.RepoTags),
		RepoDigests: slices.Clone(r.RepoDigests),
		Size:        r.Size,
		User:        cfg.User,
		Env:         slices.Clone(cfg.Env),
		Entrypoint:  slices.Clone(cfg.Entrypoint),
		Cmd:         slices.Clone(cfg.Cmd),
		WorkingDir:  cfg.WorkingDir,
		StopSignal:  cfg.StopSignal,
		Pinned:      s.pinned[r.ID],
	}
	if img.RepoTags == nil {
		img.RepoTags = []string{}
	}
	if img.RepoDigests == nil {
		img.RepoDigests = []string{}
	}
	if cfg.Labels != nil {
		img.Labels = make(map[string]string, len(cfg.Labels))
		for k, v := range cfg.Labels {
			img.Labels[k] = v
		}
	}
	for _, n := range append(slices.Clone(r.RepoTags), r.RepoDigests...) {
		if s.pinned[n] {
			img.Pinned = true
		}
	}
	for _, d := range r.DiffIDs {
		img.Layers = append(img.Layers, s.layerPath(d))
	}
	return img
}

// resolveLocked finds the record a reference means: an ID, a name (tag or
// digest, short or full), or a unique ID prefix.
func (s *Store) resolveLocked(ref string) (*imageRecord, error) {
	if id, ok := fullID(ref); ok {
		if r, ok := s.records[id]; ok {
			return r, nil
		}
	}
	if named, err := parseRef(ref); err == nil {
		n := named.String()
		for _, r := range s.records {
			if slices.Contains(r.RepoTags, n) || slices.Contains(r.RepoDigests, n) {
				return r, nil
			}
		}
	}
	if prefix, ok := idPrefix(ref); ok {
		var found *imageRecord
		for id, r := range s.records {
			if strings.HasPrefix(id, prefix) {
				if found != nil {
					return nil, fmt.Errorf("image ID prefix %q is ambiguous", ref)
				}
				found = r
			}
		}
		if found != nil {
			return found, nil
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrNotFound, ref)
}

// Get returns the image a reference names: a tag or short name
// ("busybox:1.36"), a digest reference, an ID "sha256:…" or a unique prefix
// of one. It wraps ErrNotFound when there is none.
func (s *Store) Get(ref string) (Image, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		return Image{}, err
	}
	r, err := s.resolveLocked(ref)
	if err != nil {
		return Image{}, err
	}
	return s.image(r), nil
}

// List returns all images, ordered by ID.
func (s *Store) List() []Image {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.refreshLocked(); err != nil {
		s.log.Error("reading image records", "err", err)
	}
	out := make([]Image, 0, len(s.records))
	for _, r := range s.records {
		out = append(out, s.image(r))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Remove removes the image a reference names, with all its names (as
// containerd's RemoveImage does), then its layers and config when nothing
// else uses them. Removing an unknown image is not an error. Layers of
// containers created from the image stay until their rootfs is removed.
func (s *Store) Remove(ref string) error {
	s.lock()
	trash, err := s.removeLocked(ref)
	s.unlock()
	removeAll(trash)
	return err
}

func (s *Store) removeLocked(ref string) ([]string, error) {
	if err := s.refreshLocked(); err != nil {
		return nil, err
	}
	r, err := s.resolveLocked(ref)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	delete(s.records, r.ID)
	if err := s.writeRecordsLocked(); err != nil {
		s.records[r.ID] = r
		return nil, err
	}
	s.log.Info("removed image", "id", r.ID, "tags", r.RepoTags)
	return s.collectGarbageLocked()
}

// commitLocked adds an image or new names of an existing one; a name moves
// from any image that had it. Callers hold the lock.
func (s *Store) commitLocked(rec imageRecord) (Image, error) {
	if err := s.refreshLocked(); err != nil {
		return Image{}, err
	}
	for _, d := range rec.DiffIDs {
		if _, err := os.Stat(s.layerPath(d)); err != nil {
			return Image{}, fmt.Errorf("layer sha256:%s vanished before the image was recorded: %w", d, err)
		}
	}
	if _, ok := s.configs[rec.ID]; !ok {
		cfg, err := s.readConfig(rec.ID)
		if err != nil {
			return Image{}, err
		}
		s.configs[rec.ID] = cfg
	}
	names := append(slices.Clone(rec.RepoTags), rec.RepoDigests...)
	old := map[string]*imageRecord{}
	for id, r := range s.records {
		old[id] = r
		if id == rec.ID {
			continue
		}
		tags := slices.DeleteFunc(slices.Clone(r.RepoTags), func(n string) bool { return slices.Contains(names, n) })
		digests := slices.DeleteFunc(slices.Clone(r.RepoDigests), func(n string) bool { return slices.Contains(names, n) })
		if len(tags) != len(r.RepoTags) || len(digests) != len(r.RepoDigests) {
			c := *r
			c.RepoTags, c.RepoDigests = tags, digests
			s.records[id] = &c
		}
	}
	nr := rec
	nr.RepoTags, nr.RepoDigests = mergeNames(nil, rec.RepoTags), mergeNames(nil, rec.RepoDigests)
	if cur, ok := s.records[rec.ID]; ok {
		nr = *cur
		nr.RepoTags = mergeNames(cur.RepoTags, rec.RepoTags)
		nr.RepoDigests = mergeNames(cur.RepoDigests, rec.RepoDigests)
	}
	s.records[rec.ID] = &nr
	if err := s.writeRecordsLocked(); err != nil {
		s.records = old
		return Image{}, err
	}
	return s.image(&nr), nil
}

func mergeNames(a, b []string) []string {
	out := slices.Clone(a)
	for _, n := range b {
		if !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

// collectGarbageLocked moves every layer and config blob that no image, no
// container rootfs and no live lease references out of the store, into this
// session's scratch directory, and returns those paths for the caller to
// delete once it has dropped the lock. Callers hold the lock.
func (s *Store) collectGarbageLocked() ([]string, error) {
	layers := map[string]bool{}
	blobs := map[string]bool{}
	for id, r := range s.records {
		blobs[strings.TrimPrefix(id, "sha256:")] = true
		for _, d := range r.DiffIDs {
			layers[d] = true
		}
	}
	containers, err := s.rootfsRecords()
	if err != nil {
		return nil, err
	}
	for _, c := range containers {
		for _, d := range c.DiffIDs {
			layers[d] = true
		}
	}
	leased, err := liveLeases(filepath.Join(s.root, "tmp"))
	if err != nil {
		return nil, err
	}
	for _, d := range leased {
		layers[d] = true
		blobs[d] = true
	}

	var trash []string
	move := func(p, what string) {
		dst := filepath.Join(s.session.dir, "trash-"+randomHex(8))
		if err := os.Rename(p, dst); err != nil {
			s.log.Warn("garbage collection", "path", p, "err", err)
			return
		}
		s.log.Debug("garbage-collected", "what", what, "path", p)
		trash = append(trash, dst)
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !layers[e.Name()] {
			move(filepath.Join(s.root, "layers", e.Name()), "layer")
			delete(s.usage, e.Name())
		}
	}
	entries, err = os.ReadDir(filepath.Join(s.root, "blobs", "sha256"))
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		if !blobs[e.Name()] {
			move(filepath.Join(s.root, "blobs", "sha256", e.Name()), "blob")
			delete(s.configs, "sha256:"+e.Name())
		}
	}
	return trash, nil
}

func removeAll(paths []string) {
	for _, p := range paths {
		_ = os.RemoveAll(p)
	}
}

// FsUsage is the disk usage of image content (unpacked layers, configs,
// records) and the directory it lives in, for ImageFsInfo. Container
// writable layers are not included: see WritableLayerUsage.
func (s *Store) FsUsage() (imageBytes, imageInodes uint64, mountpoint string, err error) {
	entries, err := os.ReadDir(filepath.Join(s.root, "layers"))
	if err != nil {
		return 0, 0, "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range entries {
		u, ok := s.usage[e.Name()]
		if !ok {
			b, err := os.ReadFile(filepath.Join(s.root, "layers", e.Name(), "usage.json"))
			if err == nil && json.Unmarshal(b, &u) == nil {
				s.usage[e.Name()] = u
			} else if errors.Is(err, fs.ErrNotExist) {
				continue // collected meanwhile
			} else {
				u, _ = diskUsage(filepath.Join(s.root, "layers", e.Name()))
			}
		}
		imageBytes += u.Bytes
		imageInodes += u.Inodes + 2 // the layer directory and usage.json
	}
	for _, d := range []string{"blobs", "images.json"} {
		u, err := diskUsage(filepath.Join(s.root, d))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, 0, "", err
		}
		imageBytes += u.Bytes
		imageInodes += u.Inodes
	}
	return imageBytes, imageInodes, s.root, nil
}

// diskUsage is du: allocated bytes and inodes of a tree, hard links once.
func diskUsage(root string) (usage, error) {
	var u usage
	seen := map[[2]uint64]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != root {
				return nil // removed while walking
			}
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return err
		}
		k := [2]uint64{st.Dev, st.Ino}
		if seen[k] {
			return nil
		}
		seen[k] = true
		u.Inodes++
		u.Bytes += uint64(st.Blocks) * 512
		return nil
	})
	return u, err
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
