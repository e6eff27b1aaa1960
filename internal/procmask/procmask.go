// Package procmask holds the masked and read-only paths of a container
// with the default procMount: what a kubelet sends in every container's
// security context (its securitycontext package), and what containerd and
// peapod apply when given none. The shim's helper applies them; the bench
// sends them to both runtimes, so that they do the same work.
package procmask

var (
	// MaskedPaths are hidden from the container (a bind of /dev/null, or
	// an empty read-only tmpfs for a directory).
	MaskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
		"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
		"/proc/sched_debug", "/proc/scsi", "/sys/firmware",
		"/sys/devices/virtual/powercap",
	}
	// ReadonlyPaths are remounted read-only.
	ReadonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)
