package shim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"peapod/shim/internal/lcproto"
)

// The resident shim never runs libcontainer itself: every operation that
// needs it (create, exec, kill-all, delete, update) runs in a one-shot
// helper, as containerd's shim runs runc. libcontainer's work leaves
// megabytes of garbage and threads behind, and in a process that lives as
// long as the pod they stay resident; in a helper they end with it. The
// resident shim does not even link libcontainer (nor the cgroups, eBPF,
// D-Bus and netlink code it pulls in): their package state, data and
// threads would cost every pod. The helper is another program, peapod-lc
// (`<lc> lc`, package shim/lc, the --lc path Start passes), or in a peapod
// built without the embedded binaries the whole peapod (`peapod shim lc`,
// the shim's own executable).
//
// The helper's stdin is a unix socket: the request goes there as JSON, the
// process's stdio riding on it as SCM_RIGHTS (helperFiles), and the reply
// comes back on it as JSON; stdout and stderr are the shim's log. A
// helper that starts a process (a container's init, blocked on
// libcontainer's exec fifo until start, or an exec process) replies with
// its pid and exits at once, without waiting for it: the process is
// re-parented to the shim, its subreaper, and the shim's reaper collects
// its exit and the helper's own (reaper_linux.go).
//
// The wire types are package shim/internal/lcproto's.

// Operations of the helper.
const (
	lcCreate  = lcproto.Create
	lcExec    = lcproto.Exec
	lcKillAll = lcproto.KillAll
	lcDelete  = lcproto.Delete
	lcUpdate  = lcproto.Update
)

type (
	lcRequest = lcproto.Request[ContainerSpec]
	lcProcess = lcproto.Process
	lcReply   = lcproto.Reply
)

// replyErr is the error a helper's reply carries, with its sentinel.
func replyErr(r *lcReply) error {
	return (&response{Error: r.Error, Code: r.Code}).err()
}

// spareIdle is how long a helper started ahead of time waits for work.
const spareIdle = 5 * time.Second

// helperProc is a started helper, waiting for its request. Its stdin is a
// unix socket: the request comes with the process's stdio descriptors
// (SCM_RIGHTS), so a helper started ahead of time can take any call, and
// the reply goes back on it.
type helperProc struct {
	pid  int
	conn *net.UnixConn
	exit chan exit
}

// spawnHelper starts a helper. The caller has called s.reaper.begin and
// calls end once it registered every pid of the reply.
func (s *server) spawnHelper(idle bool) (*helperProc, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("helper socket: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "helper"), os.NewFile(uintptr(fds[1]), "helper-child")
	defer theirs.Close()
	fc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("helper socket: %w", err)
	}
	conn := fc.(*net.UnixConn)
	args := append([]string(nil), s.helperArgs...)
	if idle {
		args = append(args, "--idle", spareIdle.String())
	}
	// stdout too goes to the shim's log: nothing but the socket carries
	// the reply.
	p, err := os.StartProcess(s.helperExe, args, &os.ProcAttr{Dir: "/", Files: []*os.File{theirs, os.Stderr, os.Stderr}})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("start helper: %w", err)
	}
	h := &helperProc{pid: p.Pid, conn: conn, exit: make(chan exit, 1)}
	// The reaper collects it (within the caller's begin/end window even
	// if it is gone already), not os.Process.Wait.
	_ = p.Release()
	s.reaper.register(h.pid, func(e exit) { s.helperExited(h, e) })
	return h, nil
}

// helperExited takes a helper's exit: the spare's, unused, ends it here;
// any other goes to the call waiting for it.
func (s *server) helperExited(h *helperProc, e exit) {
	s.spareMu.Lock()
	unused := s.spare == h
	if unused {
		s.spare = nil
	}
	s.spareMu.Unlock()
	if unused {
		h.conn.Close()
		return
	}
	h.exit <- e
}

// call sends req and the files to the helper and returns its reply. The
// helper closes its side once it replied, then exits: with a reply, its
// exit (collected by the reaper all the same) is not waited for; without
// one, it tells what happened.
func (h *helperProc) call(req *lcRequest, files []*os.File) (*lcReply, error) {
	defer h.conn.Close()
	b, err := json.Marshal(req)
	if err == nil {
		err = h.send(b, files)
	}
	out, rerr := io.ReadAll(io.LimitReader(h.conn, 1<<20))
	if len(bytes.TrimSpace(out)) > 0 {
		var rep lcReply
		if err := json.Unmarshal(out, &rep); err == nil {
			return &rep, nil
		}
	}
	e := <-h.exit
	if len(bytes.TrimSpace(out)) > 0 {
		return nil, fmt.Errorf("helper %s ended with %s, bad reply %q", req.Op, describeExit(e), out)
	}
	if e.status.Exited() && e.status.ExitStatus() == lcproto.ExitUnused {
		return nil, errHelperUnused
	}
	return nil, fmt.Errorf("helper %s ended with %s and no reply (see the shim log): %v", req.Op, describeExit(e), errors.Join(err, rerr))
}

// send writes the request: the descriptors ride on its first byte.
func (h *helperProc) send(b []byte, files []*os.File) error {
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := h.conn.WriteMsgUnix(b[:1], oob, nil); err != nil {
		return err
	}
	if _, err := h.conn.Write(b[1:]); err != nil {
		return err
	}
	return h.conn.CloseWrite()
}

var errHelperUnused = errors.New("helper ended unused")

func describeExit(e exit) string {
	if e.status.Signaled() {
		return "signal " + e.status.Signal().String()
	}
	return "status " + strconv.Itoa(e.status.ExitStatus())
}

// helperFiles lists a process's stdio as the descriptors a request sends
// and notes their places in req.
func helperFiles(req *lcRequest, cs childStdio) []*os.File {
	var files []*os.File
	add := func(f *os.File) int {
		if f == nil {
			return -1
		}
		files = append(files, f)
		return len(files) - 1
	}
	req.Stdin, req.Stdout, req.Stderr = add(cs.stdin), add(cs.stdout), add(cs.stderr)
	req.ConsoleSocket = add(cs.consoleSock)
	return files
}

// runHelper runs req in a helper with the given stdio. fn, if not nil,
// gets the reply before the reaper's window closes: it registers the pids
// the reply names. The error is the reply's, or why there is none.
func (s *server) runHelper(req *lcRequest, cs childStdio, fn func(*lcReply)) (*lcReply, error) {
	s.reaper.begin()
	defer s.reaper.end()
	h, err := s.acquireHelper()
	if err != nil {
		return nil, err
	}
	return s.callHelper(h, req, cs, fn)
}

// acquireHelper is the spare, or a new helper. The caller has called
// s.reaper.begin, and passes the helper to callHelper, or closes its conn
// (the helper then exits).
func (s *server) acquireHelper() (*helperProc, error) {
	if h := s.takeSpare(); h != nil {
		return h, nil
	}
	return s.spawnHelper(false)
}

// callHelper is runHelper's call, with a helper from acquireHelper.
func (s *server) callHelper(h *helperProc, req *lcRequest, cs childStdio, fn func(*lcReply)) (*lcReply, error) {
	req.Root = s.runcRoot
	files := helperFiles(req, cs)
	for {
		rep, err := h.call(req, files)
		if errors.Is(err, errHelperUnused) {
			// A spare that timed out just then: start one.
			if h, err = s.spawnHelper(false); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		if fn != nil {
			fn(rep)
		}
		return rep, replyErr(rep)
	}
}

// preSpawn starts a helper ahead of the pod's first call, which then does
// not wait for the helper's exec and start-up; unused, it ends by itself
// after spareIdle. It returns at once: a call meanwhile waits for it
// (takeSpare), which is quicker than starting another.
func (s *server) preSpawn() {
	done := make(chan struct{})
	s.spareMu.Lock()
	s.spareSpawning = done
	s.spareMu.Unlock()
	go func() {
		defer close(done)
		s.reaper.begin()
		defer s.reaper.end()
		h, err := s.spawnHelper(true)
		s.spareMu.Lock()
		defer s.spareMu.Unlock()
		s.spareSpawning = nil
		if err != nil {
			s.log.Warn("start a spare helper", "err", err)
			return
		}
		select {
		case e := <-h.exit:
			// Gone already (its exit came before it was the spare).
			s.log.Warn("spare helper ended at once", "exit", describeExit(e))
			h.conn.Close()
		default:
			s.spare = h
		}
	}()
}

// takeSpare is the helper preSpawn started, if it still waits.
func (s *server) takeSpare() *helperProc {
	s.spareMu.Lock()
	spawning := s.spareSpawning
	s.spareMu.Unlock()
	if spawning != nil {
		<-spawning
	}
	s.spareMu.Lock()
	defer s.spareMu.Unlock()
	h := s.spare
	s.spare = nil
	return h
}

// pidAlive reports whether pid runs (exists and is no zombie).
func pidAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command's closing parenthesis.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	st := b[i+2]
	return st != 'Z' && st != 'X' && st != 'x'
}
