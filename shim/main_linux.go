package shim

import (
	"flag"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"peapod/shim/internal/lcproto"
)

// Main is the shim subcommand (`peapod-shim shim` or `peapod shim`) with
// its arguments after "shim", as Start passes them. It returns when the
// shim shuts down.
//
// `shim lc ...` is the one-shot libcontainer helper, which this package
// does not carry (package shim/lc): the program that links both dispatches
// it before calling Main (cmd/peapod); here it is an error.
func Main(args []string) error {
	if len(args) > 0 && args[0] == lcproto.Arg {
		return fmt.Errorf("this program carries no libcontainer helper (%q); it is peapod-lc's", lcproto.Arg)
	}
	fs := flag.NewFlagSet("shim", flag.ContinueOnError)
	dir := fs.String("dir", "", "the shim's directory (socket, state, container records)")
	podCgroup := fs.String("pod-cgroup", "", "the pod's cgroupfs path, parent of container cgroups")
	helper := fs.String("lc", "", "the libcontainer helper program (peapod-lc); default: this executable's `shim lc`")
	readyFD := fs.Int("ready-fd", -1, "descriptor that receives \"ok\" or the start error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opts := ServeOptions{Dir: *dir, PodCgroup: *podCgroup, Helper: *helper}
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
