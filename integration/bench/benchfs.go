package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Both runtimes keep their files (image store, writable layers, records,
// state) on a file system the bench makes for the run: a fresh ext4, with
// the journal mkfs gives it, on a loop device backed by a sparse file. The
// host's own root file system would do too, but on this kind of VM it is
// an ext4 without a journal, and there allocating an inode skips, with a
// buffer lookup each, every free inode deleted in the last 5 seconds, or
// in the last 5 minutes while its inode table block is dirty
// (fs/ext4/ialloc.c, recently_deleted; a journal turns the check off).
// What any earlier command deleted then slows every file either runtime
// creates: a run right after `make test` or another bench measured up to
// twice the start times of a run on a quiet disk. A fresh file system
// makes the figures depend on the runtimes alone. -host-fs measures on the
// host's file system instead.

// benchFS is the file system of one run.
type benchFS struct {
	dir   string // where it is mounted; the run's directory is made in it
	image string // its backing file
	desc  string // for the report
}

// makeBenchFS creates and mounts the run's file system under the host's
// temporary directory. Its undo is registered on cl before anything else
// happens, so a failure half-way leaves nothing behind.
func makeBenchFS(cl *cleanups) (*benchFS, error) {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		return nil, fmt.Errorf("mkfs.ext4 not found (apt-get install e2fsprogs), or run with -host-fs: %w", err)
	}
	top, err := os.MkdirTemp("", "peapod-benchfs-")
	if err != nil {
		return nil, err
	}
	fs := &benchFS{dir: filepath.Join(top, "mnt"), image: filepath.Join(top, "ext4.img")}
	// The loop device goes with the mount (mount -o loop sets autoclear).
	cl.add("remove the bench's file system "+top, func() error { return removeUnmounted(top) })
	if err := os.Mkdir(fs.dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.Create(fs.image)
	if err != nil {
		return nil, err
	}
	// Sparse: blocks are taken only as the runtimes write. 16 GiB is far
	// more than a run writes (pulls of a 20 MiB image, a hundred pods).
	const size = 16 << 30
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-L", "peapod-bench", fs.image).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mkfs.ext4 %s: %v: %s", fs.image, err, strings.TrimSpace(string(out)))
	}
	if out, err := exec.Command("mount", "-o", "loop", fs.image, fs.dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mount -o loop %s: %v: %s (run with -host-fs to measure on the host's file system)", fs.image, err, strings.TrimSpace(string(out)))
	}
	fs.desc = fmt.Sprintf("a fresh ext4 with journal on a loop device (%s) for both runtimes' roots and state; -host-fs: the host's", fs.image)
	return fs, nil
}

// leaks finds what a run's file system could leave: what baseLeaks finds
// for its directory, and the loop device bound to its image.
func (fs *benchFS) leaks() []string {
	left := baseLeaks(filepath.Dir(fs.dir))()
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), fs.image) {
			left = append(left, "loop device "+filepath.Base(filepath.Dir(filepath.Dir(f)))+" of "+fs.image)
		}
	}
	return left
}

// hostFSDesc names the file system holding dir, for the report.
func hostFSDesc(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "the host's (" + dir + ")"
	}
	kind := fmt.Sprintf("type %#x", st.Type)
	switch st.Type {
	case unix.EXT4_SUPER_MAGIC:
		kind = "ext4"
		if !hasJournal(dir) {
			kind = "ext4 without a journal (inode allocation slows after deletions: see benchfs.go)"
		}
	case unix.XFS_SUPER_MAGIC:
		kind = "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		kind = "btrfs"
	case unix.TMPFS_MAGIC:
		kind = "tmpfs"
	}
	return "the host's (" + dir + "), " + kind
}

// hasJournal tells whether the ext4 holding dir has a journal: jbd2 lists
// a directory for each journal it runs, named after the device.
func hasJournal(dir string) bool {
	var st unix.Stat_t
	if unix.Stat(dir, &st) != nil {
		return true // unknown: say nothing
	}
	ents, err := os.ReadDir("/proc/fs/jbd2")
	if err != nil {
		return false
	}
	dev := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Dev), unix.Minor(st.Dev))
	name, err := os.Readlink(dev)
	if err != nil {
		return true
	}
	for _, e := range ents {
		// Entries are "<device>-<journal inode>", e.g. "vda-8".
		if strings.HasPrefix(e.Name(), filepath.Base(name)+"-") {
			return true
		}
	}
	return false
}
