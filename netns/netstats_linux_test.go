package netns

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestNetworkStatsCountsTrafficPerInterface pins two namespaces joined by a
// veth, sends 1 MiB of UDP from one to the other, and reads the counters of
// both ends through the pins.
func TestNetworkStatsCountsTrafficPerInterface(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make namespaces")
	}
	dir := t.TempDir()
	pinsA, err := Pin(startInNewNamespaces(t).Process.Pid, []Kind{Net}, filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Unpin(filepath.Join(dir, "a")) })
	pinsB, err := Pin(startInNewNamespaces(t).Process.Pid, []Kind{Net}, filepath.Join(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = Unpin(filepath.Join(dir, "b")) })

	// Only loopback so far: nothing to report.
	if st, err := NetworkStats(pinsA[Net]); err != nil || len(st) != 0 {
		t.Fatalf("fresh namespace: %+v %v", st, err)
	}

	err = Do(map[Kind]string{Net: pinsA[Net]}, func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		fd, err := unix.Open(pinsB[Net], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		peer, err := netlink.LinkByName("peer0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, fd); err != nil {
			return err
		}
		return setUp("eth0", "10.251.7.1/30")
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := Do(map[Kind]string{Net: pinsB[Net]}, func() error { return setUp("peer0", "10.251.7.2/30") }); err != nil {
		t.Fatal(err)
	}
	const chunk, n = 1000, 1024
	send := func(count int) error {
		return Do(map[Kind]string{Net: pinsA[Net]}, func() error {
			// Unconnected: the peer's port unreachable replies do not
			// fail the writes.
			c, err := net.ListenPacket("udp4", "10.251.7.1:0")
			if err != nil {
				return err
			}
			defer c.Close()
			to := &net.UDPAddr{IP: net.IPv4(10, 251, 7, 2), Port: 9}
			buf := make([]byte, chunk)
			for i := 0; i < count; i++ {
				if _, err := c.WriteTo(buf, to); err != nil {
					return err
				}
			}
			return nil
		})
	}
	read := func(pin string) InterfaceStats {
		t.Helper()
		st, err := NetworkStats(pin)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) != 1 {
			t.Fatalf("interfaces in %s: %+v (lo must be skipped)", pin, st)
		}
		return st[0]
	}
	// Resolve the neighbour first, so that no packet waits for ARP (or is
	// dropped while the carrier comes up).
	deadline := time.Now().Add(10 * time.Second)
	for start := read(pinsB[Net]).RxBytes; ; {
		if time.Now().After(deadline) {
			t.Fatal("no packet reached the peer within 10 s")
		}
		if err := send(1); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		if read(pinsB[Net]).RxBytes-start >= chunk {
			break
		}
	}
	a0, b0 := read(pinsA[Net]), read(pinsB[Net])
	if err := send(n); err != nil {
		t.Fatal(err)
	}
	a, b := read(pinsA[Net]), read(pinsB[Net])
	if a.Name != "eth0" || b.Name != "peer0" {
		t.Fatalf("interfaces: %+v / %+v", a, b)
	}
	// Payload plus UDP/IP/Ethernet headers (and maybe a stray packet).
	payload := uint64(chunk * n)
	if tx := a.TxBytes - a0.TxBytes; tx < payload || tx > payload*11/10 {
		t.Errorf("eth0 sent %d bytes, want about %d", tx, payload)
	}
	if a.TxPackets-a0.TxPackets < n {
		t.Errorf("eth0 sent %d packets, want at least %d", a.TxPackets-a0.TxPackets, n)
	}
	if rx := b.RxBytes - b0.RxBytes; rx < payload || rx > payload*11/10 {
		t.Errorf("peer0 received %d bytes, want about %d", rx, payload)
	}
	if a.TxErrors != 0 || b.RxErrors != 0 {
		t.Errorf("errors: %+v %+v", a, b)
	}

	// A kept reader sees the same counters as a fresh one.
	r, err := OpenNetStats(pinsA[Net])
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if st, err := r.Read(); err != nil || len(st) != 1 || st[0].TxBytes < a.TxBytes {
			t.Errorf("kept reader, read %d: %+v %v", i, st, err)
		}
	}
	r.Close()
	r.Close()
	if _, err := r.Read(); err == nil {
		t.Error("read of a closed reader succeeded")
	}

	if _, err := NetworkStats(filepath.Join(dir, "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing pin: %v, want ErrNotExist", err)
	}
}

func setUp(name, cidr string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, addr); err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

func BenchmarkNetworkStats(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("root")
	}
	b.Run("open-read-close", func(b *testing.B) {
		for b.Loop() {
			if _, err := NetworkStats("/proc/self/ns/net"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("kept", func(b *testing.B) {
		r, err := OpenNetStats("/proc/self/ns/net")
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		for b.Loop() {
			if _, err := r.Read(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
