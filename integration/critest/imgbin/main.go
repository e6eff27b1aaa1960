// Command imgbin is the one small static program the critest harness puts
// into the images it builds where busybox alone cannot stand in for the
// upstream content. It is a multi-call binary, chosen by the name it runs as:
//
//   - nginx: a stand-in for nginx in the nginx images. It re-executes itself
//     so that its command line reads "nginx: master process nginx -g daemon
//     off;" (critest greps /proc/1/cmdline for "master process"), keeps the
//     process name "nginx" (critest runs `pidof nginx`), writes its pid to
//     /var/run/nginx.pid, and serves /usr/share/nginx/html with a busybox
//     `httpd` child on the port of the `listen` line of
//     /etc/nginx/conf.d/default.conf (80 without one). TERM, QUIT and INT stop
//     the child and then the master.
//   - nnp: the no-new-privileges probe of k8s' nonewprivs image. Installed
//     setuid root, it prints "Effective uid: N".
//   - pause: a pause for the pause:3.9 image: sleeps, reaps children, exits 0
//     on TERM or INT.
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

const nginxTitle = "nginx: master process nginx -g daemon off;"

func main() {
	name := filepath.Base(os.Args[0])
	switch {
	case strings.HasPrefix(name, "nginx"):
		os.Exit(nginx())
	case name == "nnp":
		fmt.Printf("Effective uid: %d\n", syscall.Geteuid())
	case name == "pause":
		pause()
	default:
		fmt.Fprintf(os.Stderr, "imgbin: run as nginx, nnp or pause, not %q\n", name)
		os.Exit(2)
	}
}

func nginx() int {
	if os.Args[0] != nginxTitle {
		// The kernel takes the process name (comm) from the file executed,
		// and /proc/PID/cmdline from argv: exec the same file again with the
		// master's title as its only argument.
		self, err := os.Executable()
		if err == nil {
			err = syscall.Exec(self, []string{nginxTitle}, os.Environ())
		}
		fmt.Fprintf(os.Stderr, "nginx: re-exec: %v\n", err)
		return 1
	}
	port := listenPort("/etc/nginx/conf.d/default.conf")
	root := "/usr/share/nginx/html"
	if err := os.MkdirAll("/var/run", 0o755); err == nil {
		_ = os.WriteFile("/var/run/nginx.pid", []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGINT, syscall.SIGHUP)
	child := exec.Command("/bin/httpd", "-f", "-v", "-p", "0.0.0.0:"+port, "-h", root)
	child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
	fmt.Fprintf(os.Stderr, "nginx: pid %d, serving %s on 0.0.0.0:%s with busybox httpd\n", os.Getpid(), root, port)
	if err := child.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "nginx: start httpd: %v\n", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- child.Wait() }()
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGHUP {
				continue // nginx reloads on HUP; there is nothing to reload
			}
			_ = child.Process.Signal(syscall.SIGTERM)
			<-done
			_ = os.Remove("/var/run/nginx.pid")
			return 0
		case err := <-done:
			fmt.Fprintf(os.Stderr, "nginx: httpd exited: %v\n", err)
			return 1
		}
	}
}

// listenPort returns the port of the first "listen N;" line of an nginx
// server config, or "80".
func listenPort(conf string) string {
	f, err := os.Open(conf)
	if err != nil {
		return "80"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(strings.TrimSuffix(strings.TrimSpace(sc.Text()), ";"))
		if len(fields) >= 2 && fields[0] == "listen" {
			p := fields[1]
			if i := strings.LastIndex(p, ":"); i >= 0 {
				p = p[i+1:]
			}
			if _, err := strconv.Atoi(p); err == nil {
				return p
			}
		}
	}
	return "80"
}

func pause() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
