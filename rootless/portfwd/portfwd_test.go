package portfwd

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// settleGoroutines waits until the goroutine count is back to n.
func settleGoroutines(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// server runs handle for every connection on a fresh 127.0.0.1 listener
// until the test ends.
func server(t *testing.T, handle func(c *net.TCPConn)) string {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c.(*net.TCPConn))
			}()
		}
	}()
	return l.Addr().String()
}

func echo(c *net.TCPConn) {
	io.Copy(c, c)
	c.CloseWrite()
}

func forwardTCP(t *testing.T, target string, opts Options) *Forwarder {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := TCP(l, target, opts)
	t.Cleanup(func() { f.Close() })
	return f
}

func dial(t *testing.T, f *Forwarder) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp4", f.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

func TestTCPHalfClose(t *testing.T) {
	// Client finishes first: the server sees EOF and still answers.
	target := server(t, func(c *net.TCPConn) {
		b, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(b))
	})
	f := forwardTCP(t, target, Options{})
	c := dial(t, f)
	c.Write([]byte("hello through the forwarder"))
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(b) != "HELLO THROUGH THE FORWARDER" {
		t.Fatalf("client half-close: got %q, %v", b, err)
	}

	// Server finishes first: the client sees EOF and can still send.
	got := make(chan string, 1)
	target2 := server(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	f2 := forwardTCP(t, target2, Options{})
	c = dial(t, f2)
	b, err = io.ReadAll(c) // ends at the server's half-close
	if err != nil || string(b) != "banner" {
		t.Fatalf("server half-close: read %q, %v", b, err)
	}
	c.Write([]byte("still talking after your EOF"))
	c.CloseWrite()
	select {
	case s := <-got:
		if s != "still talking after your EOF" {
			t.Fatalf("server got %q after its half-close", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server never saw the client's data after its own half-close")
	}
	c.Close()
}

func TestTCPConcurrent(t *testing.T) {
	f := forwardTCP(t, server(t, echo), Options{})
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp4", f.Addr().String(), 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(30 * time.Second))
			msg := make([]byte, 64<<10)
			for j := range msg {
				msg[j] = byte(i*7 + j)
			}
			<-start // all connections open at once
			go func() {
				c.Write(msg)
				c.(*net.TCPConn).CloseWrite()
			}()
			b, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(b, msg) {
				errs <- fmt.Errorf("conn %d: %d bytes back of %d, %v", i, len(b), len(msg), err)
			}
		}()
	}
	// Wait until all are being served, then let them talk.
	deadline := time.Now().Add(5 * time.Second)
	for f.Active() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if a := f.Active(); a != n {
		t.Errorf("%d connections active, want %d", a, n)
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestTCPLarge(t *testing.T) {
	const size = 50 << 20
	f := forwardTCP(t, server(t, echo), Options{})
	c := dial(t, f)
	defer c.Close()
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		r := rand.New(rand.NewPCG(1, 2))
		buf := make([]byte, 256<<10)
		left := size
		for left > 0 {
			for i := 0; i < len(buf); i += 8 {
				v := r.Uint64()
				for k := 0; k < 8; k++ {
					buf[i+k] = byte(v >> (8 * k))
				}
			}
			chunk := buf[:min(len(buf), left)]
			sent.Write(chunk)
			if _, err := c.Write(chunk); err != nil {
				werr <- err
				return
			}
			left -= len(chunk)
		}
		werr <- c.CloseWrite()
	}()
	start := time.Now()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if n != size {
		t.Fatalf("%d bytes back, want %d", n, size)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatal("50 MB came back different")
	}
	t.Logf("50 MB echoed through the forwarder in %v", time.Since(start))
}

func TestTCPTargetDown(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	f := forwardTCP(t, dead, Options{})
	// The reset may come so soon that connect itself reports it.
	c, err := net.DialTimeout("tcp4", f.Addr().String(), 2*time.Second)
	if err != nil {
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("dial: want success or a reset, got %v", err)
		}
		return
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Fatalf("connection to a forwarder whose target is down: want it closed at once, got %v", err)
	}
}

// udpServer answers each datagram with "echo:" + payload, from its port,
// except those starting with "quiet".
func udpServer(t *testing.T) (string, *sync.Map) {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peers := &sync.Map{}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			peers.Store(from.String(), true)
			if bytes.HasPrefix(buf[:n], []byte("quiet")) {
				continue
			}
			pc.WriteTo(append([]byte("echo:"), buf[:n]...), from)
		}
	}()
	return pc.LocalAddr().String(), peers
}

func forwardUDP(t *testing.T, target string, opts Options) *Forwarder {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := UDP(pc, target, opts)
	t.Cleanup(func() { f.Close() })
	return f
}

// ask sends msg and waits for the reply, retrying a few times (UDP).
func ask(c net.Conn, msg string) (string, error) {
	buf := make([]byte, 2048)
	var err error
	for range 5 {
		if _, err = c.Write([]byte(msg)); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		var n int
		n, err = c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", err
}

func TestUDP(t *testing.T) {
	target, peers := udpServer(t)
	f := forwardUDP(t, target, Options{})
	const clients, requests = 6, 20
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("udp4", f.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for j := range requests {
				msg := fmt.Sprintf("client %d request %d", i, j)
				got, err := ask(c, msg)
				if err != nil {
					errs <- fmt.Errorf("client %d: %v", i, err)
					return
				}
				if got != "echo:"+msg {
					errs <- fmt.Errorf("client %d got %q for %q", i, got, msg)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// One session, so one source address at the server, per client.
	if a := f.Active(); a != clients {
		t.Errorf("%d UDP sessions, want %d", a, clients)
	}
	n := 0
	peers.Range(func(k, v any) bool { n++; return true })
	if n != clients {
		t.Errorf("server saw %d peers, want %d", n, clients)
	}
}

func TestUDPIdleExpiry(t *testing.T) {
	target, peers := udpServer(t)
	npeers := func() int {
		n := 0
		peers.Range(func(k, v any) bool { n++; return true })
		return n
	}
	// The idle timeout is 6 gaps long, so that a loaded host's late
	// wake-up does not end a session the traffic keeps alive.
	f := forwardUDP(t, target, Options{UDPIdleTimeout: 600 * time.Millisecond})
	c, err := net.Dial("udp4", f.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := ask(c, "one"); err != nil || got != "echo:one" {
		t.Fatalf("%q %v", got, err)
	}
	if a := f.Active(); a != 1 {
		t.Fatalf("%d sessions after a request, want 1", a)
	}
	// Traffic keeps the session alive past the timeout: both ways, and
	// one way only (from the client; the server does not answer).
	for range 8 {
		time.Sleep(100 * time.Millisecond)
		if got, err := ask(c, "keep"); err != nil || got != "echo:keep" {
			t.Fatalf("%q %v", got, err)
		}
	}
	for range 10 {
		time.Sleep(100 * time.Millisecond)
		if _, err := c.Write([]byte("quiet")); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := ask(c, "still"); err != nil || got != "echo:still" {
		t.Fatalf("%q %v", got, err)
	}
	if a, p := f.Active(), npeers(); a != 1 || p != 1 {
		t.Fatalf("%d sessions and %d peers at the server while active, want 1 and 1 (the same session throughout)", a, p)
	}
	deadline := time.Now().Add(3 * time.Second)
	for f.Active() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle UDP session never expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A new packet opens a new session.
	if got, err := ask(c, "two"); err != nil || got != "echo:two" {
		t.Fatalf("after expiry: %q %v", got, err)
	}
	if a, p := f.Active(), npeers(); a != 1 || p != 2 {
		t.Fatalf("%d sessions and %d peers after a new request, want 1 and 2", a, p)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	// Servers first: their goroutines live as long as the test.
	tcpTarget := server(t, echo)
	udpTarget, _ := udpServer(t)
	// No GC, so no finalizer closes a socket the forwarder forgot.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	base := runtime.NumGoroutine()
	baseFDs := countSockets(t)

	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tf := TCP(l, tcpTarget, Options{})
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	uf := UDP(pc, udpTarget, Options{})

	// Connections that end before Close must leave nothing either.
	for range 3 {
		c, err := net.Dial("tcp4", tf.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("done"))
		c.(*net.TCPConn).CloseWrite()
		if b, err := io.ReadAll(c); err != nil || string(b) != "done" {
			t.Fatalf("%q %v", b, err)
		}
		c.Close()
	}
	for deadline := time.Now().Add(5 * time.Second); tf.Active() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	// Open connections with data in flight, and UDP sessions.
	var conns []net.Conn
	for range 5 {
		c, err := net.Dial("tcp4", tf.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.Write([]byte("ping"))
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		u, err := net.Dial("udp4", uf.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, u)
		if _, err := ask(u, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if tf.Active() != 5 || uf.Active() != 5 {
		t.Fatalf("active: tcp %d, udp %d; want 5 each", tf.Active(), uf.Active())
	}

	done := make(chan struct{})
	go func() {
		tf.Close()
		uf.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return with connections open")
	}
	if tf.Active() != 0 || uf.Active() != 0 {
		t.Errorf("after Close: tcp %d, udp %d active", tf.Active(), uf.Active())
	}
	// The clients' connections were closed by the forwarder.
	for _, c := range conns[:1] {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil {
			t.Error("TCP client still connected after Close")
		}
	}
	for _, c := range conns {
		c.Close()
	}
	// The ports are free again.
	if l2, err := net.Listen("tcp4", tf.Addr().String()); err != nil {
		t.Errorf("TCP port not freed by Close: %v", err)
	} else {
		l2.Close()
	}
	if p2, err := net.ListenPacket("udp4", uf.Addr().String()); err != nil {
		t.Errorf("UDP port not freed by Close: %v", err)
	} else {
		p2.Close()
	}
	if err := tf.Close(); err != nil && !strings.Contains(err.Error(), "closed") {
		t.Errorf("second Close: %v", err)
	}
	settleGoroutines(t, base)
	// No socket of a connection, a session or the forwarders stays open.
	deadline := time.Now().Add(5 * time.Second)
	for countSockets(t) > baseFDs && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := countSockets(t); n != baseFDs {
		t.Errorf("sockets: %d before, %d after Close", baseFDs, n)
	}
}

// countSockets counts this process's open sockets. Pipes are left out:
// the runtime keeps a pool of them for splice(2) and closes them at a
// later GC.
func countSockets(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if l, _ := os.Readlink("/proc/self/fd/" + e.Name()); strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}
