package portfwd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Options tune a forwarder. Zero values take the defaults.
type Options struct {
	// DialTimeout bounds the connection to the target (default 10s).
	DialTimeout time.Duration
	// UDPIdleTimeout closes a UDP session after this long without a
	// packet either way (default 60s).
	UDPIdleTimeout time.Duration
	// MaxUDPSessions caps the sessions of one forwarder; packets of new
	// clients beyond it are dropped (default 1024).
	MaxUDPSessions int
	Log            *slog.Logger
}

func (o *Options) defaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.UDPIdleTimeout <= 0 {
		o.UDPIdleTimeout = 60 * time.Second
	}
	if o.MaxUDPSessions <= 0 {
		o.MaxUDPSessions = 1024
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
}

// Forwarder forwards one host socket to one target.
type Forwarder struct {
	target string
	opts   Options
	l      net.Listener
	pc     net.PacketConn

	ctx    context.Context // ends with Close: cancels dials
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
	active atomic.Int64 // TCP connections being served

	mu       sync.Mutex
	closed   bool
	conns    map[net.Conn]struct{}
	sessions map[string]*session
}

func newForwarder(target string, opts Options) *Forwarder {
	opts.defaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &Forwarder{
		target:   target,
		opts:     opts,
		ctx:      ctx,
		cancel:   cancel,
		conns:    map[net.Conn]struct{}{},
		sessions: map[string]*session{},
	}
}

// TCP forwards connections accepted on l to target ("ip:port"). The
// forwarder owns l from now on.
func TCP(l net.Listener, target string, opts Options) *Forwarder {
	f := newForwarder(target, opts)
	f.l = l
	f.wg.Add(1)
	go f.acceptLoop()
	return f
}

// UDP forwards datagrams received on pc to target ("ip:port") and the
// replies back. The forwarder owns pc from now on.
func UDP(pc net.PacketConn, target string, opts Options) *Forwarder {
	f := newForwarder(target, opts)
	f.pc = pc
	f.wg.Add(1)
	go f.udpLoop()
	return f
}

// Addr is the host address the forwarder serves.
func (f *Forwarder) Addr() net.Addr {
	if f.l != nil {
		return f.l.Addr()
	}
	return f.pc.LocalAddr()
}

// Active counts open TCP connections or UDP sessions.
func (f *Forwarder) Active() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.l != nil {
		return int(f.active.Load())
	}
	return len(f.sessions)
}

// Close stops the forwarder and waits until all its goroutines are gone.
// It may be called more than once.
func (f *Forwarder) Close() error {
	var err error
	f.once.Do(func() {
		f.cancel()
		f.mu.Lock()
		f.closed = true
		for c := range f.conns {
			c.Close()
		}
		for _, s := range f.sessions {
			s.conn.Close()
		}
		f.mu.Unlock()
		if f.l != nil {
			err = f.l.Close()
		} else {
			err = f.pc.Close()
		}
	})
	f.wg.Wait()
	return err
}

// track registers a connection so that Close can end it; false once the
// forwarder is closing (the caller then closes c itself).
func (f *Forwarder) track(cs ...net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	for _, c := range cs {
		f.conns[c] = struct{}{}
	}
	return true
}

func (f *Forwarder) untrack(cs ...net.Conn) {
	f.mu.Lock()
	for _, c := range cs {
		delete(f.conns, c)
	}
	f.mu.Unlock()
}

// sleep waits d or until Close; false when closing.
func (f *Forwarder) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-f.ctx.Done():
		return false
	}
}

func (f *Forwarder) acceptLoop() {
	defer f.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := f.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || f.ctx.Err() != nil {
				return
			}
			// Out of descriptors and the like: wait, do not spin.
			f.opts.Log.Warn("hostPort accept", "addr", f.l.Addr(), "err", err)
			if !f.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		f.wg.Add(1)
		go f.handleTCP(c)
	}
}

func (f *Forwarder) handleTCP(c net.Conn) {
	defer f.wg.Done()
	if !f.track(c) {
		c.Close()
		return
	}
	f.active.Add(1)
	defer f.active.Add(-1)
	d := net.Dialer{Timeout: f.opts.DialTimeout}
	u, err := d.DialContext(f.ctx, "tcp", f.target)
	if err != nil {
		// Tell the client as a closed port would: with a reset.
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		c.Close()
		f.untrack(c)
		if f.ctx.Err() == nil {
			f.opts.Log.Debug("hostPort target unreachable", "target", f.target, "err", err)
		}
		return
	}
	if !f.track(u) {
		u.Close()
		c.Close()
		f.untrack(c)
		return
	}
	f.wg.Add(1)
	up := make(chan struct{})
	go func() {
		defer f.wg.Done()
		defer close(up)
		pipe(u, c)
	}()
	pipe(c, u)
	<-up
	c.Close()
	u.Close()
	f.untrack(c, u)
}

// pipe copies src to dst. At src's end of stream it half-closes dst so
// the peer sees EOF while the other direction goes on; on an error it
// closes both, which ends the other direction too.
func pipe(dst, src net.Conn) {
	_, err := io.Copy(dst, src)
	if err == nil {
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			if cw.CloseWrite() == nil {
				return
			}
		}
	}
	dst.Close()
	src.Close()
}

// session is one UDP client.
type session struct {
	client net.Addr
	conn   *net.UDPConn // connected to the target
	last   atomic.Int64 // unix nanos of the last packet either way
}

func (s *session) touch() { s.last.Store(time.Now().UnixNano()) }

func (f *Forwarder) udpLoop() {
	defer f.wg.Done()
	raddr, err := net.ResolveUDPAddr("udp", f.target)
	if err != nil {
		f.opts.Log.Error("hostPort target", "target", f.target, "err", err)
		return
	}
	buf := make([]byte, 64<<10)
	backoff := 5 * time.Millisecond
	for {
		n, from, err := f.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || f.ctx.Err() != nil {
				return
			}
			f.opts.Log.Warn("hostPort read", "addr", f.pc.LocalAddr(), "err", err)
			if !f.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s := f.sessionFor(from, raddr)
		if s == nil {
			continue
		}
		// Errors are those of UDP: a refused or lost datagram is dropped.
		_, _ = s.conn.Write(buf[:n])
	}
}

// sessionFor finds or opens the client's session and marks it active, or
// returns nil (closing, too many sessions, no socket).
func (f *Forwarder) sessionFor(from net.Addr, raddr *net.UDPAddr) *session {
	key := from.String()
	f.mu.Lock()
	s := f.sessions[key]
	if s != nil {
		s.touch() // under mu: expiry decides under mu too
		f.mu.Unlock()
		return s
	}
	full := len(f.sessions) >= f.opts.MaxUDPSessions
	f.mu.Unlock()
	if full {
		return nil
	}
	conn, err := net.DialUDP("udp", nil, raddr)
	if err != nil {
		f.opts.Log.Debug("hostPort UDP session", "target", f.target, "err", err)
		return nil
	}
	s = &session{client: from, conn: conn}
	s.touch()
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		conn.Close()
		return nil
	}
	f.sessions[key] = s
	f.wg.Add(1)
	f.mu.Unlock()
	go f.replies(key, s)
	return s
}

// replies sends the target's datagrams back to the session's client and
// ends the session when it has been idle for the timeout.
func (f *Forwarder) replies(key string, s *session) {
	defer f.wg.Done()
	defer s.conn.Close()
	idle := f.opts.UDPIdleTimeout
	buf := make([]byte, 64<<10)
	for {
		_ = s.conn.SetReadDeadline(time.Unix(0, s.last.Load()).Add(idle))
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				f.mu.Lock()
				if time.Since(time.Unix(0, s.last.Load())) >= idle {
					if f.sessions[key] == s {
						delete(f.sessions, key)
					}
					f.mu.Unlock()
					return
				}
				f.mu.Unlock()
				continue
			}
			if errors.Is(err, syscall.ECONNREFUSED) {
				// An ICMP port unreachable: the pod is not listening
				// (yet). The session stays.
				continue
			}
			f.opts.Log.Debug("hostPort UDP session", "target", f.target, "err", err)
			f.mu.Lock()
			if f.sessions[key] == s {
				delete(f.sessions, key)
			}
			f.mu.Unlock()
			return
		}
		s.touch()
		_, _ = f.pc.WriteTo(buf[:n], s.client)
	}
}
