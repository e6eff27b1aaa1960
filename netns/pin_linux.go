package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// Kind is one kind of Linux namespace, named as in /proc/<pid>/ns.
type Kind string

const (
	Net  Kind = "net"
	IPC  Kind = "ipc"
	UTS  Kind = "uts"
	PID  Kind = "pid"
	User Kind = "user"
)

// PinnedNamespaces maps each pinned namespace kind to the file it is
// bind-mounted on. The files stay valid after the pause process is gone.
type PinnedNamespaces map[Kind]string

// Pin bind-mounts /proc/<pid>/ns/<kind> for every kind onto dir/<kind>. It
// must be called right after the process started, while its pid cannot have
// been reused (the caller is its parent and has not reaped it). On error the
// pins made so far are removed.
func Pin(pid int, kinds []Kind, dir string) (pins PinnedNamespaces, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pin namespaces of pid %d: %w", pid, err)
	}
	pins = PinnedNamespaces{}
	defer func() {
		if err != nil {
			_ = Unpin(dir)
			pins = nil
		}
	}()
	for _, k := range kinds {
		target := filepath.Join(dir, string(k))
		if err := pinOne(k, "/proc/"+strconv.Itoa(pid)+"/ns/"+string(k), target); err != nil {
			return nil, err
		}
		pins[k] = target
	}
	return pins, nil
}

// pinOne creates target and bind-mounts the namespace file src on it; on
// error nothing is left.
func pinOne(k Kind, src, target string) error {
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY|os.O_EXCL, 0o400)
	if err != nil {
		return fmt.Errorf("pin %s namespace: create %s: %w", k, target, err)
	}
	f.Close()
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		_ = os.Remove(target)
		return fmt.Errorf("pin %s namespace: bind %s on %s: %w", k, src, target, err)
	}
	return nil
}

// Unpin unmounts and removes every pin file under dir, then dir itself. It
// is idempotent: a missing dir or an already unmounted file is not an error.
func Unpin(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("unpin namespaces in %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if err := unmountAll(p); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove pin %s: %w", p, err))
		}
	}
	if len(errs) == 0 {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

// unmountAll lazily unmounts path until nothing is mounted on it (a pin can
// be stacked if an earlier daemon died between two steps).
func unmountAll(path string) error {
	for i := 0; i < 8; i++ {
		err := unix.Unmount(path, unix.MNT_DETACH)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("unmount pin %s: %w", path, err)
	}
	return nil
}

// IsPinned reports whether path is an nsfs bind mount (a live pin).
func IsPinned(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// Inode returns the namespace inode of a pin or /proc ns file, to compare a
// process's namespace with a pinned one without trusting its pid.
func Inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// setnsFlag maps a Kind to its CLONE_NEW* flag.
func setnsFlag(k Kind) int {
	switch k {
	case Net:
		return unix.CLONE_NEWNET
	case IPC:
		return unix.CLONE_NEWIPC
	case UTS:
		return unix.CLONE_NEWUTS
	case PID:
		return unix.CLONE_NEWPID
	case User:
		return unix.CLONE_NEWUSER
	}
	return 0
}

// Do runs fn on a fresh OS thread that has joined the namespaces in paths.
// The thread is never returned to the Go scheduler: it exits with the
// goroutine, so no other goroutine can ever run inside the pod's namespaces
// by accident. Only thread-scoped kinds (net, ipc, uts) are accepted.
func Do(paths map[Kind]string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Deliberately no UnlockOSThread: the runtime ends this thread when
		// the goroutine returns.
		lockOSThread()
		for k, p := range paths {
			if k != Net && k != IPC && k != UTS {
				errc <- fmt.Errorf("enter %s namespace %s: only net, ipc and uts can be entered by a thread", k, p)
				return
			}
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				errc <- fmt.Errorf("enter %s namespace %s: %w", k, p, err)
				return
			}
			err = unix.Setns(fd, setnsFlag(k))
			unix.Close(fd)
			if err != nil {
				errc <- fmt.Errorf("enter %s namespace %s: %w", k, p, err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// NewNetNS makes a new network namespace and pins it at dir/net. It comes
// before the process that will hold it (which joins it through InNet), so
// that the pod's network can be attached while that process starts.
func NewNetNS(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("new network namespace: %w", err)
	}
	target := filepath.Join(dir, string(Net))
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread is in the new namespace now and ends
		// with this goroutine.
		lockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("new network namespace: %w", err)
			return
		}
		errc <- pinOne(Net, "/proc/thread-self/ns/net", target)
	}()
	if err := <-errc; err != nil {
		return "", err
	}
	return target, nil
}

// AdoptNetNS pins the network namespace pinned at src again at dir/net,
// for a pod that takes over a namespace made ahead of it. The caller
// unpins src.
func AdoptNetNS(src, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("adopt network namespace: %w", err)
	}
	target := filepath.Join(dir, string(Net))
	if err := pinOne(Net, src, target); err != nil {
		return "", err
	}
	return target, nil
}

// InNet runs fn on a thread that joined the network namespace at path, so
// that a process fn starts is born in it. The thread then goes back to its
// own namespace; if it cannot, it stays locked to the calling goroutine and
// ends with it.
func InNet(path string, fn func() error) error {
	lockOSThread()
	home, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	defer unix.Close(home)
	target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	err = unix.Setns(target, unix.CLONE_NEWNET)
	unix.Close(target)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", path, err)
	}
	ferr := fn()
	if err := unix.Setns(home, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("back to the daemon's network namespace: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}
