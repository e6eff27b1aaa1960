package binder

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultTimeout bounds one request when Client.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// ErrClosed is returned once the connection to the parent is gone.
var ErrClosed = errors.New("binder: the connection to the parent is closed")

// Client asks the parent for host sockets. It is safe for concurrent use:
// requests may be in flight together and each gets its own reply.
type Client struct {
	// Timeout bounds one request; zero means DefaultTimeout.
	Timeout time.Duration

	conn *net.UnixConn

	mu      sync.Mutex
	next    uint64
	pending map[uint64]chan reply
	closed  bool

	done    chan struct{} // closed when the reader stops
	doneErr error         // why, valid after done
}

type reply struct {
	resp response
	file *os.File
}

// New makes a Client of the daemon's end of the socketpair, for example
// os.NewFile(3, "binder") for an inherited descriptor. New takes f over
// (it is closed, the Client keeps its own duplicate).
func New(f *os.File) (*Client, error) {
	defer f.Close()
	typ, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, fmt.Errorf("binder: fd %d is not a socket: %w", f.Fd(), err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("binder: fd %d is not a SOCK_SEQPACKET socket", f.Fd())
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("binder: %w", err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("binder: fd %d is not a unix socket", f.Fd())
	}
	cl := &Client{conn: uc, pending: map[uint64]chan reply{}, done: make(chan struct{})}
	go cl.read()
	return cl, nil
}

// Done is closed when the connection to the parent ends (the parent exited
// or Close was called); Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why Done was closed, or nil while the connection is up.
func (c *Client) Err() error {
	select {
	case <-c.done:
		return c.doneErr
	default:
		return nil
	}
}

// Close closes the connection. Sockets already handed out stay open.
func (c *Client) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	err := c.conn.Close()
	<-c.done
	return err
}

// Listen returns a TCP listener bound in the host's network namespace.
// network is tcp, tcp4 or tcp6; addr is ip:port, :port for all addresses.
func (c *Client) Listen(network, addr string) (net.Listener, error) {
	if strings.HasPrefix(network, "udp") {
		return nil, &Error{Msg: fmt.Sprintf("bind %s %s: Listen takes tcp, tcp4 or tcp6 (ListenPacket is for udp)", network, addr)}
	}
	f, err := c.do(network, addr)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("bind %s %s: received socket: %w", network, addr, err)
	}
	return l, nil
}

// ListenPacket returns a UDP socket bound in the host's network namespace.
// network is udp, udp4 or udp6.
func (c *Client) ListenPacket(network, addr string) (net.PacketConn, error) {
	if strings.HasPrefix(network, "tcp") {
		return nil, &Error{Msg: fmt.Sprintf("bind %s %s: ListenPacket takes udp, udp4 or udp6 (Listen is for tcp)", network, addr)}
	}
	f, err := c.do(network, addr)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pc, err := net.FilePacketConn(f)
	if err != nil {
		return nil, fmt.Errorf("bind %s %s: received socket: %w", network, addr, err)
	}
	return pc, nil
}

// do sends one request and waits for its reply.
func (c *Client) do(network, addr string) (*os.File, error) {
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.next++
	id := c.next
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
		// A reply that raced with a timeout: nobody takes its socket.
		select {
		case r := <-ch:
			if r.file != nil {
				r.file.Close()
			}
		default:
		}
	}()

	b, err := json.Marshal(request{ID: id, Network: network, Addr: addr})
	if err != nil {
		return nil, err
	}
	if len(b) > maxMsg {
		return nil, &Error{Msg: fmt.Sprintf("bind %s %s: request too long", network, addr)}
	}
	if _, _, err := c.conn.WriteMsgUnix(b, nil, nil); err != nil {
		if c.Err() != nil {
			return nil, fmt.Errorf("bind %s %s: %w", network, addr, ErrClosed)
		}
		return nil, fmt.Errorf("bind %s %s: send request: %w", network, addr, err)
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case r := <-ch:
		if r.resp.Error != "" {
			if r.file != nil {
				r.file.Close()
			}
			return nil, &Error{Msg: r.resp.Error, Errno: errnoFrom(r.resp.Errno)}
		}
		if r.file == nil {
			return nil, fmt.Errorf("bind %s %s: the parent replied without a socket", network, addr)
		}
		return r.file, nil
	case <-c.done:
		return nil, fmt.Errorf("bind %s %s: %w", network, addr, ErrClosed)
	case <-t.C:
		return nil, fmt.Errorf("bind %s %s: no reply from the parent within %v", network, addr, timeout)
	}
}

// read receives replies and hands each to its waiting request.
func (c *Client) read() {
	buf := make([]byte, maxMsg)
	oob := make([]byte, unix.CmsgSpace(16*4))
	var err error
	for {
		var n, oobn, flags int
		n, oobn, flags, _, err = c.conn.ReadMsgUnix(buf, oob)
		var files []*os.File
		if oobn > 0 {
			files = rightsFiles(oob[:oobn])
		}
		if err == nil && n == 0 {
			err = ErrClosed
		}
		if err != nil {
			closeFiles(files)
			break
		}
		var resp response
		if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || json.Unmarshal(buf[:n], &resp) != nil {
			closeFiles(files)
			continue // not ours to understand; the request times out
		}
		r := reply{resp: resp}
		if len(files) > 0 {
			r.file = files[0]
			closeFiles(files[1:])
		}
		c.mu.Lock()
		ch, ok := c.pending[resp.ID]
		if ok {
			delete(c.pending, resp.ID)
			ch <- r // buffered, one reply per request
		}
		c.mu.Unlock()
		if !ok && r.file != nil {
			r.file.Close()
		}
	}
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.doneErr = fmt.Errorf("%w: %v", ErrClosed, err)
	close(c.done)
}

// rightsFiles wraps every descriptor in the control messages; they arrive
// close-on-exec (Go receives with MSG_CMSG_CLOEXEC).
func rightsFiles(oob []byte) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil
	}
	var out []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			out = append(out, os.NewFile(uintptr(fd), "binder-socket"))
		}
	}
	return out
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func errnoFrom(n int) syscall.Errno {
	if n > 0 && n < 4096 {
		return syscall.Errno(n)
	}
	return 0
}
