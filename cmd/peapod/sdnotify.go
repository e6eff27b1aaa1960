package main

import (
	"net"
	"os"
)

// sdNotify sends state (READY=1, STOPPING=1, …) to the service manager
// that started peapod, when it asked for it: systemd's Type=notify sets
// NOTIFY_SOCKET to a datagram socket, "@" naming one in the abstract
// namespace. Without NOTIFY_SOCKET it does nothing. systemd then starts
// the units ordered after peapod (a kubelet) only once its CRI socket
// answers, and `systemctl start peapod` returns then, not at the fork.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if addr[0] == '@' {
		addr = "\x00" + addr[1:]
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = conn.Write([]byte(state))
	return err
}
