package main

import (
	"fmt"
	"os"
	"os/exec"

	"peapod/cgroups"
	"peapod/internal/binfile"
	"peapod/netns"
	"peapod/pause/embedded"
	"peapod/rootless"
)

// check prints one line per problem that would stop pods from running here,
// each with what to do, and fails if there is any.
// Run by an ordinary user it checks what rootless mode needs instead
// (check_rootless.go).
func check(args []string) error {
	if stage := os.Getenv(probeEnv); stage != "" {
		return probeChild(stage)
	}
	cfg, err := parseConfig("peapod check", args)
	if err != nil {
		return err
	}
	var problems, notes []string
	rootlessUser := os.Geteuid() != 0
	if rootlessUser {
		name, uid := rootless.Owner()
		problems, notes = rootlessCheck(cfg, realHostView(name, uid, os.Getgid()), true)
	}
	for _, ns := range []string{"net", "ipc", "uts", "pid", "mnt"} {
		if _, err := os.Stat("/proc/self/ns/" + ns); err != nil {
			problems = append(problems, fmt.Sprintf("kernel lacks %s namespaces: enable CONFIG_%s_NS", ns, map[string]string{"net": "NET", "ipc": "IPC", "uts": "UTS", "pid": "PID", "mnt": "MNT"}[ns]))
		}
	}
	if len(embedded.Binary) == 0 {
		problems = append(problems, "this peapod was built without the pause binary: rebuild with `make build`")
	}
	// Where serve will write its programs (programDir).
	dirs := programDirs(cfg)
	if err := binfile.Runnable(dirs[0]); err != nil {
		if rerr := binfile.Runnable(dirs[1]); rerr != nil {
			problems = append(problems, fmt.Sprintf("peapod's programs (pause, shim) cannot run from either place: %v; %v: give --state or --root on a file system mounted without noexec", err, rerr))
		} else {
			notes = append(notes, fmt.Sprintf("%v: peapod runs its programs (pause, shim) from %s instead", err, dirs[1]))
		}
	}
	if !rootlessUser {
		// Rootless, the delegated subtree is checked instead.
		problems = append(problems, cgroups.CheckDriver(cfg.CgroupDriver)...)
	}
	network, err := newNetwork(cfg)
	if err != nil {
		problems = append(problems, "network config: "+err.Error())
	} else if err := network.Ready(); err != nil {
		problems = append(problems, "pod network: "+err.Error())
	}
	// peapod puts the sbin dirs on its PATH (addSbinToPath) for the plugins.
	if _, err := exec.LookPath("iptables"); err != nil {
		problems = append(problems, "iptables not found: the bridge and portmap CNI plugins need it (apt-get install iptables)")
	}
	if os.Geteuid() == 0 {
		problems = append(problems, netns.CheckShapingSupport()...)
	}
	notes = append(notes, journalNotes(cfg.Root, cfg.State)...)
	for _, n := range notes {
		fmt.Println("note:", n)
	}
	if len(problems) == 0 && rootlessUser {
		fmt.Printf("ok: %s can run peapod rootless (peapod serve)\n", cfg.rootlessUser)
		return nil
	}
	if len(problems) == 0 {
		fmt.Println("ok: this host can run peapod pods")
		return nil
	}
	for _, p := range problems {
		fmt.Println("problem:", p)
	}
	return fmt.Errorf("%d problem(s) found", len(problems))
}
