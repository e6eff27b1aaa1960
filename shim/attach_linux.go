package shim

import (
	"encoding/json"
	"fmt"
	"net"
	"sync"
	"time"
)

// attachWriteTimeout drops an attached client that stops reading.
const attachWriteTimeout = 5 * time.Second

// attach streams a container's live output to conn and conn's stdin frames
// to the container, until the container exits (a last JSON frame carries
// its state) or the client goes away.
func (s *server) attach(conn *net.UnixConn, req *request) {
	c := s.get(req.ID)
	if c == nil {
		_ = writeJSON(conn, errorResponse(fmt.Errorf("%w: %s", ErrNotFound, req.ID)))
		return
	}
	if c.snapshot().Status == StatusExited {
		_ = writeJSON(conn, errorResponse(fmt.Errorf("%w: %s", ErrNotRunning, req.ID)))
		return
	}
	var wmu sync.Mutex
	send := func(kind byte, b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(attachWriteTimeout))
		return writeFrame(conn, kind, b)
	}
	if err := writeJSON(conn, &response{}); err != nil {
		return
	}
	a := &attachment{send: send}
	c.fan.add(a)
	defer c.fan.remove(a)

	gone := make(chan struct{})
	go func() {
		defer close(gone)
		in := c.pio.input()
		for {
			kind, b, err := readFrame(conn)
			if err != nil {
				return
			}
			switch kind {
			case frameStdin:
				if in != nil {
					_, _ = in.Write(b)
				}
			case frameEOF:
				if req.CloseStdin && c.pio.stdin != nil {
					c.pio.stdin.Close()
				}
			case frameResize:
				var sz TerminalSize
				if json.Unmarshal(b, &sz) == nil {
					c.pio.resize(sz)
				}
			}
		}
	}()
	select {
	case <-c.exited:
		st := c.snapshot()
		b, _ := json.Marshal(&response{State: &st})
		_ = send(frameJSON, b)
	case <-gone:
	}
}
