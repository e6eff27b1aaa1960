package rootless

import (
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/sys/userns"
)

// Environment variables the parent sets for the daemon it starts inside
// the namespaces.
const (
	envChild    = "PEAPOD_ROOTLESS"           // "1" in the daemon
	envBinderFD = "PEAPOD_ROOTLESS_BINDER_FD" // fd of the binder socket
	envUser     = "PEAPOD_ROOTLESS_USER"      // the user's name
	envUID      = "PEAPOD_ROOTLESS_UID"       // the user's real uid
)

// Mode is how this process relates to rootless operation.
type Mode int

const (
	// Root: real root in the initial user namespace; nothing to do.
	Root Mode = iota
	// Parent: an ordinary user; serve must bootstrap the namespaces.
	Parent
	// Child: uid 0 inside a user namespace, either started by our
	// parent, by RootlessKit, or by hand (unshare). The daemon runs here.
	Child
)

// Detect tells the mode of this process.
func Detect() Mode {
	if os.Geteuid() != 0 {
		return Parent
	}
	if userns.RunningInUserNS() {
		return Child
	}
	return Root
}

// ChildInfo is what a daemon in Child mode knows about its setting.
type ChildInfo struct {
	// User is the name of the user who owns the namespaces, UID their
	// real uid (-1 when the uid map does not say).
	User string
	UID  int
	// Binder is the socket to the parent's binder (nil when the daemon
	// was not started by a peapod parent: then host sockets are not
	// available and hostPorts are refused).
	Binder *os.File
	// RootlessKit is set when the daemon runs under RootlessKit.
	RootlessKit bool
}

// ChildEnv reads the ChildInfo from the environment the parent set.
func ChildEnv() ChildInfo {
	ci := ChildInfo{User: os.Getenv(envUser), UID: -1, RootlessKit: os.Getenv("ROOTLESSKIT_STATE_DIR") != ""}
	if ci.User == "" {
		ci.User = os.Getenv("USER")
	}
	if v, err := strconv.Atoi(os.Getenv(envUID)); err == nil {
		ci.UID = v
	} else {
		ci.UID = rootOutside() // RootlessKit, unshare: what uid 0 is outside
	}
	if fd, err := strconv.Atoi(os.Getenv(envBinderFD)); err == nil && fd > 2 {
		ci.Binder = os.NewFile(uintptr(fd), "peapod-binder")
		syscall.CloseOnExec(fd)
	}
	// Shims and their children must not take the binder for theirs.
	os.Unsetenv(envBinderFD)
	return ci
}

// Owner names the user a rootless instance belongs to and their real uid:
// the current user for a parent; for a daemon, what its parent passed, or
// else what the user namespace's uid map says uid 0 is.
func Owner() (name string, uid int) {
	if Detect() == Parent {
		uid = os.Getuid()
	} else if v, err := strconv.Atoi(os.Getenv(envUID)); err == nil {
		uid = v
	} else {
		uid = rootOutside()
	}
	if name = os.Getenv(envUser); name != "" && Detect() != Parent {
		return name, uid
	}
	if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
		return u.Username, uid
	}
	return strconv.Itoa(uid), uid
}

// rootOutside reads which outer uid this user namespace maps uid 0 to.
func rootOutside() int {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "0" {
			if v, err := strconv.Atoi(f[1]); err == nil {
				return v
			}
		}
	}
	return -1
}

func fileOwner(st os.FileInfo) int {
	if s, ok := st.Sys().(*syscall.Stat_t); ok {
		return int(s.Uid)
	}
	return -1
}
