package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// layerSource says what a layer blob must hash to.
type layerSource struct {
	diffID v1.Hash // digest of the uncompressed tar: names the layer in the store
	digest v1.Hash // digest of the blob as stored; zero: not checked (docker-save archives)
	size   int64   // size of the blob as stored; 0: not checked
}

const (
	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// unpackLayer extracts a layer blob (gzip, zstd or plain tar) read from r
// into the new directory dst, converting OCI whiteouts to overlayfs ones
// of the given layout, and fails unless the blob and the tar hash to what
// src says. On failure dst is left for the caller to remove.
//
// In a user namespace (lay.UserNamespace) two things real root can do are
// impossible, and neither fails the layer: an owner outside the
// namespace's id map (EINVAL from chown) is replaced by the namespace's
// root, and a device node other than a whiteout (EPERM from mknod) is left
// out. Each is logged once per layer with a count, like podman's
// ignore_chown_errors.
func unpackLayer(ctx context.Context, r io.Reader, dst string, src layerSource, lay storeLayout, log *slog.Logger) (usage, error) {
	if err := os.Mkdir(dst, 0o755); err != nil {
		return usage{}, err
	}
	blob := &hashingReader{r: ctxReader{ctx, r}, h: sha256.New()}
	br := bufio.NewReaderSize(blob, 1<<20)
	dr, err := decompress(br)
	if err != nil {
		return usage{}, fmt.Errorf("layer %s: %w", src.diffID, err)
	}
	defer dr.Close()
	tarStream := &hashingReader{r: dr, h: sha256.New()}

	u, err := newUnpacker(dst, lay, log)
	if err != nil {
		return usage{}, err
	}
	defer u.close()
	if err := u.extract(tar.NewReader(tarStream)); err != nil {
		return usage{}, fmt.Errorf("layer %s: %w", src.diffID, err)
	}
	u.report(src.diffID.String())
	// Hash what follows the tar's end marker too: the digests cover it.
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return usage{}, fmt.Errorf("layer %s: %w", src.diffID, err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return usage{}, fmt.Errorf("layer %s: %w", src.diffID, err)
	}
	if src.size > 0 && blob.n != src.size {
		return usage{}, fmt.Errorf("layer %s: blob is %d bytes, the manifest says %d: corrupt or tampered", src.diffID, blob.n, src.size)
	}
	if got := digestOf(blob.h); src.digest != (v1.Hash{}) && got != src.digest.String() {
		return usage{}, fmt.Errorf("layer blob %s: content has digest %s: corrupt or tampered", src.digest, got)
	}
	if got := digestOf(tarStream.h); got != src.diffID.String() {
		return usage{}, fmt.Errorf("layer %s: uncompressed content has digest %s: corrupt or tampered", src.diffID, got)
	}
	return diskUsage(dst)
}

func digestOf(h hash.Hash) string { return fmt.Sprintf("sha256:%x", h.Sum(nil)) }

// decompress recognises the compression by its magic number.
func decompress(br *bufio.Reader) (io.ReadCloser, error) {
	magic, _ := br.Peek(4)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		d, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		return d.IOReadCloser(), nil
	case bytes.HasPrefix(magic, []byte("BZh")), bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X'}):
		return nil, errors.New("bzip2 and xz layers are not supported")
	}
	return io.NopCloser(br), nil
}

type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (r *hashingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	return n, err
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

// unpacker writes tar entries under a root directory. Every path is
// resolved with openat2(RESOLVE_IN_ROOT), so neither ".." nor a symlink
// unpacked earlier (even an absolute one) can lead a write outside the
// root: the layer is treated as the chroot it will become.
type unpacker struct {
	root     string
	rootFd   int
	layout   storeLayout
	log      *slog.Logger
	dirTimes []dirTime
	buf      []byte

	// In a user namespace: entries whose owner did not map (now owned by
	// the namespace's root) and device nodes left out, with the first of
	// each for the log.
	unmapped, devices          int
	firstUnmapped, firstDevice string
}

type dirTime struct {
	rel          string
	atime, mtime time.Time
}

func newUnpacker(root string, lay storeLayout, log *slog.Logger) (*unpacker, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: root, Err: err}
	}
	return &unpacker{root: root, rootFd: fd, layout: lay, log: log, buf: make([]byte, 128<<10)}, nil
}

// report logs, once per layer, what a user namespace made the unpacker
// leave out.
func (u *unpacker) report(layer string) {
	if u.unmapped > 0 {
		u.log.Warn("layer has owners this user namespace does not map: those files belong to its root instead",
			"layer", layer, "files", u.unmapped, "first", u.firstUnmapped, "uidMap", u.layout.UIDMap, "gidMap", u.layout.GIDMap)
	}
	if u.devices > 0 {
		u.log.Warn("layer has device nodes, which cannot be created in a user namespace: left out",
			"layer", layer, "devices", u.devices, "first", u.firstDevice)
	}
}

func (u *unpacker) close() { unix.Close(u.rootFd) }

func (u *unpacker) extract(tr *tar.Reader) error {
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read tar: %w", err)
		}
		if err := u.entry(hdr, tr); err != nil {
			return err
		}
	}
	// Directory times last: creating entries inside changed them.
	for i := len(u.dirTimes) - 1; i >= 0; i-- {
		if err := u.setDirTime(u.dirTimes[i]); err != nil {
			return err
		}
	}
	return nil
}

// cleanEntryName makes a tar entry name relative to the layer root ("" is
// the root) and rejects any ".." component.
func cleanEntryName(name string) (string, error) {
	var parts []string
	for _, p := range strings.Split(name, "/") {
		switch p {
		case "", ".":
		case "..":
			return "", fmt.Errorf("tar entry %q: path traversal (\"..\") is not allowed in a layer", name)
		default:
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "/"), nil
}

func splitRel(rel string) (dir, base string) {
	dir, base = path.Split(rel)
	return strings.TrimSuffix(dir, "/"), base
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink:
		return nil
	}
	rel, err := cleanEntryName(hdr.Name)
	if err != nil {
		return err
	}
	if rel == "" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("tar entry %q: the layer root must be a directory", hdr.Name)
		}
		return u.rootMeta(hdr)
	}
	parentRel, base := splitRel(rel)

	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(hdr, parentRel, base)
	}

	dirfd, err := u.openDir(parentRel, true)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	defer unix.Close(dirfd)

	// A later entry for a path replaces an earlier one; directories merge.
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if !(isDir && hdr.Typeflag == tar.TypeDir) {
			if err := removeAt(dirfd, base); err != nil {
				return fmt.Errorf("tar entry %q: replace: %w", hdr.Name, err)
			}
		}
	}

	perm := uint32(hdr.Mode) & 0o7777
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := unix.Mkdirat(dirfd, base, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("tar entry %q: mkdir: %w", hdr.Name, err)
		}
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse, tar.TypeCont:
		if err := u.writeFile(dirfd, base, r); err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, dirfd, base); err != nil {
			return fmt.Errorf("tar entry %q: symlink: %w", hdr.Name, err)
		}
	case tar.TypeLink:
		return u.hardlink(hdr, dirfd, base)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[hdr.Typeflag]
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		if err := unix.Mknodat(dirfd, base, mode|perm, dev); err != nil {
			if u.layout.UserNamespace && hdr.Typeflag != tar.TypeFifo && errors.Is(err, unix.EPERM) {
				u.log.Debug("skipping device node in a user namespace", "name", hdr.Name, "major", hdr.Devmajor, "minor", hdr.Devminor)
				if u.devices++; u.devices == 1 {
					u.firstDevice = hdr.Name
				}
				return nil
			}
			return fmt.Errorf("tar entry %q: mknod: %w", hdr.Name, err)
		}
	default:
		u.log.Debug("skipping tar entry of unsupported type", "name", hdr.Name, "type", hdr.Typeflag)
		return nil
	}
	return u.setMeta(dirfd, base, rel, hdr)
}

func (u *unpacker) writeFile(dirfd int, base string, r io.Reader) error {
	fd, err := unix.Openat(dirfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("create: %w", err)
	}
	f := os.NewFile(uintptr(fd), base)
	_, err = io.CopyBuffer(struct{ io.Writer }{f}, r, u.buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// hardlink links to a file unpacked earlier in this layer. Docker and
// BuildKit always put both names of a hard link in the same layer.
func (u *unpacker) hardlink(hdr *tar.Header, dirfd int, base string) error {
	target, err := cleanEntryName(hdr.Linkname)
	if err != nil {
		return fmt.Errorf("tar entry %q: link target: %w", hdr.Name, err)
	}
	if target == "" {
		return fmt.Errorf("tar entry %q: hard link to the layer root", hdr.Name)
	}
	tdirRel, tbase := splitRel(target)
	tdir, err := u.openDir(tdirRel, false)
	if err != nil {
		return fmt.Errorf("tar entry %q: hard link target %q is not in the layer: %w", hdr.Name, hdr.Linkname, err)
	}
	defer unix.Close(tdir)
	if err := unix.Linkat(tdir, tbase, dirfd, base, 0); err != nil {
		return fmt.Errorf("tar entry %q: hard link to %q: %w", hdr.Name, hdr.Linkname, err)
	}
	return nil
}

// whiteout turns ".wh.NAME" into a 0/0 character device NAME and
// ".wh..wh..opq" into trusted.overlay.opaque=y (user.overlay.opaque=y in a
// user namespace) on its directory: the forms overlayfs reads.
func (u *unpacker) whiteout(hdr *tar.Header, parentRel, base string) error {
	if base == whiteoutOpaque {
		fd, err := u.openDir(parentRel, true)
		if err != nil {
			return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
		}
		defer unix.Close(fd)
		if err := unix.Fsetxattr(fd, u.layout.opaqueXattr(), []byte("y"), 0); err != nil {
			return fmt.Errorf("tar entry %q: mark directory opaque: %w", hdr.Name, err)
		}
		return nil
	}
	if strings.HasPrefix(base, whiteoutMeta) {
		return nil // aufs bookkeeping (.wh..wh.plnk and the like)
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("tar entry %q: invalid whiteout", hdr.Name)
	}
	dirfd, err := u.openDir(parentRel, true)
	if err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	defer unix.Close(dirfd)
	if err := removeAt(dirfd, name); err != nil {
		return fmt.Errorf("tar entry %q: %w", hdr.Name, err)
	}
	if err := unix.Mknodat(dirfd, name, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("tar entry %q: whiteout device: %w", hdr.Name, err)
	}
	return u.chown(hdr, func(uid, gid int) error {
		return unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// chown gives an entry the owner its tar header names, through set (an
// lchown of the entry). In a user namespace an id outside the id map
// cannot be set (EINVAL): that id becomes the namespace's root (0) and the
// entry is counted for the layer's report; a mapped uid or gid beside it
// is still set.
func (u *unpacker) chown(hdr *tar.Header, set func(uid, gid int) error) error {
	err := set(hdr.Uid, hdr.Gid)
	if err == nil || !u.layout.UserNamespace || !errors.Is(err, unix.EINVAL) {
		if err != nil {
			return fmt.Errorf("tar entry %q: chown: %w", hdr.Name, err)
		}
		return nil
	}
	uid, gid := hdr.Uid, hdr.Gid
	if err := set(uid, -1); errors.Is(err, unix.EINVAL) {
		uid, err = 0, set(0, -1)
		if err != nil {
			return fmt.Errorf("tar entry %q: chown to the namespace's root: %w", hdr.Name, err)
		}
	} else if err != nil {
		return fmt.Errorf("tar entry %q: chown: %w", hdr.Name, err)
	}
	if err := set(-1, gid); errors.Is(err, unix.EINVAL) {
		gid, err = 0, set(-1, 0)
		if err != nil {
			return fmt.Errorf("tar entry %q: chgrp to the namespace's root: %w", hdr.Name, err)
		}
	} else if err != nil {
		return fmt.Errorf("tar entry %q: chgrp: %w", hdr.Name, err)
	}
	if u.unmapped++; u.unmapped == 1 {
		u.firstUnmapped = fmt.Sprintf("%s (%d:%d, now %d:%d)", hdr.Name, hdr.Uid, hdr.Gid, uid, gid)
	}
	return nil
}

// openDir opens the directory rel (relative to the layer root, resolved
// inside it), creating missing components (0755, like Docker) if asked.
func (u *unpacker) openDir(rel string, create bool) (int, error) {
	if rel == "" || rel == "." {
		rel = "."
	}
	how := &unix.OpenHow{
		Flags:   unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	}
	fd, err := openat2(u.rootFd, rel, how)
	if err == nil || !create || !errors.Is(err, unix.ENOENT) {
		if errors.Is(err, unix.ENOTDIR) {
			return -1, fmt.Errorf("%q is not a directory", rel)
		}
		return fd, err
	}
	parentRel, base := splitRel(rel)
	parent, err := u.openDir(parentRel, true)
	if err != nil {
		return -1, err
	}
	err = unix.Mkdirat(parent, base, 0o755)
	unix.Close(parent)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("mkdir %q: %w", rel, err)
	}
	return openat2(u.rootFd, rel, how)
}

func openat2(dirfd int, p string, how *unix.OpenHow) (int, error) {
	for {
		fd, err := unix.Openat2(dirfd, p, how)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue // a rename elsewhere raced the lookup
		}
		if err != nil {
			return -1, &os.PathError{Op: "openat2", Path: p, Err: err}
		}
		return fd, nil
	}
}

// setMeta applies owner, mode, xattrs and times. Order matters: chown
// clears set-id bits and security.capability, so it goes first.
func (u *unpacker) setMeta(dirfd int, base, rel string, hdr *tar.Header) error {
	if hdr.Typeflag == tar.TypeLink {
		return nil // the inode already has its metadata
	}
	if err := u.chown(hdr, func(uid, gid int) error {
		return unix.Fchownat(dirfd, base, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
	}); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := unix.Fchmodat(dirfd, base, uint32(hdr.Mode)&0o7777, 0); err != nil {
			return fmt.Errorf("tar entry %q: chmod: %w", hdr.Name, err)
		}
	}
	if err := u.setXattrs(fmt.Sprintf("/proc/self/fd/%d/%s", dirfd, base), hdr); err != nil {
		return err
	}
	if hdr.Typeflag == tar.TypeDir {
		u.dirTimes = append(u.dirTimes, dirTime{rel: rel, atime: hdr.AccessTime, mtime: hdr.ModTime})
		return nil
	}
	if err := unix.UtimesNanoAt(dirfd, base, timespecs(hdr.AccessTime, hdr.ModTime), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("tar entry %q: set times: %w", hdr.Name, err)
	}
	return nil
}

func (u *unpacker) rootMeta(hdr *tar.Header) error {
	if err := u.chown(hdr, func(uid, gid int) error { return unix.Fchown(u.rootFd, uid, gid) }); err != nil {
		return fmt.Errorf("layer root: %w", err)
	}
	if err := unix.Fchmod(u.rootFd, uint32(hdr.Mode)&0o7777); err != nil {
		return fmt.Errorf("layer root: chmod: %w", err)
	}
	if err := u.setXattrs(u.root, hdr); err != nil {
		return err
	}
	u.dirTimes = append(u.dirTimes, dirTime{rel: "", atime: hdr.AccessTime, mtime: hdr.ModTime})
	return nil
}

// setXattrs sets the xattrs of a tar entry (PAX SCHILY.xattr.*) on p,
// without following a final symlink. Overlay's own xattrs are refused: a
// layer must not steer the overlay mount (redirects, opaque marks) itself.
func (u *unpacker) setXattrs(p string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		if strings.HasPrefix(attr, "trusted.overlay.") || strings.HasPrefix(attr, "user.overlay.") {
			u.log.Warn("ignoring overlay xattr in layer", "entry", hdr.Name, "xattr", attr)
			continue
		}
		err := unix.Lsetxattr(p, attr, []byte(v), 0)
		if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EPERM) {
			// user.* on symlinks, or a namespace this filesystem lacks.
			u.log.Debug("ignoring xattr the filesystem refuses", "entry", hdr.Name, "xattr", attr, "err", err)
			continue
		}
		if err != nil {
			return fmt.Errorf("tar entry %q: set xattr %s: %w", hdr.Name, attr, err)
		}
	}
	return nil
}

func (u *unpacker) setDirTime(d dirTime) error {
	ts := timespecs(d.atime, d.mtime)
	if d.rel == "" {
		return unix.UtimesNanoAt(unix.AT_FDCWD, u.root, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	parentRel, base := splitRel(d.rel)
	fd, err := u.openDir(parentRel, false)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil // removed by a later entry
		}
		return err
	}
	defer unix.Close(fd)
	err = unix.UtimesNanoAt(fd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("set times of %q: %w", d.rel, err)
	}
	return nil
}

func timespecs(atime, mtime time.Time) []unix.Timespec {
	if mtime.IsZero() {
		mtime = time.Unix(0, 0)
	}
	if atime.IsZero() {
		atime = mtime
	}
	return []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
}

// removeAt removes name under dirfd, recursively if it is a directory,
// never following symlinks.
func removeAt(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	d := os.NewFile(uintptr(fd), name)
	names, err := d.Readdirnames(-1)
	if err == nil {
		for _, n := range names {
			if err = removeAt(fd, n); err != nil {
				break
			}
		}
	}
	d.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR); err != nil {
		return fmt.Errorf("remove %q: %w", name, err)
	}
	return nil
}
