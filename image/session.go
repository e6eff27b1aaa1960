package image

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"peapod/internal/atomicfile"
)

// A session is the scratch directory of one open Store: half-unpacked
// layers, blobs being written, trash waiting for deletion, and leases. The
// directory is flock'd while the Store is open, so any process can tell a
// live session from the remains of a crashed one.
type session struct {
	dir  string
	f    *os.File
	next atomic.Uint64
}

// newSession creates a session under tmp and removes dead ones. Callers hold
// the store lock, so no other process sees a session between its mkdir and
// its flock.
func newSession(tmp string) (*session, error) {
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return nil, err
	}
	for _, e := range entries {
		p := filepath.Join(tmp, e.Name())
		if live, err := sessionLive(p); err == nil && !live {
			if err := os.RemoveAll(p); err != nil {
				return nil, fmt.Errorf("remove scratch of a dead process %s: %w", p, err)
			}
		}
	}
	dir := filepath.Join(tmp, randomHex(8))
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock scratch directory: %w", err)
	}
	return &session{dir: dir, f: f}, nil
}

// sessionLive tells whether a process holds the session directory at p.
func sessionLive(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.IsDir() {
		return false, err // a stray file: dead
	}
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return false, nil
}

func (s *session) close() {
	_ = os.RemoveAll(s.dir)
	s.f.Close()
}

// scratch is a fresh path in the session for something being built.
func (s *session) scratch(what string) string {
	return filepath.Join(s.dir, fmt.Sprintf("%s-%d-%s", what, s.next.Add(1), randomHex(4)))
}

// A lease keeps layers and config blobs (by hex digest) from garbage
// collection while a pull or import that needs them has not recorded its
// image yet. It is a file in the session, so GC in any process honours it.
type lease struct {
	s    *Store
	path string
	hex  []string
}

// newLease records a lease on the given digests (hex, no algorithm).
func (s *Store) newLease(hex ...string) (*lease, error) {
	l := &lease{s: s, path: filepath.Join(s.session.dir, fmt.Sprintf("lease-%d", s.session.next.Add(1)))}
	return l, l.add(hex...)
}

// add extends the lease. It takes the store lock, so GC sees the lease
// either entirely before or entirely after it runs.
func (l *lease) add(hex ...string) error {
	l.s.lock()
	defer l.s.unlock()
	l.hex = append(l.hex, hex...)
	return atomicfile.WriteFile(l.path, []byte(strings.Join(l.hex, "\n")+"\n"), 0o600)
}

func (l *lease) release() { _ = os.Remove(l.path) }

// liveLeases lists the digests leased by live sessions under tmp.
func liveLeases(tmp string) ([]string, error) {
	sessions, err := os.ReadDir(tmp)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, se := range sessions {
		dir := filepath.Join(tmp, se.Name())
		if live, err := sessionLive(dir); err != nil || !live {
			continue
		}
		files, err := filepath.Glob(filepath.Join(dir, "lease-*"))
		if err != nil {
			return nil, err
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				continue // released meanwhile
			}
			out = append(out, strings.Fields(string(b))...)
		}
	}
	return out, nil
}
