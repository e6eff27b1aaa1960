// Command bench prints how peapod's pod sandboxes compare with containerd's
// on this host: RunPodSandbox, StopPodSandbox and RemovePodSandbox latency
// (p50/p95 over -pods sandboxes), the memory of the per-pod processes with
// -running pods up (RSS and PSS), the pause binary's size, and what
// bandwidth shaping adds to RunPodSandbox. It prints figures, not pass or
// fail; the targets are shown with the measured ratios.
//
// Both runtimes run as private instances under a temporary directory, with
// their own sockets, state, bridges and subnets, and the same CNI plugin
// chain (bridge + host-local, portmap, loopback; peapod's bin/cni). Both
// get identical PodSandboxConfigs over CRI v1. containerd (Debian's 1.6,
// if installed) gets a pause image built here from peapod's static pause
// binary, since no registry is reachable.
//
// Everything the bench starts or makes is removed at the end, also on an
// error or Ctrl-C: pods through the runtimes (so CNI DEL undoes the
// plugins' iptables rules and IP allocations), then the daemons, then
// whatever a dead daemon would leave (processes, mounts, cgroups, bridges,
// iptables rules named after the bench's networks), then the directory.
//
// Usage (as root; `make bench` builds everything first):
//
//	go run ./integration/bench -peapod bin/peapod -crictl bin/tools/crictl
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// benchEnv is where the programs are and where the run keeps its files.
type benchEnv struct {
	base      string // temporary directory of this run
	peapodBin string
	cniBinDir string
	pauseBin  string // static pause binary, for containerd's image
	crictlBin string

	containerdBin, ctrBin, runcBin string

	leaks leakChecks
}

type options struct {
	pods, running, shapingPairs, cniFloor int
	containerPods, pulls                  int // container section (containers.go); 0 pods: skip
	pairedPods                            int // paired start section (paired.go); 0: skip
	skipPeapod, skipContainerd            bool
	onlyContainers                        bool // the container section alone: no sandbox lifecycle, stats, shaping, CNI floor
	hostFS                                bool // the runtimes' files on the host's file system, not one made for the run (benchfs.go)
}

func main() {
	os.Exit(realMain())
}

func realMain() int {
	var (
		env  benchEnv
		opts options
	)
	flag.StringVar(&env.peapodBin, "peapod", "bin/peapod", "peapod binary; its CNI plugins are expected in cni/ beside it")
	flag.StringVar(&env.crictlBin, "crictl", "bin/tools/crictl", "crictl binary (accepted for the Makefile; the bench speaks CRI itself)")
	flag.StringVar(&env.pauseBin, "pause", "", "static pause binary for containerd's pause image (default: pause/embedded/pause.bin)")
	flag.StringVar(&env.containerdBin, "containerd", "containerd", "containerd binary; ctr is expected beside it")
	flag.IntVar(&opts.pods, "pods", 50, "sandboxes per runtime for the latency percentiles")
	flag.IntVar(&opts.running, "running", 20, "sandboxes running while their memory is read (0: skip)")
	flag.IntVar(&opts.shapingPairs, "shaping-pods", 15, "pods with and pods without bandwidth annotations for the shaping cost (0: skip)")
	flag.IntVar(&opts.cniFloor, "cni-floor", 20, "attachments for the time of the CNI plugins alone (0: skip)")
	flag.IntVar(&opts.containerPods, "container-pods", 30, "pods with a busybox container per runtime for the container section (0: skip the section)")
	flag.IntVar(&opts.pairedPods, "paired-pods", 30, "pods per runtime for the paired start section, both runtimes side by side taking turns (0: skip)")
	flag.IntVar(&opts.pulls, "pulls", 5, "timed pulls of the 5-layer image per runtime, each after RemoveImage")
	flag.BoolVar(&opts.skipContainerd, "skip-containerd", false, "measure peapod only")
	flag.BoolVar(&opts.skipPeapod, "skip-peapod", false, "measure containerd only")
	flag.BoolVar(&opts.hostFS, "host-fs", false, "keep the runtimes' files on the host's file system instead of a fresh ext4 made for the run")
	flag.BoolVar(&opts.onlyContainers, "only-containers", false, "run the container section alone (start, teardown, memory, pulls): no sandbox lifecycle, stats, shaping or CNI floor")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up (and clean up) after this long")
	flag.Parse()

	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench: needs root (namespaces, cgroups, bridges, iptables)")
		return 2
	}
	if opts.pods < 1 || opts.running < 0 || opts.shapingPairs < 0 || opts.cniFloor < 0 || opts.containerPods < 0 || opts.pairedPods < 0 || opts.pulls < 1 {
		fmt.Fprintln(os.Stderr, "bench: -pods and -pulls must be at least 1, -running, -shaping-pods, -cni-floor, -container-pods and -paired-pods at least 0")
		return 2
	}
	if opts.onlyContainers {
		if opts.containerPods == 0 {
			fmt.Fprintln(os.Stderr, "bench: -only-containers with -container-pods 0 measures nothing")
			return 2
		}
		opts.shapingPairs, opts.cniFloor, statsPods = 0, 0, 0
	}
	if opts.skipPeapod && opts.skipContainerd {
		fmt.Fprintln(os.Stderr, "bench: nothing to measure with both -skip-peapod and -skip-containerd")
		return 2
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		n := 0
		for s := range sigs {
			n++
			switch n {
			case 1:
				fmt.Fprintf(os.Stderr, "\nbench: %s: stopping; removing everything the bench made\n", s)
				cancel()
			case 2:
				fmt.Fprintln(os.Stderr, "bench: still cleaning up; once more to quit now and leave things behind")
			default:
				fmt.Fprintf(os.Stderr, "bench: quitting; leftovers may remain: /tmp/peapod-benchfs-* (a loop mount) or /tmp/peapod-bench-*, bridges %s, %s, %s\n", peapodNetwork, containerdNetwork, floorNetwork)
				os.Exit(130)
			}
		}
	}()

	// Two benches at once would share bridge names and subnets.
	unlock, err := lockBench()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}
	defer unlock()

	cl := &cleanups{}
	started := time.Now()
	rep, runErr := runBenchSafely(ctx, &env, opts, cl)
	progress("bench", "cleaning up")
	cleanupFailures := cl.run()
	elapsed := time.Since(started)

	leftovers := env.leaks.run()

	rep.write(os.Stdout, opts)
	fmt.Fprintf(os.Stdout, "\nwall time %s; ", elapsed.Round(100*time.Millisecond))
	if len(leftovers) == 0 {
		fmt.Fprintln(os.Stdout, "checked after cleanup: nothing the bench made is left on the host")
	} else {
		fmt.Fprintf(os.Stdout, "LEFT BEHIND after cleanup: %s\n", strings.Join(leftovers, ", "))
	}
	for _, f := range cleanupFailures {
		fmt.Fprintf(os.Stderr, "bench: cleanup: %s\n", f)
	}
	if runErr == nil && len(leftovers) > 0 {
		runErr = errors.New("cleanup left things behind")
	}
	if runErr != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", runErr)
		return 1
	}
	return 0
}

// runBenchSafely turns a panic into an error, so that cleanup still runs.
func runBenchSafely(ctx context.Context, env *benchEnv, opts options, cl *cleanups) (rep *report, err error) {
	defer func() {
		if r := recover(); r != nil {
			if rep == nil {
				rep = &report{started: time.Now()}
			}
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return runBench(ctx, env, opts, cl)
}

// runBench measures each runtime in turn; a failure of one does not keep
// the other from being measured. Each runtime is torn down before the next
// one starts, so neither measures with the other's pods around.
func runBench(ctx context.Context, env *benchEnv, opts options, cl *cleanups) (*report, error) {
	rep := &report{started: time.Now(), loadAvg: loadAvg()}
	if err := env.resolve(opts); err != nil {
		return rep, err
	}
	parent := os.TempDir()
	if opts.hostFS {
		rep.fs = hostFSDesc(parent)
	} else {
		fs, err := makeBenchFS(cl)
		if err != nil {
			return rep, err
		}
		env.leaks.add(fs.leaks)
		parent, rep.fs = fs.dir, fs.desc
	}
	base, err := os.MkdirTemp(parent, "peapod-bench-")
	if err != nil {
		return rep, err
	}
	env.base = base
	cl.add("remove "+base, func() error { return removeUnmounted(base) })
	env.leaks.add(baseLeaks(base))
	cl.add("restore net.ipv4.ip_forward", sysctlRestorer("/proc/sys/net/ipv4/ip_forward"))
	namer := &podNamer{runID: fmt.Sprintf("b%x", time.Now().UnixNano()&0xffffffff), logDir: filepath.Join(base, "pod-logs")}

	var errs []error
	if !opts.skipPeapod {
		errs = append(errs, phase(cl, "peapod", func(pcl *cleanups) error {
			return benchPeapod(ctx, env, opts, namer, pcl, rep)
		}))
	}
	if opts.cniFloor > 0 && ctx.Err() == nil {
		errs = append(errs, phase(cl, "cni", func(pcl *cleanups) error {
			progress("cni", "CNI ADD and DEL × %d through libcni, no runtime", opts.cniFloor)
			var err error
			rep.cniFloor, err = benchCNIFloor(ctx, env, opts.cniFloor, pcl)
			return err
		}))
	}
	if !opts.skipContainerd && ctx.Err() == nil {
		if env.containerdBin == "" {
			rep.notes = append(rep.notes, "containerd: not installed, not measured")
		} else {
			errs = append(errs, phase(cl, "containerd", func(pcl *cleanups) error {
				return benchContainerd(ctx, env, opts, namer, pcl, rep)
			}))
		}
	}
	if opts.pairedPods > 0 && !opts.skipPeapod && !opts.skipContainerd && env.containerdBin != "" && ctx.Err() == nil {
		errs = append(errs, phase(cl, "paired", func(pcl *cleanups) error {
			var err error
			rep.paired, err = benchPairedStarts(ctx, env, opts.pairedPods, namer, pcl)
			return err
		}))
	}
	return rep, errors.Join(errs...)
}

// phase runs one runtime's measurements with a cleanup stack of its own,
// unwound as soon as the phase ends; the outer stack unwinds it on a
// Ctrl-C or a panic instead.
func phase(cl *cleanups, name string, fn func(*cleanups) error) error {
	pcl := &cleanups{}
	cl.add(name, func() error { return joinFailures(pcl.run()) })
	err := fn(pcl)
	progress(name, "tearing down")
	if f := pcl.run(); len(f) > 0 {
		err = errors.Join(err, fmt.Errorf("%s cleanup: %w", name, joinFailures(f)))
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

func joinFailures(f []string) error {
	if len(f) == 0 {
		return nil
	}
	return errors.New(strings.Join(f, "; "))
}

func benchPeapod(ctx context.Context, env *benchEnv, opts options, namer *podNamer, cl *cleanups, rep *report) error {
	progress("peapod", "starting a private instance")
	t, err := startPeapod(ctx, env, cl)
	if err != nil {
		return err
	}
	rep.peapod = &runtimeReport{version: t.version, pauseBytes: t.pauseBinaryBytes, pauseFrom: t.pauseBinaryFrom}
	if !opts.onlyContainers {
		if rep.peapod.life, err = benchLifecycle(ctx, t, namer, opts.pods, opts.running); err != nil {
			return err
		}
	}
	if opts.containerPods > 0 {
		if err := quiesce(ctx); err != nil {
			return err
		}
		if rep.peapod.containers, err = benchContainers(ctx, env, t, namer, opts, cl); err != nil {
			return err
		}
	}
	if err := benchStatsFor(ctx, env, t, namer, cl); err != nil {
		return err
	}
	if opts.shapingPairs > 0 {
		progress("peapod", "RunPodSandbox × %d with and × %d without bandwidth annotations", opts.shapingPairs, opts.shapingPairs)
		if rep.shaping, err = benchShaping(ctx, t, namer, opts.shapingPairs); err != nil {
			return err
		}
		if shapingAccuracy != nil {
			if rep.shapingAccuracy, err = shapingAccuracy(ctx, t, namer, cl); err != nil {
				return err
			}
		}
	}
	return nil
}

func benchContainerd(ctx context.Context, env *benchEnv, opts options, namer *podNamer, cl *cleanups, rep *report) error {
	progress("containerd", "starting a private instance")
	t, err := startContainerd(ctx, env, cl)
	if err != nil {
		return err
	}
	rep.containerd = &runtimeReport{version: t.version, pauseBytes: t.pauseBinaryBytes, pauseFrom: t.pauseBinaryFrom}
	if out, err := exec.Command(env.runcBin, "--version").Output(); err == nil {
		rep.containerd.version += " + " + strings.SplitN(string(out), "\n", 2)[0]
	}
	if !opts.onlyContainers {
		if rep.containerd.life, err = benchLifecycle(ctx, t, namer, opts.pods, opts.running); err != nil {
			return err
		}
	}
	if opts.containerPods > 0 {
		if err := quiesce(ctx); err != nil {
			return err
		}
		if rep.containerd.containers, err = benchContainers(ctx, env, t, namer, opts, cl); err != nil {
			return err
		}
	}
	return benchStatsFor(ctx, env, t, namer, cl)
}

// quiesce lets the machine quiet down before a timed section: the kernel
// tears down the network namespaces of the pods just removed in the
// background, and dirty pages wait for writeback; either would land in the
// next section's timings, whichever runtime's they are.
//
// It also waits out ext4's memory of deleted files. On an ext4 without a
// journal (this kind of VM's root file system), allocating an inode skips
// every free one deleted in the last 5 seconds, or in the last 5 minutes
// if its inode table block is still dirty, with one buffer lookup each
// (fs/ext4/ialloc.c, recently_deleted). Right after a section that deleted
// thousands of files (RemoveImage of the 5-layer image, a teardown), every
// file or directory either runtime creates scanned past all of them: a
// millisecond or more each, dozens per pod. After sync(2) the blocks are
// clean and 5 seconds later no deletion counts as recent.
func quiesce(ctx context.Context) error {
	unix.Sync()
	return sleepCtx(ctx, quiesceTime)
}

const quiesceTime = 6 * time.Second

// resolve finds the programs the bench needs and says clearly what is
// missing.
func (env *benchEnv) resolve(opts options) error {
	if !opts.skipPeapod {
		p, err := filepath.Abs(env.peapodBin)
		if err != nil {
			return err
		}
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("peapod binary %s: %w (run `make build`)", p, err)
		}
		env.peapodBin = p
	}
	abs, err := filepath.Abs(env.peapodBin)
	if err != nil {
		return err
	}
	env.cniBinDir = filepath.Join(filepath.Dir(abs), "cni")
	for _, plugin := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join(env.cniBinDir, plugin)); err != nil {
			return fmt.Errorf("CNI plugin %s missing in %s (run `make cni`)", plugin, env.cniBinDir)
		}
	}
	if env.pauseBin == "" {
		// From the repository root (make bench), or relative to bin/peapod.
		for _, c := range []string{"pause/embedded/pause.bin", filepath.Join(filepath.Dir(abs), "..", "pause", "embedded", "pause.bin")} {
			if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() {
				env.pauseBin, _ = filepath.Abs(c)
				break
			}
		}
	}
	if !opts.skipContainerd {
		if p, err := exec.LookPath(env.containerdBin); err == nil {
			env.containerdBin = p
			env.ctrBin = filepath.Join(filepath.Dir(p), "ctr")
			if _, err := os.Stat(env.ctrBin); err != nil {
				if env.ctrBin, err = exec.LookPath("ctr"); err != nil {
					return fmt.Errorf("containerd found at %s but not ctr, which imports the pause image", p)
				}
			}
			if env.runcBin, err = exec.LookPath("runc"); err != nil {
				return fmt.Errorf("containerd found at %s but not runc", p)
			}
		} else {
			env.containerdBin = ""
		}
	}
	return nil
}

const lockPath = "/run/peapod-bench.lock"

// lockBench makes sure this is the only bench on the host. The lock file is
// removed again at the end; nobody waits on it, so that is race-free.
func lockBench() (func(), error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(lockPath)
		f.Close()
		return nil, fmt.Errorf("another bench is running (pid %s, lock %s); its bridges and subnets are the same as ours", strings.TrimSpace(string(b)), lockPath)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
	return func() {
		os.Remove(lockPath)
		f.Close()
	}, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}

func numCPU() int { return goruntime.NumCPU() }
