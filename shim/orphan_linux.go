package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"peapod/internal/procfs"
)

// runcDirName is the shim's libcontainer root, inside its directory.
const runcDirName = "runc"

// Gone reports whether err, from Connect or a call, means that no shim
// serves the directory: nothing listens on its socket, or the socket is
// gone. The request never reached a shim. A shim that is only slow gives
// a timeout instead.
func Gone(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, fs.ErrNotExist)
}

// runcState is what the shim reads of libcontainer's state.json of a
// container under its libcontainer root: the init (pid and start time,
// as libcontainer knows it) and the container's cgroups.
type runcState struct {
	Pid         int               `json:"init_process_pid"`
	Start       uint64            `json:"init_process_start"`
	CgroupPaths map[string]string `json:"cgroup_paths"`
	Config      struct {
		Cgroups struct {
			Systemd bool `json:"Systemd"`
		} `json:"cgroups"`
	} `json:"config"`
}

// readRuncState reads container id's state under the libcontainer root
// runcRoot; an error wrapping fs.ErrNotExist means libcontainer knows no
// such container (never created, or destroyed).
func readRuncState(runcRoot, id string) (*runcState, error) {
	path := filepath.Join(runcRoot, id, "state.json")
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st runcState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &st, nil
}

// KillOrphanInit SIGKILLs the init of container id of the shim in dir, a
// shim that is gone, if that init still runs, and waits for it to exit.
// The init is known the way libcontainer knows it: by the pid and start
// time in the container's state under the shim's libcontainer root, so a
// recycled pid is never signalled. It reports whether it found the init
// running. With the container in a pid namespace of its own, the kernel
// kills the rest of it with its init; the cgroup (when the pod has one)
// catches the rest in the other cases.
func KillOrphanInit(dir, id string) (bool, error) {
	if !validID(id) {
		return false, fmt.Errorf("%w: container id %q", ErrInvalid, id)
	}
	st, err := readRuncState(filepath.Join(dir, runcDirName), id)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // never created, or destroyed
	}
	if err != nil {
		return false, err
	}
	if st.Pid <= 0 {
		return false, nil
	}
	// The pidfd pins the process before its start time is checked.
	fd, err := unix.PidfdOpen(st.Pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("pidfd_open %d: %w", st.Pid, err)
	}
	defer unix.Close(fd)
	if !procfs.Alive(st.Pid, st.Start) {
		return false, nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return false, fmt.Errorf("kill init %d of container %s: %w", st.Pid, id, err)
	}
	if !procfs.WaitPidfd(fd, 5*time.Second) {
		return true, fmt.Errorf("init %d of container %s did not exit after SIGKILL", st.Pid, id)
	}
	return true, nil
}
