package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"peapod/internal/procfs"
)

// StartOptions say how to start a pod's shim.
type StartOptions struct {
	// Binary is the peapod executable; default: this process's.
	Binary string
	// Dir is the shim's own directory (created); see the package doc.
	Dir string
	// PodCgroup is the pod's cgroupfs path: containers get
	// <PodCgroup>/<id> unless their spec names a cgroup.
	PodCgroup string
	// Helper is the libcontainer helper program (peapod-lc) the shim
	// runs for create, exec, kill-all, delete and update; default: the
	// one RegisterHelper named for Binary, else none, and the shim runs
	// its own executable as `shim lc` (the whole peapod does that).
	Helper string
}

// helperPrograms maps a shim program to its helper program (RegisterHelper).
var helperPrograms sync.Map

// RegisterHelper says that shims run from the program shimBinary get
// helperBinary as their libcontainer helper (StartOptions.Helper) unless
// a Start names another. shim/embedded's Install registers the pair it
// installs, so that the daemon, which passes only Binary, runs both.
func RegisterHelper(shimBinary, helperBinary string) {
	helperPrograms.Store(shimBinary, helperBinary)
}

// Client talks to one pod's shim. It holds no connection between calls and
// is safe for concurrent use.
type Client struct {
	dir string
	pid int
}

// Start spawns a shim (`peapod-shim shim` or `peapod shim`) for a pod, detached in its own
// session so that it outlives the daemon, and returns once it serves. Its
// stdout and stderr go to DIR/shim.log.
func Start(ctx context.Context, opts StartOptions) (*Client, error) {
	bin := opts.Binary
	if bin == "" {
		var err error
		if bin, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("start shim: %w", err)
		}
	}
	if !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("start shim: dir %q must be absolute", opts.Dir)
	}
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("start shim: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(opts.Dir, logName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start shim: %w", err)
	}
	defer logf.Close()
	ready, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start shim: %w", err)
	}
	defer ready.Close()

	args := []string{"shim", "--dir", opts.Dir, "--pod-cgroup", opts.PodCgroup, "--ready-fd", "3"}
	helper := opts.Helper
	if h, ok := helperPrograms.Load(bin); ok && helper == "" {
		helper = h.(string)
	}
	if helper != "" {
		// Now rather than at the pod's first create.
		if st, err := os.Stat(helper); err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("start shim: helper %s is no executable file (%v)", helper, err)
		}
		args = append(args, "--lc", helper)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = "/"
	cmd.Env = shimEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{readyW}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return nil, fmt.Errorf("start shim %s: %w", bin, err)
	}
	// Reap the shim if it ends while this process lives; a daemon that
	// restarts finds it with Connect instead.
	go func() { _ = cmd.Wait() }()

	msg := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(io.LimitReader(ready, 4096))
		msg <- strings.TrimSpace(string(b))
	}()
	select {
	case m := <-msg:
		if m != "ok" {
			if m == "" {
				m = "exited before serving; see " + filepath.Join(opts.Dir, logName)
			}
			_ = cmd.Process.Kill()
			return nil, fmt.Errorf("start shim in %s: %s", opts.Dir, m)
		}
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return nil, fmt.Errorf("start shim in %s: %w", opts.Dir, ctx.Err())
	}
	return &Client{dir: opts.Dir, pid: cmd.Process.Pid}, nil
}

// shimEnv is the daemon's environment without what belongs to the daemon
// alone: systemd's notify socket and socket activation. The shim runs with
// one P (GOMAXPROCS=1, see memory_linux.go) unless the daemon's
// environment says otherwise, and without transparent huge pages for its
// heap (GODEBUG disablethp=1, added to any GODEBUG the daemon has): where
// THP is "always" (Debian's kernels) the shim's heap would otherwise come
// in 2 MiB pages, ~4.4 MiB anonymous instead of ~1.1 per pod. Its helpers
// inherit both; libcontainer gives the containers' processes an
// environment of their own.
func shimEnv(env []string) []string {
	out := env[:0:0]
	procs, debug := false, false
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES":
			continue
		case "GOMAXPROCS":
			procs = true
		case "GODEBUG":
			debug = true
			if !strings.Contains(v, "disablethp=") {
				if v = strings.TrimSuffix(v, ","); v != "" {
					v += ","
				}
				kv = "GODEBUG=" + v + "disablethp=1"
			}
		}
		out = append(out, kv)
	}
	if !procs {
		out = append(out, "GOMAXPROCS=1")
	}
	if !debug {
		out = append(out, "GODEBUG=disablethp=1")
	}
	return out
}

// Connect finds the running shim of dir again, after a daemon restart.
func Connect(ctx context.Context, dir string) (*Client, error) {
	c := &Client{dir: dir}
	resp, err := c.call(ctx, &request{Op: opPing})
	if err != nil {
		return nil, err
	}
	c.pid = resp.Pid
	return c, nil
}

// Pid is the shim's process id.
func (c *Client) Pid() int { return c.pid }

// Dir is the shim's directory.
func (c *Client) Dir() string { return c.dir }

// CreateContainer creates a container and starts its init, which waits for
// StartContainer. On error nothing of the container is left.
func (c *Client) CreateContainer(ctx context.Context, spec ContainerSpec) error {
	_, err := c.call(ctx, &request{Op: opCreate, ID: spec.ID, Spec: &spec})
	return err
}

// StartContainer runs the container's command.
func (c *Client) StartContainer(ctx context.Context, id string) (*ContainerState, error) {
	resp, err := c.call(ctx, &request{Op: opStart, ID: id})
	if err != nil {
		return nil, err
	}
	return resp.State, nil
}

// Signal sends sig to the container's init, or with all to every process
// in its cgroup. Signalling an exited container does nothing.
func (c *Client) Signal(ctx context.Context, id string, sig syscall.Signal, all bool) error {
	_, err := c.call(ctx, &request{Op: opSignal, ID: id, Signal: int(sig), All: all})
	return err
}

// Stop sends the container's stop signal, waits up to timeout for it to
// exit, then SIGKILLs every process in its cgroup; timeout 0 kills at once.
// It returns the state after the exit.
func (c *Client) Stop(ctx context.Context, id string, timeout time.Duration) (ContainerState, error) {
	resp, err := c.call(ctx, &request{Op: opStop, ID: id, Timeout: timeout})
	if err != nil {
		return ContainerState{}, err
	}
	return *resp.State, nil
}

// State returns what the shim knows of a container.
func (c *Client) State(ctx context.Context, id string) (ContainerState, error) {
	resp, err := c.call(ctx, &request{Op: opState, ID: id})
	if err != nil {
		return ContainerState{}, err
	}
	return *resp.State, nil
}

// List returns the state of every container of the shim, oldest first.
func (c *Client) List(ctx context.Context) ([]ContainerState, error) {
	resp, err := c.call(ctx, &request{Op: opList})
	if err != nil {
		return nil, err
	}
	return resp.States, nil
}

// Wait blocks until the container has exited and its exit is recorded.
func (c *Client) Wait(ctx context.Context, id string) (ContainerState, error) {
	resp, err := c.call(ctx, &request{Op: opWait, ID: id})
	if err != nil {
		return ContainerState{}, err
	}
	return *resp.State, nil
}

// Delete kills the container if it runs and removes it: cgroup,
// libcontainer state, records. Deleting an unknown container succeeds.
func (c *Client) Delete(ctx context.Context, id string) error {
	_, err := c.call(ctx, &request{Op: opDelete, ID: id})
	return err
}

// ReopenLog reopens the container's log file at its path, after the
// kubelet renamed it for rotation.
func (c *Client) ReopenLog(ctx context.Context, id string) error {
	_, err := c.call(ctx, &request{Op: opReopen, ID: id})
	return err
}

// Shutdown kills and deletes every container, removes the shim's directory
// and waits until the shim process has exited.
func (c *Client) Shutdown(ctx context.Context) error {
	// A pidfd taken before asking pins the shim we wait for.
	pidfd := -1
	if c.pid > 0 {
		if fd, err := unix.PidfdOpen(c.pid, 0); err == nil {
			pidfd = fd
			defer unix.Close(fd)
		}
	}
	resp, err := c.call(ctx, &request{Op: opShutdown})
	if err != nil {
		return err
	}
	if pidfd < 0 && resp.Pid > 0 {
		if fd, err := unix.PidfdOpen(resp.Pid, 0); err == nil {
			pidfd = fd
			defer unix.Close(fd)
		}
	}
	if pidfd >= 0 {
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(10 * time.Second)
		}
		if !procfs.WaitPidfd(pidfd, time.Until(deadline)) {
			return fmt.Errorf("shutdown shim %s: process %d still running", c.dir, resp.Pid)
		}
	}
	return nil
}

// Exec runs a process in a running container, streams its stdio and
// returns its exit code. Cancelling ctx kills the process.
func (c *Client) Exec(ctx context.Context, id string, spec ExecSpec) (int, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return -1, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	req := &request{Op: opExec, ID: id, Exec: &execRequest{
		Args: spec.Args, Env: spec.Env, Cwd: spec.Cwd, Tty: spec.Tty,
		Stdin: spec.Stdin != nil, Timeout: spec.Timeout,
	}}
	if err := writeJSON(conn, req); err != nil {
		return -1, c.connErr(ctx, err)
	}
	var resp response
	if err := readJSON(conn, &resp); err != nil {
		return -1, c.connErr(ctx, err)
	}
	if err := resp.err(); err != nil {
		return -1, err
	}

	exit, err := c.stream(ctx, conn, spec.Stdin, spec.Stdout, spec.Stderr, spec.Resize)
	if err != nil {
		return -1, err
	}
	return exit.ExitCode, exit.err()
}

// AttachSpec is a client attaching to a running container's stdio.
type AttachSpec struct {
	// Stdin, when not nil, is copied to the container's stdin (its
	// terminal, for a tty container; a pipe needs ContainerSpec.Stdin).
	Stdin io.Reader
	// CloseStdin closes the container's stdin once Stdin ends (the CRI's
	// stdin_once).
	CloseStdin bool
	// Stdout and Stderr receive the output from now on (a tty
	// container's goes to Stdout); nil discards.
	Stdout, Stderr io.Writer
	Resize         <-chan TerminalSize
}

// Attach streams a running container's stdio until it exits (and returns
// its final state) or ctx is cancelled.
func (c *Client) Attach(ctx context.Context, id string, spec AttachSpec) (ContainerState, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return ContainerState{}, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := writeJSON(conn, &request{Op: opAttach, ID: id, CloseStdin: spec.CloseStdin}); err != nil {
		return ContainerState{}, c.connErr(ctx, err)
	}
	var resp response
	if err := readJSON(conn, &resp); err != nil {
		return ContainerState{}, c.connErr(ctx, err)
	}
	if err := resp.err(); err != nil {
		return ContainerState{}, err
	}
	exit, err := c.stream(ctx, conn, spec.Stdin, spec.Stdout, spec.Stderr, spec.Resize)
	if err != nil {
		return ContainerState{}, err
	}
	if exit.State == nil {
		return ContainerState{}, exit.err()
	}
	return *exit.State, exit.err()
}

// UpdateResources changes the limits of a container's cgroup.
func (c *Client) UpdateResources(ctx context.Context, id string, r *specs.LinuxResources) error {
	_, err := c.call(ctx, &request{Op: opUpdate, ID: id, Resources: r})
	return err
}

// stream pumps stdin, resizes and output frames of an exec or attach
// session until the final JSON frame, which it returns.
func (c *Client) stream(ctx context.Context, conn net.Conn, stdin io.Reader, stdout, stderr io.Writer, resize <-chan TerminalSize) (*response, error) {
	var wmu sync.Mutex
	send := func(kind byte, b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return writeFrame(conn, kind, b)
	}
	done := make(chan struct{})
	defer close(done)
	if stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := stdin.Read(buf)
				if n > 0 && send(frameStdin, buf[:n]) != nil {
					return
				}
				if err != nil {
					_ = send(frameEOF, nil)
					return
				}
			}
		}()
	}
	if resize != nil {
		go func() {
			for {
				select {
				case sz, ok := <-resize:
					if !ok {
						return
					}
					b, _ := json.Marshal(sz)
					if send(frameResize, b) != nil {
						return
					}
				case <-done:
					return
				}
			}
		}()
	}
	for {
		kind, b, err := readFrame(conn)
		if err != nil {
			return nil, c.connErr(ctx, err)
		}
		switch kind {
		case frameStdout:
			if stdout != nil {
				_, _ = stdout.Write(b)
			}
		case frameStderr:
			if stderr != nil {
				_, _ = stderr.Write(b)
			}
		case frameJSON:
			var exit response
			if err := json.Unmarshal(b, &exit); err != nil {
				return nil, fmt.Errorf("shim %s: %w", c.dir, err)
			}
			return &exit, nil
		}
	}
}

// ReadState reads a container's state from the records in a shim's
// directory, without the shim: for a daemon that finds a shim dead.
func ReadState(dir, id string) (ContainerState, error) {
	return readState(dir, id)
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	addr, hold, err := socketAddr(c.dir)
	if err != nil {
		return nil, fmt.Errorf("shim %s: %w", c.dir, err)
	}
	if hold != nil {
		defer hold.Close()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		return nil, fmt.Errorf("shim %s: %w", c.dir, err)
	}
	return conn, nil
}

// call makes one request and reads its response.
func (c *Client) call(ctx context.Context, req *request) (*response, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := writeJSON(conn, req); err != nil {
		return nil, c.connErr(ctx, err)
	}
	var resp response
	if err := readJSON(conn, &resp); err != nil {
		return nil, c.connErr(ctx, err)
	}
	if err := resp.err(); err != nil {
		return nil, err
	}
	return &resp, nil
}

func (c *Client) connErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("shim %s: connection closed: %w", c.dir, err)
	}
	return fmt.Errorf("shim %s: %w", c.dir, err)
}
