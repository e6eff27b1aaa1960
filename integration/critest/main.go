// Command critest runs the CRI conformance suite of cri-tools (critest, its
// validation specs) against a private peapod instance, offline.
//
// No registry is reachable here, so it builds every image the suite pulls
// (see images.go: busybox built with its default config, and imgbin for the
// nginx, nonewprivs and pause stand-ins), serves them from an in-process
// registry on 127.0.0.1, and starts peapod with a containerd-style
// --registry-config-dir whose _default/hosts.toml sends every registry there.
// Then it runs critest, and prints a summary: passed, failed and skipped
// specs, each skip with its reason, and the spec that pulls upstream content
// by digest (left out, it cannot be served here). It exits 1 when a spec
// that ran failed.
//
//	make critest
//	go run ./integration/critest -peapod bin/peapod -critest bin/tools/critest \
//	    -busybox bin/cache/busybox [-focus REGEX] [-skip REGEX] [-keep] [-check-images|-serve-only]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	peapod, critest, busybox, cniBinDir string
	work, logs                          string
	keep                                bool
	focus, skip                         string
	timeout                             time.Duration
	bridge, subnet                      string
	registryAddr                        string
	checkImages, serveOnly              bool
	logLevel                            string
	extra                               string
	parallel                            int
	rootless                            string
}

func main() {
	var o options
	flag.StringVar(&o.peapod, "peapod", "bin/peapod", "peapod binary")
	flag.StringVar(&o.critest, "critest", "bin/tools/critest", "critest binary (cri-tools v1.37.0, `make critest` builds it)")
	flag.StringVar(&o.busybox, "busybox", "bin/cache/busybox", "static busybox built with its default config")
	flag.StringVar(&o.cniBinDir, "cni-bin-dir", "bin/cni", "CNI plugins for peapod")
	flag.StringVar(&o.work, "work", "", "work dir for peapod's root, state and socket (default: a new temp dir, removed at the end)")
	flag.StringVar(&o.logs, "logs", "bin/critest-logs", "where peapod.log, registry.log, critest.log, report.json and summary.txt go")
	flag.BoolVar(&o.keep, "keep", false, "keep the work dir")
	flag.StringVar(&o.focus, "focus", "", "only specs matching this regexp (--ginkgo.focus)")
	flag.StringVar(&o.skip, "skip", "", "also leave out specs matching this regexp (--ginkgo.skip)")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Minute, "critest suite timeout (--ginkgo.timeout)")
	flag.StringVar(&o.bridge, "bridge", "ppcrit0", "bridge (and network name) of the private instance")
	flag.StringVar(&o.subnet, "pod-subnet", "10.96.200.0/24", "pod subnet of the private instance")
	flag.StringVar(&o.registryAddr, "registry", "127.0.0.1:0", "listen address of the in-process registry")
	flag.BoolVar(&o.checkImages, "check-images", false, "build, push and pull back every image, print them, and exit")
	flag.BoolVar(&o.serveOnly, "serve-only", false, "build and serve the images, write the hosts dir, and wait for Ctrl-C (to try peapod or crictl by hand)")
	flag.StringVar(&o.logLevel, "log-level", "debug", "peapod's --log-level")
	flag.StringVar(&o.extra, "critest-args", "", "more critest arguments, space-separated")
	flag.IntVar(&o.parallel, "parallel", 1, "critest -parallel: ginkgo processes (needs the ginkgo CLI next to critest or in PATH; Serial specs still run one by one)")
	flag.StringVar(&o.rootless, "rootless", "", "run peapod as this ordinary user (rootless mode; the daemon pulls from the registry through the gateway 10.0.2.2)")
	flag.Parse()
	os.Exit(run(o))
}

// digestSpec is the one spec that pulls upstream content by digest.
const digestSpec = "public image with digest should be pulled and removed"

func run(o options) int {
	start := time.Now()
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	phase := func(what string, since time.Time) {
		fmt.Printf("==> %s (%s)\n", what, time.Since(since).Round(10*time.Millisecond))
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "critest harness: "+format+"\n", a...)
		return 2
	}
	if os.Geteuid() != 0 && !o.checkImages {
		return fail("needs root (peapod runs pods)")
	}
	for _, p := range []*string{&o.peapod, &o.critest, &o.busybox, &o.cniBinDir, &o.logs} {
		if abs, err := filepath.Abs(*p); err == nil {
			*p = abs
		}
	}
	if err := os.MkdirAll(o.logs, 0o755); err != nil {
		return fail("%v", err)
	}

	// Work dir: socket, root, state, hosts dir, empty CNI conf dir.
	work := o.work
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "peapod-critest-"); err != nil {
			return fail("%v", err)
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return fail("%v", err)
	}
	work, _ = filepath.Abs(work)
	var cleanupNotes []string
	defer func() {
		if o.keep || o.work != "" {
			fmt.Printf("work dir kept: %s\n", work)
			return
		}
		cleanupNotes = append(cleanupNotes, killUnder(work)...)
		cleanupNotes = append(cleanupNotes, unmountUnder(work)...)
		if err := os.RemoveAll(work); err != nil {
			cleanupNotes = append(cleanupNotes, "remove work dir: "+err.Error())
		}
		for _, n := range cleanupNotes {
			fmt.Println("cleanup: " + n)
		}
	}()

	// Images.
	t := time.Now()
	imgbin := filepath.Join(work, "imgbin")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", imgbin, "peapod/integration/critest/imgbin")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fail("build imgbin: %v", err)
	}
	in, err := loadInputs(o.busybox, imgbin)
	if err != nil {
		return fail("%v", err)
	}
	images, err := buildImages(in)
	if err != nil {
		return fail("build images: %v", err)
	}
	phase(fmt.Sprintf("built %d images (busybox %s, %d applets)", len(images), o.busybox, len(in.applets)), t)

	t = time.Now()
	reg, err := startRegistry(o.registryAddr, filepath.Join(o.logs, "registry.log"))
	if err != nil {
		return fail("registry: %v", err)
	}
	defer reg.close()
	if err := reg.push(ctx, images); err != nil {
		return fail("%v", err)
	}
	lines, err := reg.verify(ctx, images)
	if err != nil {
		return fail("pull back from the registry: %v", err)
	}
	phase("pushed to and pulled back from the registry on "+reg.addr, t)
	for _, l := range lines {
		fmt.Println("    " + l)
	}
	hostsDir := filepath.Join(work, "registry.d")
	// A rootless daemon lives in its own network namespace: it reaches
	// the host's loopback at the network helper's gateway.
	mirror := reg.addr
	if o.rootless != "" {
		_, port, _ := net.SplitHostPort(reg.addr)
		mirror = net.JoinHostPort("10.0.2.2", port)
	}
	if err := reg.writeHostsDir(hostsDir, mirror, registryHosts(images)); err != nil {
		return fail("%v", err)
	}
	if o.checkImages {
		return 0
	}
	if o.serveOnly {
		fmt.Printf("registry http://%s; mirror config: --registry-config-dir %s\nCtrl-C to stop.\n", reg.addr, hostsDir)
		<-ctx.Done()
		return 0
	}

	// peapod.
	for _, p := range []int{12000, 12001, 12002, 12003} {
		if ln, err := net.Listen("tcp", fmt.Sprintf(":%d", p)); err != nil {
			fmt.Printf("WARNING: host port %d is in use; critest's port specs need 12000-12003 free\n", p)
		} else {
			ln.Close()
		}
	}
	t = time.Now()
	cniConf := filepath.Join(work, "net.d")
	_ = os.MkdirAll(cniConf, 0o755)
	sock := filepath.Join(work, "peapod.sock")
	args := []string{"serve",
		"--socket", sock, "--root", filepath.Join(work, "root"), "--state", filepath.Join(work, "state"),
		"--cni-conf-dir", cniConf, "--cni-bin-dir", o.cniBinDir,
		"--bridge", o.bridge, "--pod-subnet", o.subnet, "--network-name", o.bridge,
		"--registry-config-dir", hostsDir,
		"--log-level", o.logLevel,
	}
	peapodLog := filepath.Join(o.logs, "peapod.log")
	peapodBin := o.peapod
	var rl *rootlessRun
	if o.rootless != "" {
		if rl, err = prepareRootless(o.rootless, work, o.peapod, o.cniBinDir); err != nil {
			return fail("%v", err)
		}
		peapodBin = rl.peapod
		for i, a := range args {
			if a == "--cni-bin-dir" {
				args[i+1] = rl.cniBin
			}
		}
		args = append(args, "--rootless-host-loopback", "--rootless-net", "slirp4netns")
		for _, dir := range []string{"root", "state"} {
			_ = os.MkdirAll(filepath.Join(work, dir), 0o700)
		}
		if err := rl.handOver(work); err != nil {
			return fail("%v", err)
		}
		defer func() { cleanupNotes = append(cleanupNotes, killNamespaces(filepath.Join(work, "state"))...) }()
		fmt.Printf("==> rootless, as %s (uid %d)\n", rl.user.Username, rl.uid)
	}
	fmt.Printf("==> %s %s\n", peapodBin, strings.Join(args, " "))
	d, err := startDaemon(peapodBin, peapodLog, args, rl)
	if err != nil {
		return fail("%v", err)
	}
	defer func() {
		if n, err := d.removeAll(); n > 0 || err != nil {
			cleanupNotes = append(cleanupNotes, fmt.Sprintf("removed %d leftover pods/containers (errors: %v)", n, err))
		}
		d.stop()
		if exec.Command("ip", "link", "show", o.bridge).Run() == nil {
			_ = exec.Command("ip", "link", "del", o.bridge).Run()
		}
		cleanupNotes = append(cleanupNotes, cleanIptables(o.bridge)...)
	}()
	phase("peapod listening on "+sock, t)

	// critest.
	filters := []filter{
		{re: regexp.MustCompile(regexp.QuoteMeta(digestSpec)), own: true,
			reason: "pulls gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2…66bf, a digest of upstream content that no offline registry can serve"},
		{re: regexp.MustCompile(`benchmark`),
			reason: "benchmarks: critest runs them only with -benchmark"},
	}
	if o.skip != "" {
		re, err := regexp.Compile(o.skip)
		if err != nil {
			return fail("-skip: %v", err)
		}
		filters = append(filters, filter{re: re, reason: "left out by -skip " + o.skip})
	}
	report := filepath.Join(o.logs, "report.json")
	_ = os.Remove(report)
	cargs := []string{
		"--runtime-endpoint=unix://" + sock, "--image-endpoint=unix://" + sock,
		"--ginkgo.v", "--ginkgo.json-report=" + report,
		"--ginkgo.timeout=" + o.timeout.String(),
		"--ginkgo.skip=" + filters[0].re.String(),
	}
	if o.skip != "" {
		cargs = append(cargs, "--ginkgo.skip="+o.skip)
	}
	if o.focus != "" {
		cargs = append(cargs, "--ginkgo.focus="+o.focus)
	}
	if fi, err := os.Stdout.Stat(); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		cargs = append(cargs, "--ginkgo.no-color")
	}
	if o.parallel > 1 {
		cargs = append(cargs, fmt.Sprintf("-parallel=%d", o.parallel))
	}
	cargs = append(cargs, strings.Fields(o.extra)...)
	critestLog, err := os.Create(filepath.Join(o.logs, "critest.log"))
	if err != nil {
		return fail("%v", err)
	}
	defer critestLog.Close()
	t = time.Now()
	fmt.Printf("==> %s %s\n", o.critest, strings.Join(cargs, " "))
	critestBin := o.critest
	var cmd *exec.Cmd
	if rl != nil {
		// A rootless runtime is driven from inside its node, the way
		// usernetes runs a kubelet: as the user, joined to the user,
		// mount, network, IPC and UTS namespaces peapod made. There pod
		// IPs are reachable (from the host they are not: the request
		// would leave through the host's default route), the log dirs,
		// volumes and seccomp profiles critest makes are the user's, and
		// hostNetwork/hostIPC mean the node's.
		var err error
		if critestBin, err = rl.critest(o.critest, work, report, cargs); err != nil {
			return fail("%v", err)
		}
		holder, err := holderPID(filepath.Join(work, "state"))
		if err != nil {
			return fail("%v", err)
		}
		cmd = exec.Command("nsenter", append([]string{"--target", strconv.Itoa(holder), "--user", "--mount", "--net", "--ipc", "--uts", "--", critestBin}, rl.critestArgs...)...)
		fmt.Printf("==> in the rootless node's namespaces (holder %d): %s\n", holder, strings.Join(cmd.Args, " "))
	} else {
		cmd = exec.Command(critestBin, cargs...)
	}
	cmd.Dir = work
	cmd.Stdout = io.MultiWriter(os.Stdout, critestLog)
	cmd.Stderr = io.MultiWriter(os.Stderr, critestLog)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// critest -parallel runs the ginkgo CLI from PATH: `make critest-bin`
	// puts the matching one next to critest.
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(critestBin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	if rl != nil {
		cmd.SysProcAttr.Credential = rl.credential()
		cmd.Env = append(rl.env(), "PATH="+filepath.Dir(critestBin)+":/usr/sbin:/usr/bin:/sbin:/bin", "TMPDIR="+filepath.Join(work, "tmp"))
	}
	if err := cmd.Start(); err != nil {
		return fail("%v", err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var critestErr error
	select {
	case critestErr = <-waited:
	case <-ctx.Done():
		// ginkgo reports on its first interrupt and stops on the second.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case critestErr = <-waited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			critestErr = <-waited
		}
	}
	critestTime := time.Since(t)
	if rl != nil {
		if err := rl.collectReport(report); err != nil {
			fmt.Fprintf(os.Stderr, "critest report: %v\n", err)
		}
	}

	// Summary.
	var b strings.Builder
	fmt.Fprintf(&b, "\n======== critest summary ========\n")
	fmt.Fprintf(&b, "critest %s against %s (peapod log %s)\n", o.critest, o.peapod, peapodLog)
	s, err := summarize(report, filters, o.focus)
	if err != nil {
		fmt.Fprintf(&b, "no usable report (%v); critest: %v\n", err, critestErr)
	} else {
		s.write(&b, filters)
	}
	fmt.Fprintf(&b, "\nimages served (%d):\n", len(images))
	for _, ti := range images {
		fmt.Fprintf(&b, "  - %s: %s\n", strings.Join(ti.names, ", "), ti.what)
	}
	for ref, spec := range digestPinned {
		fmt.Fprintf(&b, "  - not servable: %s (used by %q)\n", ref, spec)
	}
	fmt.Fprintf(&b, "\ntime: critest %s, total %s\n", critestTime.Round(time.Second), time.Since(start).Round(time.Second))
	code := 0
	switch {
	case err != nil:
		code = 1
	case !s.ok():
		code = 1
	case critestErr != nil:
		var ee *exec.ExitError
		if !errors.As(critestErr, &ee) || s.failed == 0 {
			fmt.Fprintf(&b, "critest exited with %v although no spec failed\n", critestErr)
		}
		code = 1
	}
	if ctx.Err() != nil {
		fmt.Fprintf(&b, "interrupted\n")
		code = 130
	}
	if code == 0 {
		fmt.Fprintf(&b, "RESULT: PASS\n")
	} else {
		fmt.Fprintf(&b, "RESULT: FAIL\n")
	}
	fmt.Print(b.String())
	_ = os.WriteFile(filepath.Join(o.logs, "summary.txt"), []byte(b.String()), 0o644)
	return code
}
