package rootless

import (
	"errors"
	"net"
	"sync"
)

// HostListener binds a socket on the host (through bind, normally the
// binder's Listen) and a second one on the same port in the daemon's own
// network namespace, and accepts on both: a server there (the streaming
// server) is then reachable at the one address it hands out, from the host
// and from inside the rootless node alike. The second bind is best effort:
// when the port is taken inside, only the host's is served.
func HostListener(bind func(network, addr string) (net.Listener, error), network, addr string) (net.Listener, error) {
	host, err := bind(network, addr)
	if err != nil {
		return nil, err
	}
	inside, err := net.Listen(network, host.Addr().String())
	if err != nil {
		return host, nil
	}
	return newMultiListener(host, inside), nil
}

// multiListener accepts on several listeners; its Addr is the first's.
type multiListener struct {
	ls    []net.Listener
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

func newMultiListener(ls ...net.Listener) *multiListener {
	m := &multiListener{ls: ls, conns: make(chan net.Conn), done: make(chan struct{})}
	for _, l := range ls {
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			for {
				c, err := l.Accept()
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					return
				}
				select {
				case m.conns <- c:
				case <-m.done:
					c.Close()
					return
				}
			}
		}()
	}
	return m
}

func (m *multiListener) Accept() (net.Conn, error) {
	select {
	case c := <-m.conns:
		return c, nil
	case <-m.done:
		return nil, net.ErrClosed
	}
}

func (m *multiListener) Close() error {
	var err error
	m.once.Do(func() {
		close(m.done)
		for _, l := range m.ls {
			err = errors.Join(err, l.Close())
		}
		m.wg.Wait()
	})
	return err
}

func (m *multiListener) Addr() net.Addr { return m.ls[0].Addr() }
