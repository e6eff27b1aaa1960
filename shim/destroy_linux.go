package shim

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// destroyQuick does, without a helper, what libcontainer's Destroy does
// for a container whose processes have all exited, when its cgroups are
// plain cgroupfs directories: it removes them, then the container's
// state under the shim's libcontainer root. It reports false, having
// removed at most some of the cgroups, when the helper must do it: a
// systemd scope (stopped through systemd), a state it cannot read, or a
// directory that will not go (sub-cgroups the container made, no
// permission); libcontainer then removes what is left.
func (s *server) destroyQuick(id string) bool {
	st, err := readRuncState(s.runcRoot, id)
	if errors.Is(err, fs.ErrNotExist) {
		return true // libcontainer too knows no such container: nothing to do
	}
	if err != nil || st.Config.Cgroups.Systemd {
		return false
	}
	for _, p := range st.CgroupPaths {
		if !strings.HasPrefix(p, "/sys/fs/cgroup/") || !removeEmptyCgroup(p) {
			return false
		}
	}
	return os.RemoveAll(filepath.Join(s.runcRoot, id)) == nil
}

// removeEmptyCgroup removes a cgroup directory that has no sub-cgroups.
// EBUSY is retried a few times: the processes of a cgroup leave it a
// moment after they are reaped.
func removeEmptyCgroup(p string) bool {
	for i := 0; ; i++ {
		err := unix.Rmdir(p)
		switch {
		case err == nil || errors.Is(err, unix.ENOENT):
			return true
		case errors.Is(err, unix.EBUSY) && i < 6:
			time.Sleep(time.Duration(1<<i) * time.Millisecond)
		default:
			return false
		}
	}
}
