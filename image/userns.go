package image

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/sys/userns"
	"golang.org/x/sys/unix"

	"peapod/internal/atomicfile"
)

// storeLayout is <root>/layout.json: how the store's layers were written, which
// decides how they can be mounted. Real root writes opaque directories as
// trusted.overlay.opaque and keeps every owner of the layer tar; a process
// in a user namespace (rootless) can set neither trusted xattrs nor owners
// outside its id map, so it writes user.overlay.opaque (mounted with
// userxattr) and owners as ids of its namespace. Layers of one flavour are
// wrong for the other, and so are layers written under another id map, so
// Open refuses such a store instead of mounting broken root filesystems.
type storeLayout struct {
	Version int `json:"version"`
	// UserNamespace is set when the layers were unpacked in a user
	// namespace.
	UserNamespace bool `json:"userNamespace"`
	// UIDMap and GIDMap are /proc/self/uid_map and gid_map of the process
	// that unpacked them ("inside outside count" lines, joined by "; "),
	// only in a user namespace.
	UIDMap string `json:"uidMap,omitempty"`
	GIDMap string `json:"gidMap,omitempty"`
}

const layoutVersion = 1

func (l storeLayout) String() string {
	if !l.UserNamespace {
		return "real root (trusted.overlay xattrs, host ids)"
	}
	return fmt.Sprintf("root in a user namespace (user.overlay xattrs, uid map %q, gid map %q)", l.UIDMap, l.GIDMap)
}

// opaqueXattr is the xattr that marks an opaque directory in the layers.
func (l storeLayout) opaqueXattr() string {
	if l.UserNamespace {
		return "user.overlay.opaque"
	}
	return "trusted.overlay.opaque"
}

// currentLayout is the layout this process writes.
func currentLayout() (storeLayout, error) {
	l := storeLayout{Version: layoutVersion, UserNamespace: userns.RunningInUserNS()}
	if !l.UserNamespace {
		return l, nil
	}
	var err error
	if l.UIDMap, err = readIDMap("/proc/self/uid_map"); err != nil {
		return l, err
	}
	if l.GIDMap, err = readIDMap("/proc/self/gid_map"); err != nil {
		return l, err
	}
	return l, nil
}

// readIDMap reads a uid_map or gid_map file into one normalised line.
func readIDMap(p string) (string, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 0 {
			lines = append(lines, strings.Join(f, " "))
		}
	}
	if len(lines) == 0 {
		return "", fmt.Errorf("%s is empty: the user namespace has no id map yet", p)
	}
	return strings.Join(lines, "; "), nil
}

func (s *Store) layoutPath() string { return filepath.Join(s.root, "layout.json") }

// checkLayoutLocked compares the store's layout with this process's. A
// store without layers or containers takes this process's layout (nothing
// written so far depends on it); one with layers must match. A store from
// before layout.json existed was written by real root. Callers hold the
// lock and have opened their session (so dead sessions are gone).
func (s *Store) checkLayoutLocked(cur storeLayout) error {
	var have storeLayout
	b, err := os.ReadFile(s.layoutPath())
	recorded := err == nil
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &have); err != nil {
			return fmt.Errorf("%s: %w", s.layoutPath(), err)
		}
		if have.Version > layoutVersion {
			return fmt.Errorf("%s: layout version %d is newer than this peapod understands (%d)", s.layoutPath(), have.Version, layoutVersion)
		}
	case errors.Is(err, fs.ErrNotExist):
		have = storeLayout{Version: layoutVersion} // written by real root, or empty
	default:
		return err
	}
	if have == cur {
		if recorded {
			return nil
		}
		return s.writeLayout(cur)
	}
	used, err := s.holdsContentLocked()
	if err != nil {
		return err
	}
	if used {
		return &LayoutError{Root: s.root, Store: have, Process: cur, Euid: os.Geteuid()}
	}
	if recorded {
		s.log.Info("image store is empty: switching its layout", "from", have.String(), "to", cur.String())
	}
	return s.writeLayout(cur)
}

func (s *Store) writeLayout(l storeLayout) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(s.layoutPath(), b, 0o600)
}

// holdsContentLocked tells whether anything in the store depends on its
// layout: an unpacked layer, a container rootfs, or another live session
// that may be unpacking one right now.
func (s *Store) holdsContentLocked() (bool, error) {
	for _, d := range []string{"layers", "containers"} {
		entries, err := os.ReadDir(filepath.Join(s.root, d))
		if err != nil {
			return false, err
		}
		if len(entries) > 0 {
			return true, nil
		}
	}
	entries, err := os.ReadDir(filepath.Join(s.root, "tmp"))
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if p := filepath.Join(s.root, "tmp", e.Name()); p != s.session.dir {
			if live, err := sessionLive(p); err != nil || live {
				return true, err
			}
		}
	}
	return false, nil
}

// LayoutError is returned by Open for a store whose layers were unpacked
// by real root and are opened in a user namespace, or the reverse, or in a
// user namespace with another id map.
type LayoutError struct {
	Root           string
	Store, Process storeLayout
	Euid           int // of the process, in its namespace
}

func (e *LayoutError) Error() string {
	var hint string
	process := e.Process.String()
	switch {
	case !e.Process.UserNamespace && e.Euid != 0:
		process = fmt.Sprintf("uid %d outside any user namespace", e.Euid)
		hint = "an ordinary user can only use a rootless store from inside its user namespace " +
			"(where rootless peapod runs), as the uid 0 there"
	case !e.Store.UserNamespace:
		hint = "a process in a user namespace can neither read its trusted.overlay xattrs nor own its files; " +
			"rootless peapod keeps its own store under $XDG_DATA_HOME/peapod"
	case !e.Process.UserNamespace:
		hint = "as real root it would see the namespace's host ids (the user's subordinate ids) as owners; " +
			"use it from the rootless peapod that made it, or give real root its own --root"
	default:
		hint = "its owners are ids of the other namespace; " +
			"use the same subordinate ids (/etc/subuid, /etc/subgid) or another root"
	}
	return fmt.Sprintf("image store %s holds layers unpacked by %s; this process runs as %s and cannot use them: %s. "+
		"Remove the store (its images are pulled again) or use another root",
		e.Root, e.Store, process, hint)
}

// permissionHint explains an EACCES or EPERM met while opening a store in
// a user namespace: typically a store of real root, whose files belong to
// ids the namespace does not map.
func permissionHint(root string, err error) error {
	if !userns.RunningInUserNS() || !(errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)) {
		return err
	}
	var st unix.Stat_t
	for p := root; ; p = filepath.Dir(p) {
		if unix.Stat(p, &st) == nil {
			break
		}
		if p == "/" {
			return err
		}
	}
	return fmt.Errorf("%w (this process runs in a user namespace; files owned by ids it does not map, such as a store of real root, show as uid %d and cannot be used: rootless peapod needs its own root)", err, st.Uid)
}
