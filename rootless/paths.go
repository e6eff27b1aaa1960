package rootless

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// Paths are a rootless instance's default locations, from the XDG base
// directory variables of the user who runs it.
type Paths struct {
	Socket string // $XDG_RUNTIME_DIR/peapod/peapod.sock
	State  string // $XDG_RUNTIME_DIR/peapod
	Root   string // $XDG_DATA_HOME/peapod, default ~/.local/share/peapod
	Config string // $XDG_CONFIG_HOME/peapod/peapod.toml, default ~/.config/peapod/peapod.toml
}

// DefaultPaths computes Paths for the user uid from getenv. Without
// XDG_RUNTIME_DIR (no login session: su, cron, CI) the runtime dir is
// /tmp/peapod-<uid>, which must then be the user's own.
func DefaultPaths(uid int, getenv func(string) string) (Paths, error) {
	home := getenv("HOME")
	runtime := getenv("XDG_RUNTIME_DIR")
	var state string
	if runtime != "" {
		state = filepath.Join(runtime, "peapod")
	} else {
		state = filepath.Join(os.TempDir(), "peapod-"+strconv.Itoa(uid))
	}
	data := getenv("XDG_DATA_HOME")
	if data == "" {
		if home == "" {
			return Paths{}, fmt.Errorf("neither XDG_DATA_HOME nor HOME is set: set one, or pass --root")
		}
		data = filepath.Join(home, ".local", "share")
	}
	conf := getenv("XDG_CONFIG_HOME")
	if conf == "" && home != "" {
		conf = filepath.Join(home, ".config")
	}
	p := Paths{
		Socket: filepath.Join(state, "peapod.sock"),
		State:  state,
		Root:   filepath.Join(data, "peapod"),
	}
	if conf != "" {
		p.Config = filepath.Join(conf, "peapod", "peapod.toml")
	}
	return p, nil
}

// EnsureOwnDir creates dir with mode 0700 if needed and checks that it
// belongs to uid and is not open to others: a runtime dir in /tmp that
// someone else made first must not be used.
func EnsureOwnDir(dir string, uid int) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if owner := fileOwner(st); owner != uid {
		return fmt.Errorf("%s belongs to uid %d, not to you (uid %d): remove it or set XDG_RUNTIME_DIR", dir, owner, uid)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s is writable by others (mode %o): chmod 0700 it", dir, st.Mode().Perm())
	}
	return nil
}
