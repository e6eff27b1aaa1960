package rootless

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"peapod/internal/procfs"
)

// Network helpers that give the holder's netns its outbound connectivity.
const (
	NetAuto        = "auto"
	NetSlirp4netns = "slirp4netns"
	NetPasta       = "pasta"
)

// ParseNet checks a network helper name: auto, slirp4netns or pasta.
func ParseNet(kind string) (string, error) {
	switch kind {
	case "", NetAuto:
		return NetAuto, nil
	case NetSlirp4netns, NetPasta:
		return kind, nil
	}
	return "", fmt.Errorf("rootless network %q: use auto, slirp4netns or pasta", kind)
}

// pickNet resolves "auto" to the first helper installed.
func pickNet(want string) (string, string, error) {
	switch want {
	case "", NetAuto:
		for _, n := range []string{NetSlirp4netns, NetPasta} {
			if p, err := exec.LookPath(n); err == nil {
				return n, p, nil
			}
		}
		return "", "", fmt.Errorf("neither slirp4netns nor pasta is installed: apt-get install slirp4netns (or passt)")
	case NetSlirp4netns, NetPasta:
		p, err := exec.LookPath(want)
		if err != nil {
			pkg := map[string]string{NetSlirp4netns: "slirp4netns", NetPasta: "passt"}[want]
			return "", "", fmt.Errorf("%s is not installed: apt-get install %s", want, pkg)
		}
		return want, p, nil
	}
	return "", "", fmt.Errorf("rootless network %q: use auto, slirp4netns or pasta", want)
}

// NetOptions tune the outbound network of the holder's netns.
type NetOptions struct {
	// Kind is auto, slirp4netns or pasta.
	Kind string
	// HostLoopback lets the daemon and pods reach the host's 127.0.0.1
	// through the gateway address (10.0.2.2 with slirp4netns). Off by
	// default: a pod could otherwise reach services that trust loopback.
	HostLoopback bool
	// MTU of the tap device (default 65520).
	MTU int
}

// startNet attaches the network helper to the holder's namespaces and
// waits until the tap device is configured.
// Its output goes to logPath, a file: a pipe to the parent would break
// when the parent exits, and the helper lives on with the holder.
func startNet(opts NetOptions, holder proc, logPath string) (string, proc, error) {
	kind, path, err := pickNet(opts.Kind)
	if err != nil {
		return "", proc{}, err
	}
	mtu := opts.MTU
	if mtu == 0 {
		mtu = 65520
	}
	pid := strconv.Itoa(holder.PID)
	var cmd *exec.Cmd
	var ready *os.File
	switch kind {
	case NetSlirp4netns:
		r, w, err := os.Pipe()
		if err != nil {
			return "", proc{}, err
		}
		defer r.Close()
		args := []string{"--configure", "--mtu=" + strconv.Itoa(mtu), "--ready-fd=3",
			"--userns-path=/proc/" + pid + "/ns/user", "--netns-type=path", "--enable-seccomp"}
		if !opts.HostLoopback {
			args = append(args, "--disable-host-loopback")
		}
		args = append(args, "/proc/"+pid+"/ns/net", "tap0")
		cmd = exec.Command(path, args...)
		cmd.ExtraFiles = []*os.File{w}
		ready = r
		defer w.Close()
	case NetPasta:
		args := []string{"--config-net", "--foreground", "--quiet", "--mtu", strconv.Itoa(mtu),
			"-t", "none", "-u", "none", "-T", "none", "-U", "none", "--ns-ifname", "tap0"}
		if !opts.HostLoopback {
			args = append(args, "--no-map-gw")
		}
		args = append(args, "--userns", "/proc/"+pid+"/ns/user", "--netns", "/proc/"+pid+"/ns/net")
		cmd = exec.Command(path, args...)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", proc{}, err
	}
	defer logf.Close()
	out := func() string { b, _ := os.ReadFile(logPath); return trimOutput(b) }
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return "", proc{}, fmt.Errorf("start %s: %w", kind, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	st, err := procfs.StartTime(cmd.Process.Pid)
	if err != nil {
		_ = cmd.Process.Kill()
		return "", proc{}, err
	}
	p := proc{PID: cmd.Process.Pid, Start: st}
	if ready != nil {
		got := make(chan error, 1)
		go func() {
			b := make([]byte, 1)
			_, err := ready.Read(b)
			got <- err
		}()
		select {
		case err := <-got:
			if err == nil {
				return kind, p, nil
			}
		case <-time.After(10 * time.Second):
		case <-exited:
		}
		p.kill()
		return "", proc{}, fmt.Errorf("%s did not configure tap0: %s", kind, out())
	}
	// pasta has no ready signal; it configures the namespace before it
	// enters its loop, and exits at once when it cannot.
	select {
	case <-exited:
		return "", proc{}, fmt.Errorf("%s exited: %s", kind, out())
	case <-time.After(300 * time.Millisecond):
		return kind, p, nil
	}
}
