package sandbox

import (
	"strings"

	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// runtimeDefaultSeccomp is peapod's RuntimeDefault seccomp profile. It
// allows by default and refuses, with EPERM, the system calls that act on
// the whole machine rather than on the container (loading modules,
// rebooting, setting the clock, tracing other processes, keyrings, new
// namespaces and mounts) unless the container holds the capability that
// makes the call legitimate. That follows the intent of Docker's default
// profile; a deny list keeps it short enough to review here.
func runtimeDefaultSeccomp(caps []string) *specs.LinuxSeccomp {
	has := map[string]bool{}
	for _, c := range caps {
		has[strings.ToUpper(c)] = true
	}
	eperm := uint(unix.EPERM)
	enosys := uint(unix.ENOSYS)
	var denied []string
	deny := func(names ...string) { denied = append(denied, names...) }

	// Always refused: obsolete or machine-wide with no capability that makes
	// them safe inside a pod.
	deny("acct", "add_key", "keyctl", "request_key", "kexec_file_load", "kexec_load",
		"lookup_dcookie", "nfsservctl", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
		"_sysctl", "sysfs", "get_kernel_syms", "query_module", "create_module",
		"swapon", "swapoff", "open_by_handle_at", "name_to_handle_at", "perf_event_open",
		"fanotify_init", "kcmp", "bpf", "quotactl", "quotactl_fd")
	if !has["CAP_SYS_MODULE"] {
		deny("init_module", "finit_module", "delete_module")
	}
	if !has["CAP_SYS_BOOT"] {
		deny("reboot")
	}
	if !has["CAP_SYS_TIME"] {
		deny("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "adjtimex")
	}
	if !has["CAP_SYS_PTRACE"] {
		deny("ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd")
	}
	if !has["CAP_SYS_RAWIO"] {
		deny("iopl", "ioperm")
	}
	if !has["CAP_SYS_NICE"] {
		deny("mbind", "set_mempolicy", "move_pages", "migrate_pages")
	}
	if !has["CAP_SYS_ADMIN"] {
		deny("mount", "mount_setattr", "umount", "umount2", "pivot_root", "setns", "unshare",
			"fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree", "setdomainname", "sethostname")
	}
	prof := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
		Syscalls: []specs.LinuxSyscall{
			{Names: denied, Action: specs.ActErrno, ErrnoRet: &eperm},
		},
	}
	if !has["CAP_SYS_ADMIN"] {
		// clone3 passes its flags in memory a filter cannot read: make it
		// unavailable so libc falls back to clone, whose namespace flags
		// are checked below, one rule per flag (rules are ORed).
		prof.Syscalls = append(prof.Syscalls, specs.LinuxSyscall{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys})
		for _, flag := range []uint64{unix.CLONE_NEWNS, unix.CLONE_NEWCGROUP, unix.CLONE_NEWUTS, unix.CLONE_NEWIPC, unix.CLONE_NEWUSER, unix.CLONE_NEWPID, unix.CLONE_NEWNET} {
			prof.Syscalls = append(prof.Syscalls, specs.LinuxSyscall{
				Names:    []string{"clone"},
				Action:   specs.ActErrno,
				ErrnoRet: &eperm,
				Args:     []specs.LinuxSeccompArg{{Index: 0, Value: flag, ValueTwo: flag, Op: specs.OpMaskedEqual}},
			})
		}
	}
	return prof
}
