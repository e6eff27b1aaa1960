package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"peapod/internal/mountinfo"
)

// daemon is the private peapod instance critest runs against.
type daemon struct {
	socket  string
	logPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
}

func startDaemon(bin, logPath string, args []string, rl *rootlessRun) (*daemon, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d := &daemon{logPath: logPath, exited: make(chan struct{})}
	for i, a := range args {
		if a == "--socket" && i+1 < len(args) {
			d.socket = args[i+1]
		}
	}
	d.cmd = exec.Command(bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C on the terminal reaches the harness,
	// which removes the pods before it stops the daemon.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if rl != nil {
		d.cmd.SysProcAttr.Credential = rl.credential()
		d.cmd.Env = rl.env()
	}
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { d.exitErr = d.cmd.Wait(); close(d.exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-d.exited:
			return nil, fmt.Errorf("peapod exited before it listened (%v); its log:\n%s", d.exitErr, tailFile(logPath, 30))
		default:
		}
		if c, err := net.Dial("unix", d.socket); err == nil {
			c.Close()
			return d, nil
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("peapod did not listen on %s within 30s; its log:\n%s", d.socket, tailFile(logPath, 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// removeAll removes every pod and container left behind (specs that failed
// half-way leave some): peapod's pods outlive the daemon by design.
func (d *daemon) removeAll() (n int, err error) {
	conn, err := grpc.NewClient("unix://"+d.socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	rt := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	// A request critest sent just before it ended may still be running in
	// the daemon: list again a moment later, until a list comes back empty.
	for round := 0; round < 4; round++ {
		pods, err := rt.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
		if err != nil {
			return n, errors.Join(append(errs, err)...)
		}
		cs, err := rt.ListContainers(ctx, &cri.ListContainersRequest{})
		if err != nil {
			return n, errors.Join(append(errs, err)...)
		}
		if round > 0 && len(pods.Items) == 0 && len(cs.Containers) == 0 {
			break
		}
		for _, p := range pods.Items {
			n++
			if _, err := rt.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				errs = append(errs, fmt.Errorf("stop pod %s: %w", p.Id, err))
			}
			if _, err := rt.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
				errs = append(errs, fmt.Errorf("remove pod %s: %w", p.Id, err))
			}
		}
		for _, c := range cs.Containers {
			n++
			if _, err := rt.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: c.Id}); err != nil {
				errs = append(errs, fmt.Errorf("remove container %s: %w", c.Id, err))
			}
		}
		time.Sleep(time.Second)
	}
	return n, errors.Join(errs...)
}

func (d *daemon) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// killUnder kills processes still running from files under dir, or with
// their root there (shims, pauses and containers of pods the daemon could
// not remove), and says what it did. They all descend from the daemon this
// harness started: dir is the harness's own work dir.
func killUnder(dir string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		root, _ := os.Readlink(filepath.Join("/proc", e.Name(), "root")) // a container's rootfs
		if strings.Contains(string(cmdline), dir) || strings.HasPrefix(exe, dir) || strings.HasPrefix(root, dir+"/") {
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				out = append(out, fmt.Sprintf("killed leftover pid %d: %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " ")))
			}
		}
	}
	return out
}

// unmountUnder lazily unmounts every mount point under dir, deepest first.
func unmountUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 {
			p := mountinfo.Unescape(fields[4])
			if p == dir || strings.HasPrefix(p, dir+"/") {
				points = append(points, p)
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var out []string
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err == nil {
			out = append(out, "unmounted leftover "+p)
		}
	}
	return out
}

// cleanIptables deletes the iptables rules CNI made for the network name
// (its comments say `name: "<network>"`) and the CNI-* chains they jump to.
// The daemon removes them itself with each pod; this is for pods it could
// not remove (crashed or interrupted run).
func cleanIptables(network string) []string {
	var out []string
	tag := `name: \"` + network + `\"`
	for _, table := range []string{"nat", "filter", "mangle"} {
		b, err := exec.Command("iptables-save", "-t", table).Output()
		if err != nil {
			continue
		}
		chains := map[string]bool{}
		for _, line := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(line, "-A ") || !strings.Contains(line, tag) {
				continue
			}
			f := strings.Fields(line)
			for i := 0; i+1 < len(f); i++ {
				if (f[i] == "-j" || f[i] == "-g") && strings.HasPrefix(f[i+1], "CNI-") && f[i+1] != "CNI-HOSTPORT-DNAT" &&
					f[i+1] != "CNI-HOSTPORT-SETMARK" && f[i+1] != "CNI-HOSTPORT-MASQ" {
					chains[f[i+1]] = true
				}
			}
			// iptables-save quotes like a shell does.
			if err := exec.Command("sh", "-c", "iptables -w -t "+table+" -D "+line[3:]).Run(); err == nil {
				out = append(out, "deleted iptables rule -t "+table+" "+line)
			}
		}
		for c := range chains {
			_ = exec.Command("iptables", "-w", "-t", table, "-F", c).Run()
			if exec.Command("iptables", "-w", "-t", table, "-X", c).Run() == nil {
				out = append(out, "deleted iptables chain -t "+table+" "+c)
			}
		}
	}
	return out
}
