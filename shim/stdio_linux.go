package shim

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// processIO is the shim's side of a container process's stdio: pipes, or
// the master of a terminal that `peapod init` creates and passes back over
// a console socket.
type processIO struct {
	tty bool

	stdin          *os.File // shim's write end; nil: /dev/null
	stdout, stderr *os.File // shim's read ends (pipes)
	console        *os.File // terminal master (tty)
	consoleSock    *os.File // shim's end of the console socket

	child []*os.File // the process's ends, closed in the shim after start
}

// childStdio is the process's side of its stdio, which a helper hands to
// libcontainer: pipe ends, or the console socket over which `init` sends
// back the terminal master. A nil file is none (/dev/null for a pipe).
type childStdio struct {
	stdin, stdout, stderr, consoleSock *os.File
}

// newProcessIO prepares the stdio of a process.
func newProcessIO(tty, stdin bool) (*processIO, childStdio, error) {
	pio := &processIO{tty: tty}
	var cs childStdio
	if tty {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, cs, fmt.Errorf("console socket: %w", err)
		}
		// Non-blocking: the master is received through the poller.
		_ = unix.SetNonblock(fds[0], true)
		pio.consoleSock = os.NewFile(uintptr(fds[0]), "console-socket")
		cs.consoleSock = os.NewFile(uintptr(fds[1]), "console-socket-child")
		pio.child = append(pio.child, cs.consoleSock)
		return pio, cs, nil
	}
	if stdin {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, cs, err
		}
		pio.stdin, cs.stdin = w, r
		pio.child = append(pio.child, r)
	}
	r, w, err := os.Pipe()
	if err != nil {
		pio.closeAll()
		return nil, cs, err
	}
	pio.stdout, cs.stdout = r, w
	pio.child = append(pio.child, w)
	r, w, err = os.Pipe()
	if err != nil {
		pio.closeAll()
		return nil, cs, err
	}
	pio.stderr, cs.stderr = r, w
	pio.child = append(pio.child, w)
	return pio, cs, nil
}

// afterStart receives the terminal master of a tty process.
func (pio *processIO) afterStart() error {
	if !pio.tty {
		return nil
	}
	f, err := recvFile(pio.consoleSock)
	pio.consoleSock.Close()
	pio.consoleSock = nil
	if err != nil {
		return err
	}
	pio.console = f
	return nil
}

func (pio *processIO) closeChildEnds() {
	for _, f := range pio.child {
		f.Close()
	}
	pio.child = nil
}

func (pio *processIO) closeAll() {
	pio.closeChildEnds()
	for _, f := range []*os.File{pio.stdin, pio.stdout, pio.stderr, pio.console, pio.consoleSock} {
		if f != nil {
			f.Close()
		}
	}
}

// pump copies the output into the CRI log, and to attached clients, until
// EOF; then it closes done. A terminal master stays open for stdin and
// resizes; closeAll closes it.
func (pio *processIO) pump(l *criLog, fan *fanout, done chan struct{}) {
	var wg sync.WaitGroup
	copyTo := func(f *os.File, stream string, kind byte, closeAtEOF bool) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if closeAtEOF {
				defer f.Close()
			}
			copyLines(io.TeeReader(ttyReader{f}, fan.writer(kind)), stream, l)
		}()
	}
	if pio.tty {
		copyTo(pio.console, streamStdout, frameStdout, false)
	} else {
		copyTo(pio.stdout, streamStdout, frameStdout, true)
		copyTo(pio.stderr, streamStderr, frameStderr, true)
	}
	go func() {
		wg.Wait()
		close(done)
	}()
}

// input is where a client's stdin goes: the stdin pipe, or the terminal.
func (pio *processIO) input() *os.File {
	if pio.tty {
		return pio.console
	}
	return pio.stdin
}

// ttyReader reads a terminal master as a stream: EIO, what a master reads
// once every slave is closed, is its EOF.
type ttyReader struct{ f *os.File }

func (r ttyReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if errors.Is(err, unix.EIO) {
		err = io.EOF
	}
	return n, err
}

// recvFile receives one file descriptor sent with SCM_RIGHTS.
func recvFile(sock *os.File) (*os.File, error) {
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	rc, err := sock.SyscallConn()
	if err != nil {
		return nil, err
	}
	var n, oobn int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), name, oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return nil, fmt.Errorf("receive terminal: %w", err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, fmt.Errorf("receive terminal: no descriptor (%v)", err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		return nil, fmt.Errorf("receive terminal: no descriptor (%v)", err)
	}
	// Non-blocking, the master is read through the runtime's poller
	// instead of a blocked thread.
	_ = unix.SetNonblock(fds[0], true)
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

// resize sets the terminal size of a tty process.
func (pio *processIO) resize(sz TerminalSize) {
	if pio.console == nil || sz.Width == 0 || sz.Height == 0 {
		return
	}
	_ = unix.IoctlSetWinsize(int(pio.console.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: sz.Height, Col: sz.Width})
}

// fanout copies a container's live output to its attached clients. A
// client that cannot keep up is dropped rather than slowing the container.
type fanout struct {
	mu   sync.Mutex
	subs map[*attachment]struct{}
}

type attachment struct {
	send func(kind byte, b []byte) error
}

func (f *fanout) add(a *attachment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subs == nil {
		f.subs = map[*attachment]struct{}{}
	}
	f.subs[a] = struct{}{}
}

func (f *fanout) remove(a *attachment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.subs, a)
}

func (f *fanout) writer(kind byte) io.Writer { return fanoutWriter{f, kind} }

type fanoutWriter struct {
	f    *fanout
	kind byte
}

// Write never fails: the log copier behind it must go on.
func (w fanoutWriter) Write(p []byte) (int, error) {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	for a := range w.f.subs {
		if a.send(w.kind, p) != nil {
			delete(w.f.subs, a)
		}
	}
	return len(p), nil
}
