package sandbox

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Files prepared for the pod's containers, under the sandbox's runtime dir.
const (
	hostnameFile = "hostname"
	resolvFile   = "resolv.conf"
	hostsFile    = "hosts"
	shmDir       = "shm"
	nsDir        = "ns"

	// shmSizeBytes matches what Docker and containerd give a pod.
	shmSizeBytes = 64 << 20
)

// hostResolvConf is read when the pod asks for no DNS settings.
var hostResolvConf = "/etc/resolv.conf"

func resolvConfContent(dns *DNSConfig) ([]byte, error) {
	if dns == nil || (len(dns.Servers) == 0 && len(dns.Searches) == 0 && len(dns.Options) == 0) {
		b, err := os.ReadFile(hostResolvConf)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return b, err
	}
	var sb strings.Builder
	for _, s := range dns.Servers {
		sb.WriteString("nameserver " + s + "\n")
	}
	if len(dns.Searches) > 0 {
		sb.WriteString("search " + strings.Join(dns.Searches, " ") + "\n")
	}
	if len(dns.Options) > 0 {
		sb.WriteString("options " + strings.Join(dns.Options, " ") + "\n")
	}
	return []byte(sb.String()), nil
}

func hostsContent(hostname, ip string) []byte {
	var sb strings.Builder
	sb.WriteString("127.0.0.1\tlocalhost\n")
	sb.WriteString("::1\tlocalhost ip6-localhost ip6-loopback\n")
	sb.WriteString("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	if ip != "" && hostname != "" {
		sb.WriteString(ip + "\t" + hostname + "\n")
	}
	return []byte(sb.String())
}

// writePodFiles writes hostname, resolv.conf and hosts for the containers.
// They are written once, into the sandbox's new runtime dir, before the
// sandbox is ready: no reader can see them half-written, and a daemon
// that dies meanwhile rolls the sandbox back. So plain writes do.
func writePodFiles(dir, hostname, ip string, dns *DNSConfig) error {
	resolv, err := resolvConfContent(dns)
	if err != nil {
		return fmt.Errorf("resolv.conf: %w", err)
	}
	files := map[string][]byte{
		hostnameFile: []byte(hostname + "\n"),
		resolvFile:   resolv,
		hostsFile:    hostsContent(hostname, ip),
	}
	for name, content := range files {
		if err := writeNewFile(filepath.Join(dir, name), content, 0o644); err != nil {
			return fmt.Errorf("write pod %s: %w", name, err)
		}
	}
	return nil
}

// writeNewFile writes a file that must not exist yet, with mode perm
// whatever the daemon's umask: the containers' users read these.
func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// mountShm mounts the pod's /dev/shm tmpfs.
func mountShm(dir string) error {
	p := filepath.Join(dir, shmDir)
	if err := os.MkdirAll(p, 0o755); err != nil {
		return fmt.Errorf("pod shm: %w", err)
	}
	opts := fmt.Sprintf("mode=1777,size=%d", shmSizeBytes)
	if err := unix.Mount("shm", p, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mount pod shm on %s: %w", p, err)
	}
	return nil
}

// unmountShm unmounts every layer mounted on the pod's shm dir.
func unmountShm(dir string) error {
	p := filepath.Join(dir, shmDir)
	for i := 0; i < 8; i++ {
		err := unix.Unmount(p, unix.MNT_DETACH)
		if err == nil {
			continue
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("unmount pod shm %s: %w", p, err)
	}
	return nil
}
