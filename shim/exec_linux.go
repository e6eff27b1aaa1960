package shim

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// exec runs a process in a running container and streams its stdio over
// conn: the response frame carries its pid, then come output frames, and
// last a JSON frame with the exit. The process is killed if the client goes
// away or the timeout passes.
func (s *server) exec(conn *net.UnixConn, req *request) {
	er := req.Exec
	c := s.get(req.ID)
	switch {
	case er == nil || len(er.Args) == 0:
		_ = writeJSON(conn, errorResponse(fmt.Errorf("%w: exec without a command", ErrInvalid)))
		return
	case c == nil:
		_ = writeJSON(conn, errorResponse(fmt.Errorf("%w: %s", ErrNotFound, req.ID)))
		return
	case c.snapshot().Status != StatusRunning:
		_ = writeJSON(conn, errorResponse(fmt.Errorf("%w: %s", ErrNotRunning, req.ID)))
		return
	}
	cwd := er.Cwd
	if cwd == "" {
		cwd = c.spec.Cwd
	}
	if cwd == "" {
		cwd = "/"
	}
	pr := &lcProcess{
		Args:   er.Args,
		Env:    mergeEnv(c.spec.Env, er.Env),
		Cwd:    cwd,
		UID:    int(c.spec.User.UID),
		GID:    int(c.spec.User.GID),
		Groups: intGIDs(c.spec.User.AdditionalGIDs),
	}
	if er.Tty && er.Size != nil {
		pr.ConsoleWidth, pr.ConsoleHeight = er.Size.Width, er.Size.Height
	}
	pio, child, err := newProcessIO(er.Tty, er.Stdin)
	if err != nil {
		_ = writeJSON(conn, errorResponse(fmt.Errorf("exec in %s: %w", c.id, err)))
		return
	}
	defer pio.closeAll()
	exited := make(chan exit, 1)
	pid := 0
	// kill ends the process, if it still runs, through the reaper.
	kill := func() { s.reaper.signal(pid, unix.SIGKILL) }
	_, err = s.runHelper(&lcRequest{Op: lcExec, ID: c.id, Process: pr}, child, func(rep *lcReply) {
		if rep.Error == "" && rep.Pid > 0 {
			pid = rep.Pid
			s.reaper.register(pid, func(e exit) { exited <- e })
		}
	})
	pio.closeChildEnds()
	if err == nil {
		err = pio.afterStart()
		if err != nil {
			kill()
		}
	}
	if err != nil {
		if !c.initAlive() {
			// The container ended while the process was joining it.
			err = fmt.Errorf("%w: %v", ErrNotRunning, err)
		}
		_ = writeJSON(conn, errorResponse(fmt.Errorf("exec in %s: %w", c.id, err)))
		if pid > 0 {
			<-exited
		}
		return
	}
	var wmu sync.Mutex
	send := func(kind byte, b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		return writeFrame(conn, kind, b)
	}
	if err := writeJSON(conn, &response{Pid: pid}); err != nil {
		kill()
		<-exited
		return
	}

	// Output.
	var out sync.WaitGroup
	forward := func(f *os.File, kind byte) {
		out.Add(1)
		go func() {
			defer out.Done()
			buf := make([]byte, 32<<10)
			r := ttyReader{f}
			for {
				n, err := r.Read(buf)
				if n > 0 && send(kind, buf[:n]) != nil {
					return
				}
				if err != nil {
					return
				}
			}
		}()
	}
	stdin := pio.stdin
	if pio.tty {
		forward(pio.console, frameStdout)
		stdin = pio.console
	} else {
		forward(pio.stdout, frameStdout)
		forward(pio.stderr, frameStderr)
	}

	// Input, resizes, and the client's going away.
	go func() {
		for {
			kind, b, err := readFrame(conn)
			if err != nil {
				// Gone before the exit was sent: nobody waits for
				// this process any more.
				kill()
				return
			}
			switch kind {
			case frameStdin:
				if stdin != nil {
					_, _ = stdin.Write(b)
				}
			case frameEOF:
				if pio.stdin != nil {
					pio.stdin.Close()
				} else if pio.tty {
					_, _ = pio.console.Write([]byte{4}) // ^D
				}
			case frameResize:
				var sz TerminalSize
				if json.Unmarshal(b, &sz) == nil {
					pio.resize(sz)
				}
			}
		}
	}()

	var timedOut atomic.Bool
	if er.Timeout > 0 {
		t := time.AfterFunc(er.Timeout, func() {
			timedOut.Store(true)
			kill()
		})
		defer t.Stop()
	}
	e := <-exited
	drained := make(chan struct{})
	go func() { out.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(ioDrainTimeout):
	}
	resp := &response{ExitCode: e.code()}
	if timedOut.Load() {
		resp = errorResponse(fmt.Errorf("%w after %v: %s", ErrExecTimeout, er.Timeout, strings.Join(er.Args, " ")))
		resp.ExitCode = e.code()
	}
	b, _ := json.Marshal(resp)
	_ = send(frameJSON, b)
}

// mergeEnv is base with over's variables added or replaced.
func mergeEnv(base, over []string) []string {
	out := make([]string, 0, len(base)+len(over))
	idx := map[string]int{}
	for _, kv := range append(append([]string{}, base...), over...) {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	if !hasEnv(out, "PATH") {
		out = append(out, DefaultPathEnv)
	}
	return out
}
