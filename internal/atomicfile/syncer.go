package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
)

// Syncer makes files and directories durable in the background: Later
// queues them and returns at once, and one goroutine syncs whatever has
// been queued, a batch at a time, files before directories. It is for a
// record whose caller needs it atomic at once (a restarted daemon reads
// the page cache) but durable only soon: on a journaled file system the
// first sync of a batch commits the others' changes too, and the caller
// does not wait for the disk.
//
// A path removed before its turn is skipped: its removal is what counts.
type Syncer struct {
	onErr func(path string, err error)

	mu      sync.Mutex
	cond    *sync.Cond
	files   map[string]struct{}
	dirs    map[string]struct{}
	queued  uint64 // batches asked for: Later calls so far
	synced  uint64 // every Later up to this one is synced
	running bool
	closed  bool
}

// NewSyncer returns a Syncer; onErr, if not nil, hears of each failed
// sync (EIO: the write may be lost).
func NewSyncer(onErr func(path string, err error)) *Syncer {
	s := &Syncer{onErr: onErr, files: map[string]struct{}{}, dirs: map[string]struct{}{}}
	s.cond = sync.NewCond(&s.mu)
	return s
}

// Later queues file (may be "") and dirs to be synced. After Close it
// syncs them before returning.
func (s *Syncer) Later(file string, dirs ...string) {
	s.mu.Lock()
	if file != "" {
		s.files[file] = struct{}{}
	}
	for _, d := range dirs {
		s.dirs[d] = struct{}{}
	}
	s.queued++
	if s.closed {
		s.mu.Unlock()
		s.Flush()
		return
	}
	if !s.running {
		s.running = true
		go s.run()
	}
	s.mu.Unlock()
}

// Flush waits until everything queued before it was called is synced.
func (s *Syncer) Flush() {
	s.mu.Lock()
	want := s.queued
	for s.synced < want {
		if !s.running {
			// Closed, or nothing running: sync here.
			s.running = true
			s.mu.Unlock()
			s.run()
			s.mu.Lock()
			continue
		}
		s.cond.Wait()
	}
	s.mu.Unlock()
}

// Close syncs what is queued; later calls to Later sync before they
// return.
func (s *Syncer) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.Flush()
}

// run syncs batches until the queue is empty.
func (s *Syncer) run() {
	s.mu.Lock()
	for len(s.files)+len(s.dirs) > 0 || s.synced < s.queued {
		files, dirs, upto := s.files, s.dirs, s.queued
		s.files, s.dirs = map[string]struct{}{}, map[string]struct{}{}
		s.mu.Unlock()
		for f := range files {
			s.report(f, syncPath(f))
		}
		for d := range dirs {
			s.report(d, syncPath(d))
		}
		s.mu.Lock()
		s.synced = upto
		s.cond.Broadcast()
	}
	s.running = false
	s.mu.Unlock()
}

func (s *Syncer) report(path string, err error) {
	if err != nil && s.onErr != nil {
		s.onErr(path, err)
	}
}

// syncPath syncs a file or directory by name; one that is gone is no error.
func syncPath(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// ReplaceLater is Replace, with the file and its directory queued on s
// to be synced: atomic now, durable a moment after.
func ReplaceLater(s *Syncer, path string, data []byte, perm os.FileMode, dirs ...string) error {
	if err := Replace(path, data, perm); err != nil {
		return err
	}
	s.Later(path, append(dirs, filepath.Dir(path))...)
	return nil
}
