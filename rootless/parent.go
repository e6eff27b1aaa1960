package rootless

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"peapod/rootless/binder"
)

// SubIDCount is how many subordinate ids the namespaces map (uids 1..65536
// inside). Images use ids below 65536; a user with a smaller range gets
// what it has.
const SubIDCount = 65536

// ParentOptions configure the bootstrap that a non-root `peapod serve`
// performs before the daemon runs.
type ParentOptions struct {
	// Exe is the peapod binary; DaemonArgs are the daemon's arguments
	// after "serve".
	Exe        string
	DaemonArgs []string
	// StateDir is the instance's runtime state dir (holder record, lock).
	StateDir string
	// PauseBinary is the program the holder runs.
	PauseBinary string
	Net         NetOptions
	Log         *slog.Logger
	// HasPods tells, once the daemon has exited, whether pods remain:
	// the holder then stays so that a new daemon finds them.
	HasPods func() bool
	// PodCgroup names the cgroup of the daemon's pods inside a delegated
	// cgroup v2 subtree (cgroup2.go): when the parent finds one, the
	// daemon gets --cgroup-parent <subtree>/<PodCgroup>. "" keeps the
	// daemon's own (the user chose one).
	PodCgroup string
}

// RunParent sets up (or finds) the namespaces, starts the daemon inside
// them and stays as its parent until it exits: it forwards signals, binds
// host sockets for it, and tears the namespaces down when the daemon
// leaves no pods behind.
func RunParent(opts ParentOptions) error {
	u, err := user.Current()
	if err != nil {
		return fmt.Errorf("who am I: %w", err)
	}
	uid, gid := os.Getuid(), os.Getgid()
	uids, err := subIDMap("/etc/subuid", u.Username, uid, uid)
	if err != nil {
		return err
	}
	// /etc/subgid is keyed by user name or uid too, not by gid.
	gids, err := subIDMap("/etc/subgid", u.Username, uid, gid)
	if err != nil {
		return err
	}
	dir := filepath.Join(opts.StateDir, "rootless")
	if err := EnsureOwnDir(opts.StateDir, uid); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		return fmt.Errorf("another peapod serve is running for %s", opts.StateDir)
	}

	// cgroup v2: a delegated subtree for the pods (cgroup2.go); when it
	// is our own cgroup, we move into its leaf before anything starts.
	cg := beginCgroupV2(opts.Log, uid)

	rec, err := ensureHolder(opts, uids, gids)
	if err != nil {
		return err
	}
	opts.DaemonArgs = append(opts.DaemonArgs[:len(opts.DaemonArgs):len(opts.DaemonArgs)],
		podCgroupParent(cg.podsBase(rec), opts.PodCgroup)...)

	// The binder: the daemon asks for host sockets on its end (fd 3).
	conn, theirs, err := binder.Pair()
	if err != nil {
		return err
	}
	defer conn.Close()

	pid := strconv.Itoa(rec.Holder.PID)
	args := append([]string{"--target", pid, "--user", "--mount", "--net", "--ipc", "--uts", "--", opts.Exe, "serve"}, opts.DaemonArgs...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Env = append(os.Environ(), envChild+"=1", envBinderFD+"=3", envUser+"="+u.Username, envUID+"="+strconv.Itoa(uid))
	// Its own process group: a terminal's ^C reaches the daemon once,
	// through us. Pdeathsig covers a parent killed outright; the daemon
	// also leaves when the binder socket closes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		theirs.Close()
		return fmt.Errorf("start the daemon in the namespaces (nsenter from util-linux): %w", err)
	}
	theirs.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := binder.Serve(ctx, conn, nil); err != nil && ctx.Err() == nil {
			opts.Log.Warn("binder ended", "err", err)
		}
	}()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var werr error
wait:
	for {
		select {
		case s := <-sigs:
			_ = cmd.Process.Signal(s)
		case werr = <-done:
			break wait
		}
	}
	cancel()
	if opts.HasPods == nil || !opts.HasPods() {
		opts.Log.Info("no pods left: removing the rootless namespaces")
		rec.teardown(opts.StateDir)
		waitGone(rec.Holder, 2*time.Second)
	}
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		return fmt.Errorf("daemon exited: %s", ee.ProcessState)
	}
	return werr
}

// ensureHolder returns a live holder with its network: the recorded one
// when it still runs (a restarted parent finds the pods' namespaces), else
// a new one.
func ensureHolder(opts ParentOptions, uids, gids idMap) (*holderRecord, error) {
	netLog := filepath.Join(opts.StateDir, "rootless", "net.log")
	rec, err := readRecord(opts.StateDir)
	if err == nil && rec.Holder.alive() {
		if rec.NetPID.alive() {
			opts.Log.Info("joining the running rootless namespaces", "holder", rec.Holder.PID, "net", rec.Net)
			return rec, nil
		}
		kind, p, err := startNet(opts.Net, rec.Holder, netLog)
		if err != nil {
			return nil, err
		}
		rec.Net, rec.NetPID = kind, p
		opts.Log.Info("restarted the rootless network", "holder", rec.Holder.PID, "net", kind)
		return rec, rec.write(opts.StateDir)
	}
	if err == nil {
		rec.teardown(opts.StateDir) // a network helper of a dead holder
	} else if !os.IsNotExist(err) {
		opts.Log.Warn("ignoring an unreadable holder record", "err", err)
	}
	cmd, holder, err := startHolder(opts.PauseBinary, uids, gids)
	if err != nil {
		return nil, err
	}
	// Reap the holder if it ends while we run; after we exit, init does.
	go func() { _ = cmd.Wait() }()
	kind, p, err := startNet(opts.Net, holder, netLog)
	if err != nil {
		holder.kill()
		return nil, err
	}
	rec = &holderRecord{Holder: holder, Net: kind, NetPID: p, UIDMap: uids.String(), GIDMap: gids.String()}
	if err := rec.write(opts.StateDir); err != nil {
		rec.teardown(opts.StateDir)
		return nil, err
	}
	opts.Log.Info("created the rootless namespaces", "holder", holder.PID, "net", kind, "uids", uids.String(), "gids", gids.String())
	return rec, nil
}

// subIDMap reads the subordinate range of the user (name, uid) from file
// and maps 0 to id (the user's uid or gid) and 1.. to the range.
func subIDMap(file, name string, uid, id int) (idMap, error) {
	start, count, err := SubIDs(file, name, uid)
	if err != nil {
		return idMap{}, err
	}
	if count > SubIDCount {
		count = SubIDCount
	}
	return idMap{ID: id, SubStart: start, SubCount: count}, nil
}
