package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"peapod/internal/atomicfile"
)

// store keeps one JSON record per sandbox under <root>/sandboxes/<id>/.
// Writes are atomic: a reader (or a restarted daemon) sees the old or the
// new record, never a torn one.
type store struct {
	dir    string
	syncer *atomicfile.Syncer // saveCommit's background syncs
}

const recordFile = "sandbox.json"

func (s *store) path(id string) string { return filepath.Join(s.dir, id, recordFile) }

func (s *store) save(sb *Sandbox) error { return s.write(sb, atomicfile.WriteFile) }

// Durability. Every record is written atomically, so a daemon killed at
// any moment finds the old or the new one. Most records are also synced,
// to survive a power loss. Those RunPodSandbox writes before the sandbox
// is ready are not (saveVolatile): a power loss ends everything they
// guard (pause, namespaces, cgroups, mounts), and what outlives it (the
// IPAM allocation, a rootfs) is collected at start by CNI GC and the
// sweeps. The ready record is synced with its directories in the
// background, a moment after the call returns (saveCommit): the caller
// cannot tell, since a power loss in that moment ends the pod just the
// same, and the next start cleans up after a record that never reached
// the disk as after one that did.

// saveVolatile writes the record without syncing it.
func (s *store) saveVolatile(sb *Sandbox) error { return s.write(sb, atomicfile.Replace) }

// saveCommit writes the record and queues it, its directory and the
// directory's entry in the store to be synced.
func (s *store) saveCommit(sb *Sandbox) error {
	return s.write(sb, func(path string, b []byte, perm os.FileMode) error {
		return atomicfile.ReplaceLater(s.syncer, path, b, perm, s.dir)
	})
}

func (s *store) write(sb *Sandbox, write func(string, []byte, os.FileMode) error) error {
	b, err := json.MarshalIndent(sb, "", "  ")
	if err != nil {
		return fmt.Errorf("encode sandbox %s: %w", sb.ID, err)
	}
	if err := os.MkdirAll(filepath.Join(s.dir, sb.ID), 0o700); err != nil {
		return fmt.Errorf("persist sandbox %s: %w", sb.ID, err)
	}
	return write(s.path(sb.ID), b, 0o600)
}

func (s *store) remove(id string) error {
	if err := os.RemoveAll(filepath.Join(s.dir, id)); err != nil {
		return fmt.Errorf("remove record of sandbox %s: %w", id, err)
	}
	return atomicfile.SyncDir(s.dir)
}

// loadAll returns every readable record; ids is every directory found,
// including those without a record (a crash before the first save).
func (s *store) loadAll() (records []*Sandbox, ids []string, err error) {
	entries, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		if !e.IsDir() || !validID(e.Name()) {
			continue
		}
		ids = append(ids, e.Name())
		b, err := os.ReadFile(s.path(e.Name()))
		if err != nil {
			continue
		}
		var sb Sandbox
		if err := json.Unmarshal(b, &sb); err != nil || sb.ID != e.Name() {
			continue
		}
		records = append(records, &sb)
	}
	return records, ids, nil
}

func validID(id string) bool {
	if len(id) != 64 {
		return false
	}
	return strings.Trim(id, "0123456789abcdef") == ""
}
