package shim

import (
	"flag"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Main is the shim subcommand (`peapod shim` or `peapod-shim shim`) with its
// arguments after "shim", as Start passes them. It returns when the shim
// shuts down.
//
// `shim lc ...` is the one-shot helper the shim runs for libcontainer's
// work (helper_linux.go); it never returns.
func Main(args []string) error {
	if len(args) > 0 && args[0] == helperArg {
		lcMain(args[1:])
	}
	fs := flag.NewFlagSet("shim", flag.ContinueOnError)
	dir := fs.String("dir", "", "the shim's directory (socket, state, container records)")
	podCgroup := fs.String("pod-cgroup", "", "the pod's cgroupfs path, parent of container cgroups")
	readyFD := fs.Int("ready-fd", -1, "descriptor that receives \"ok\" or the start error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts := ServeOptions{Dir: *dir, PodCgroup: *podCgroup}
	if *readyFD >= 0 {
		// Inherited without close-on-exec: the helpers the shim starts
		// must not hold it (Start reads it to EOF).
		unix.CloseOnExec(*readyFD)
		opts.Ready = os.NewFile(uintptr(*readyFD), "ready")
		if opts.Ready == nil {
			return fmt.Errorf("bad --ready-fd %d", *readyFD)
		}
	}
	return Serve(opts)
}
