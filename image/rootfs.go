package image

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"peapod/internal/atomicfile"
	"peapod/internal/mountinfo"
)

// rootfsRecord is <root>/containers/<id>/rootfs.json: the layers a
// container's overlay uses, which garbage collection must keep.
type rootfsRecord struct {
	ImageID string   `json:"imageID,omitempty"`
	DiffIDs []string `json:"diffIDs"` // lowest first
}

var containerIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func (s *Store) containerDir(id string) (string, error) {
	if !containerIDRe.MatchString(id) {
		return "", fmt.Errorf("invalid container id %q", id)
	}
	return filepath.Join(s.root, "containers", id), nil
}

// MountRootfs mounts the root filesystem of a container at
// <Root>/containers/<id>/merged: an overlay of img's layers with the
// container's own upper and work directories (kept across unmounts until
// RemoveRootfs). readOnly mounts it read-only. Mounting an already mounted
// rootfs returns it as it is.
func (s *Store) MountRootfs(containerID string, img Image, readOnly bool) (rootfs string, err error) {
	dir, err := s.containerDir(containerID)
	if err != nil {
		return "", err
	}
	merged := filepath.Join(dir, "merged")
	diffIDs, err := s.diffIDsOf(img)
	if err != nil {
		return "", fmt.Errorf("mount rootfs of %s: %w", containerID, err)
	}

	s.lock()
	rec, err := s.prepareRootfsLocked(dir, img.ID, diffIDs)
	s.unlock()
	if err != nil {
		return "", fmt.Errorf("mount rootfs of %s: %w", containerID, err)
	}
	if mounted, err := isMountPoint(merged); err != nil {
		return "", err
	} else if mounted {
		return merged, nil
	}
	if err := s.mountOverlay(dir, rec.DiffIDs, readOnly); err != nil {
		return "", fmt.Errorf("mount rootfs of %s: %w", containerID, err)
	}
	return merged, nil
}

// diffIDsOf maps an Image's layer directories back to the store's layers.
func (s *Store) diffIDsOf(img Image) ([]string, error) {
	out := make([]string, 0, len(img.Layers))
	for _, l := range img.Layers {
		hex := filepath.Base(filepath.Dir(l))
		if l != s.layerPath(hex) {
			return nil, fmt.Errorf("layer %s is not in the image store %s", l, s.root)
		}
		out = append(out, hex)
	}
	return out, nil
}

// prepareRootfsLocked records the container's layers (so GC keeps them)
// and creates its directories. A record from an earlier call wins: the
// layers of an existing upper directory must not change under it.
func (s *Store) prepareRootfsLocked(dir, imageID string, diffIDs []string) (rootfsRecord, error) {
	recPath := filepath.Join(dir, "rootfs.json")
	var rec rootfsRecord
	if b, err := os.ReadFile(recPath); err == nil {
		if err := json.Unmarshal(b, &rec); err != nil {
			return rec, fmt.Errorf("%s: %w", recPath, err)
		}
	} else if errors.Is(err, fs.ErrNotExist) {
		// A new rootfs needs its image; an existing one keeps its layers
		// even when the image has been removed since.
		if err := s.refreshLocked(); err != nil {
			return rec, err
		}
		if _, ok := s.records[imageID]; !ok {
			return rec, fmt.Errorf("%w: %s (removed?)", ErrNotFound, imageID)
		}
		rec = rootfsRecord{ImageID: imageID, DiffIDs: diffIDs}
	} else {
		return rec, err
	}
	for _, d := range rec.DiffIDs {
		if !s.layerPresent(d) {
			return rec, fmt.Errorf("layer sha256:%s of image %s is not in the store (image removed?)", d, imageID)
		}
	}
	// The overlay's root directory takes the upper dir's mode: it must be
	// 0755 or users other than root cannot reach anything in the container.
	for d, mode := range map[string]os.FileMode{"upper": 0o755, "work": 0o700, "merged": 0o755} {
		if err := os.MkdirAll(filepath.Join(dir, d), mode); err != nil {
			return rec, err
		}
		if err := os.Chmod(filepath.Join(dir, d), mode); err != nil {
			return rec, err
		}
	}
	if len(rec.DiffIDs) == 0 {
		// overlayfs needs a lower layer; an image without layers gets an empty one.
		if err := os.MkdirAll(filepath.Join(dir, "empty"), 0o755); err != nil {
			return rec, err
		}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return rec, err
	}
	// Atomic, not synced: it is written on the way to a container's start
	// (CreateContainer waits for it). A power loss ends the container; a
	// rootfs whose record it took is still removed whole (RemoveRootfs),
	// and its layers are then only kept by their image.
	return rec, atomicfile.Replace(recPath, b, 0o600)
}

// rootfsRecords reads every container's record. Callers hold the lock.
func (s *Store) rootfsRecords() (map[string]rootfsRecord, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, "containers"))
	if err != nil {
		return nil, err
	}
	out := map[string]rootfsRecord{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.root, "containers", e.Name(), "rootfs.json"))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var rec rootfsRecord
		if err := json.Unmarshal(b, &rec); err != nil {
			return nil, fmt.Errorf("container %s rootfs record: %w", e.Name(), err)
		}
		out[e.Name()] = rec
	}
	return out, nil
}

// mountOverlay mounts dir/merged. A layer that appears twice is used once,
// at its topmost position: overlayfs refuses a directory twice, and the
// upper copy decides every path the layer touches anyway.
func (s *Store) mountOverlay(dir string, diffIDs []string, readOnly bool) error {
	var lowers []string // topmost first, as lowerdir wants
	seen := map[string]bool{}
	for i := len(diffIDs) - 1; i >= 0; i-- {
		if !seen[diffIDs[i]] {
			seen[diffIDs[i]] = true
			lowers = append(lowers, s.layerPath(diffIDs[i]))
		}
	}
	if len(lowers) == 0 {
		lowers = []string{filepath.Join(dir, "empty")}
	}
	upper, work, merged := filepath.Join(dir, "upper"), filepath.Join(dir, "work"), filepath.Join(dir, "merged")
	extra := s.overlayOptions()
	opts := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work
	if len(extra) > 0 {
		opts += "," + strings.Join(extra, ",")
	}
	var flags uintptr
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	// mount(2) takes at most a page of options; deep images go through
	// the new mount API, one lower layer per fsconfig call (Linux 6.8+).
	var err error
	if len(opts) < os.Getpagesize()-1 {
		if err = unix.Mount("overlay", merged, "overlay", flags, opts); err != nil {
			err = fmt.Errorf("mount overlay on %s: %w", merged, err)
		}
	} else {
		err = mountOverlayFsconfig(merged, lowers, upper, work, extra, readOnly)
	}
	if err != nil && s.layout.UserNamespace && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EINVAL)) {
		err = fmt.Errorf("%w (overlayfs in a user namespace needs Linux 5.11 or newer, a mount namespace "+
			"owned by that user namespace, and a filesystem with user xattrs under %s)", err, s.root)
	}
	return err
}

// overlayOptions are the overlay mount options beyond the directories. In
// a user namespace the layers mark opaque directories with user.overlay.*
// xattrs, which userxattr makes overlayfs read (and write in the upper
// directory); the features that need trusted xattrs, and so real root, are
// off: index (refused with userxattr), metacopy and redirect_dir (userxattr
// turns them off by itself; metacopy is said explicitly).
func (s *Store) overlayOptions() []string {
	var opts []string
	if s.layout.UserNamespace {
		opts = append(opts, "userxattr")
	}
	if s.overlayIndexOff {
		opts = append(opts, "index=off")
	}
	if s.layout.UserNamespace && s.metacopyParam {
		opts = append(opts, "metacopy=off")
	}
	return opts
}

func mountOverlayFsconfig(merged string, lowers []string, upper, work string, extra []string, readOnly bool) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("fsopen overlay: %w", err)
	}
	defer unix.Close(fsfd)
	set := func(k, v string) error {
		if err := unix.FsconfigSetString(fsfd, k, v); err != nil {
			return fmt.Errorf("overlay option %s=%s: %w", k, v, err)
		}
		return nil
	}
	if err := set("source", "overlay"); err != nil {
		return err
	}
	for _, l := range lowers {
		if err := set("lowerdir+", l); err != nil {
			return fmt.Errorf("%w (%d layers need Linux 6.8 or newer)", err, len(lowers))
		}
	}
	if err := set("upperdir", upper); err != nil {
		return err
	}
	if err := set("workdir", work); err != nil {
		return err
	}
	for _, e := range extra {
		k, v, ok := strings.Cut(e, "=")
		if !ok { // a flag such as userxattr
			if err := unix.FsconfigSetFlag(fsfd, k); err != nil {
				return fmt.Errorf("overlay option %s: %w", k, err)
			}
			continue
		}
		if err := set(k, v); err != nil {
			return err
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	var attrs int
	if readOnly {
		attrs |= unix.MOUNT_ATTR_RDONLY
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attrs)
	if err != nil {
		return fmt.Errorf("fsmount overlay: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, merged, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move overlay mount to %s: %w", merged, err)
	}
	return nil
}

// UnmountRootfs unmounts a container's rootfs, keeping its upper
// directory. Unmounting what is not mounted (or not there) is a no-op.
func (s *Store) UnmountRootfs(containerID string) error {
	dir, err := s.containerDir(containerID)
	if err != nil {
		return err
	}
	return unmountAll(filepath.Join(dir, "merged"))
}

// unmountAll removes every mount stacked on p. A busy mount is retried for
// a while (a process of the container may still be exiting), then detached.
func unmountAll(p string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		mounted, err := isMountPoint(p)
		if err != nil || !mounted {
			return err
		}
		err = unix.Unmount(p, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // the kernel says nothing is mounted there
		case errors.Is(err, unix.EBUSY) && time.Now().Before(deadline):
			time.Sleep(50 * time.Millisecond)
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(p, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return fmt.Errorf("unmount %s: %w", p, err)
			}
		default:
			return fmt.Errorf("unmount %s: %w", p, err)
		}
	}
}

// RootfsIDs lists the containers that have a rootfs in the store, mounted
// or not, for the caller's sweep of those it no longer knows.
func (s *Store) RootfsIDs() ([]string, error) {
	entries, err := os.ReadDir(filepath.Join(s.root, "containers"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && containerIDRe.MatchString(e.Name()) {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// RemoveRootfs unmounts a container's rootfs and deletes its upper and
// work directories; the layers it used become garbage if no image or other
// container uses them. Removing what is not there is a no-op.
func (s *Store) RemoveRootfs(containerID string) error {
	dir, err := s.containerDir(containerID)
	if err != nil {
		return err
	}
	if err := unmountAll(filepath.Join(dir, "merged")); err != nil {
		return fmt.Errorf("remove rootfs of %s: %w", containerID, err)
	}
	s.lock()
	trash, err := s.removeRootfsLocked(dir)
	s.unlock()
	removeAll(trash)
	if err != nil {
		return fmt.Errorf("remove rootfs of %s: %w", containerID, err)
	}
	return nil
}

func (s *Store) removeRootfsLocked(dir string) ([]string, error) {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	// One rename takes the record and the directories away together.
	dst := s.session.scratch("container")
	if err := os.Rename(dir, dst); err != nil {
		return nil, err
	}
	if err := s.refreshLocked(); err != nil {
		return []string{dst}, err
	}
	trash, err := s.collectGarbageLocked()
	return append(trash, dst), err
}

// WritableLayerUsage is the disk usage of a container's upper directory.
func (s *Store) WritableLayerUsage(containerID string) (bytes, inodes uint64, err error) {
	dir, err := s.containerDir(containerID)
	if err != nil {
		return 0, 0, err
	}
	u, err := diskUsage(filepath.Join(dir, "upper"))
	if err != nil {
		return 0, 0, fmt.Errorf("writable layer of %s: %w", containerID, err)
	}
	return u.Bytes, u.Inodes, nil
}

// isMountPoint tells whether something is mounted on p. statx says
// whether p is the root of a mount (Linux 5.8+): one syscall, where
// mountinfo, which grows with every pod on the host, must be read whole.
// Device numbers cannot tell a bind mount of the same filesystem.
func isMountPoint(p string) (bool, error) {
	var stx unix.Statx_t
	err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, 0, &stx)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err == nil && stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 {
		return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
	}
	return isMountPointFromMountinfo(p)
}

// isMountPointFromMountinfo is isMountPoint for kernels whose statx lacks
// the mount-root attribute.
func isMountPointFromMountinfo(p string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && mountinfo.Unescape(fields[4]) == p {
			return true, nil
		}
	}
	return false, sc.Err()
}
