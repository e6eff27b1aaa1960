package netns

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"syscall"

	"golang.org/x/sys/unix"
)

// InterfaceStats is the kernel's counters of one network interface.
type InterfaceStats struct {
	Name      string
	RxBytes   uint64
	RxPackets uint64
	RxErrors  uint64
	RxDropped uint64
	TxBytes   uint64
	TxPackets uint64
	TxErrors  uint64
	TxDropped uint64
}

// NetStatsReader reads the interface counters of one network namespace
// through a netlink socket opened inside it. The socket stays bound to
// that namespace (and keeps it alive) until Close: keep a reader only as
// long as the pod runs. It is safe for concurrent use.
type NetStatsReader struct {
	mu   sync.Mutex
	fd   int // -1 once closed
	seq  uint32
	buf  []byte
	path string
}

// netlinkTimeout bounds every send and receive of a link dump.
var netlinkTimeout = unix.Timeval{Sec: 5}

// OpenNetStats opens a reader for the network namespace pinned at
// netnsPath. The socket is made on a thread of its own that joins the
// namespace and is then thrown away (see Do), so no goroutine of the caller
// ever runs in the pod's namespace. A pin that is gone yields an error
// wrapping os.ErrNotExist.
func OpenNetStats(netnsPath string) (*NetStatsReader, error) {
	fd := -1
	err := Do(map[Kind]string{Net: netnsPath}, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("network stats: %w", err)
	}
	// A plain blocking socket with kernel timeouts: cheaper per dump than
	// going through the runtime's poller.
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &netlinkTimeout); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("network stats of %s: %w", netnsPath, err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("network stats of %s: bind netlink socket: %w", netnsPath, err)
	}
	return &NetStatsReader{fd: fd, path: netnsPath, buf: make([]byte, 32<<10)}, nil
}

// Close releases the socket (and with it the namespace).
func (r *NetStatsReader) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd >= 0 {
		unix.Close(r.fd)
		r.fd = -1
	}
}

// Read dumps the links of the namespace once and returns the counters of
// every interface but loopback, sorted by name.
func (r *NetStatsReader) Read() ([]InterfaceStats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fd < 0 {
		return nil, fmt.Errorf("network stats of %s: reader closed", r.path)
	}
	var out []InterfaceStats
	var err error
	for try := 0; ; try++ {
		out, err = r.dump()
		// A dump interrupted by a concurrent change may be inconsistent.
		if errors.Is(err, errDumpInterrupted) && try < 3 {
			continue
		}
		break
	}
	if err != nil {
		return nil, fmt.Errorf("network stats of %s: list links: %w", r.path, err)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

var errDumpInterrupted = errors.New("netlink dump interrupted")

// dump is one RTM_GETLINK dump, parsing only the name, flags and 64-bit
// counters of each link.
func (r *NetStatsReader) dump() ([]InterfaceStats, error) {
	r.seq++
	// struct nlmsghdr + struct ifinfomsg (family AF_UNSPEC: all links).
	var req [unix.SizeofNlMsghdr + unix.SizeofIfInfomsg]byte
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.RTM_GETLINK)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], r.seq)
	if err := unix.Sendto(r.fd, req[:], 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out []InterfaceStats
	interrupted := false
	for {
		n, from, err := unix.Recvfrom(r.fd, r.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		msgs, err := syscall.ParseNetlinkMessage(r.buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Seq != r.seq {
				continue // a late answer to an abandoned dump
			}
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if interrupted {
					return nil, errDumpInterrupted
				}
				return out, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := int32(ne.Uint32(m.Data)); errno != 0 {
						return nil, syscall.Errno(-errno)
					}
				}
				return out, nil
			case unix.RTM_NEWLINK:
				if s, ok := parseLink(m.Data); ok {
					out = append(out, s)
				}
			}
		}
	}
}

// parseLink reads an ifinfomsg and its attributes; loopback and links
// without 64-bit stats are skipped.
func parseLink(b []byte) (InterfaceStats, bool) {
	var s InterfaceStats
	if len(b) < unix.SizeofIfInfomsg {
		return s, false
	}
	ne := binary.NativeEndian
	if ne.Uint32(b[8:])&unix.IFF_LOOPBACK != 0 { // ifi_flags
		return s, false
	}
	stats := false
	for a := b[unix.SizeofIfInfomsg:]; len(a) >= unix.SizeofRtAttr; {
		l := int(ne.Uint16(a[0:]))
		typ := ne.Uint16(a[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofRtAttr || l > len(a) {
			break
		}
		v := a[unix.SizeofRtAttr:l]
		switch typ {
		case unix.IFLA_IFNAME:
			s.Name = strings.TrimRight(string(v), "\x00")
		case unix.IFLA_STATS64:
			// struct rtnl_link_stats64 begins with rx/tx packets, bytes,
			// errors and dropped, in that order.
			if len(v) >= 64 {
				u := func(i int) uint64 { return ne.Uint64(v[8*i:]) }
				s.RxPackets, s.TxPackets, s.RxBytes, s.TxBytes = u(0), u(1), u(2), u(3)
				s.RxErrors, s.TxErrors, s.RxDropped, s.TxDropped = u(4), u(5), u(6), u(7)
				stats = true
			}
		}
		adv := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if adv >= len(a) {
			break
		}
		a = a[adv:]
	}
	return s, stats && s.Name != ""
}

// NetworkStats reads the counters of every interface but loopback in the
// network namespace pinned at netnsPath, sorted by name: OpenNetStats,
// Read and Close.
func NetworkStats(netnsPath string) ([]InterfaceStats, error) {
	r, err := OpenNetStats(netnsPath)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return r.Read()
}
