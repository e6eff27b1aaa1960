#!/bin/bash
# Boots the cgroup v2 test VM once (qemu, -accel tcg), runs a command inside
# it and reports. The image comes from build-image.sh (make vm-image).
#
#   run.sh            run VM_CMD (default: integration/vm/vm-run.sh, the suite)
#   run.sh --shell    boot to a root login on the serial console (Ctrl-A x quits)
#
# Shares, all 9p: the repo (read-only, tag peapod) at the same path inside
# the guest as here, so test binaries find their package dirs; GOROOT
# (read-only, tag goroot) for the pause test's own `go build`; a Go build
# cache (rw, tag gocache, warmed on the host by `make vm-bins`); and the
# results dir (rw, tag results), where the guest writes logs, summary.txt and
# exit-code. The VM has no network device (-nic none).
#
# Environment: VM_CACHE (bin/cache/vm), VM_RESULTS (bin/vm/results),
# VM_INTEGRATION (1: the whole integration suite instead of its v2/systemd
# subset), VM_TIMEOUT (seconds for boot + run + poweroff: 1200, or 3600 with
# VM_INTEGRATION=1), VM_PER_BINARY_TIMEOUT (600; VM_TIMEOUT_<name>
# for one binary), VM_CMD,
# VM_TEST_FLAGS (extra flags for every test binary, e.g. -test.run=X),
# VM_FLAGS_<name> (extra flags for <name>.test only; VM_FLAGS_netns defaults
# to -test.short, VM_FLAGS_integration skips the TCG-bound tests),
# VM_SKIP_SMOKE=1, VM_SKIP_UNIT=1 (system-unit.sh), VM_SKIP_ROOTLESS=1 (rootless-v2.sh),
# VM_MEM (2048), VM_VERBOSE=1 (show the whole serial console live).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VM_CACHE:-$REPO/bin/cache/vm}
RESULTS=${VM_RESULTS:-$REPO/bin/vm/results}
# bin/vm/integration.test runs the cgroup v2 / systemd subset (INTEGRATION_SUBSET)
# by default; the whole suite (make vm-test VM_INTEGRATION=1) needs far longer.
INTEGRATION=0
[ -n "${VM_INTEGRATION:-}" ] && [ "${VM_INTEGRATION}" != 0 ] && INTEGRATION=1
# What the VM is for beyond the unit tests: the systemd cgroup driver with
# the real daemon (pods, containers in scopes, limits as unit properties),
# UpdatePodSandboxResources, CPU / memory stats and OOM kills read from
# cgroup v2, and a container's kill and cgroup removal there.
INTEGRATION_SUBSET='^(TestSystemd|TestUpdatePodSandboxResources($|StoppedPod$)|TestStatsCPUBurnFollowsTheWallClock$|TestStatsMemoryWorkingSetGrowsBy64MiB$|TestStatsOOMKillsAreCounted$|TestContainersOfADeadShimAreSettled$|TestStopContainerKillsAfterTimeoutWith137$)'
if [ "$INTEGRATION" = 1 ]; then TIMEOUT=${VM_TIMEOUT:-3600}; else TIMEOUT=${VM_TIMEOUT:-1200}; fi
MEM=${VM_MEM:-2048}
GOCACHE_DIR=$CACHE/gocache
SHELL_MODE=0
[ "${1:-}" = "--shell" ] && SHELL_MODE=1

log() { printf '[vm] %s\n' "$*"; }
die() { printf '[vm] ERROR: %s\n' "$*" >&2; exit 2; }

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing: run 'make vm-deps'"
for f in rootfs.img vmlinuz initrd.img; do
	[ -f "$CACHE/$f" ] || die "$CACHE/$f missing: run 'make vm-image'"
done
GOROOT_HOST=$(go env GOROOT 2>/dev/null || true)

# Fresh results dir. It is written by the guest through 9p as root.
case "$RESULTS" in /*) ;; *) RESULTS=$PWD/$RESULTS ;; esac
rm -rf "$RESULTS"
mkdir -p "$RESULTS" "$GOCACHE_DIR"
{
	printf 'REPO=%q\n' "$REPO"
	printf 'GOROOT_HOST=%q\n' "$GOROOT_HOST"
	printf 'GOCACHE_HOST=%q\n' "$GOCACHE_DIR"
	printf 'VM_CMD=%q\n' "${VM_CMD:-$REPO/integration/vm/vm-run.sh}"
	printf 'VM_TEST_FLAGS=%q\n' "${VM_TEST_FLAGS:-}"
	# Per binary: VM_FLAGS_<name>. netns runs -test.short by default: its
	# throughput test measures rates to 5 %, which software emulation on a
	# shared 2-core host cannot promise (VM_FLAGS_netns= runs it).
	printf 'VM_FLAGS_netns=%q\n' "${VM_FLAGS_netns--test.short}"
	{ env | grep -E '^VM_FLAGS_[A-Za-z0-9_]+=' | grep -vE '^VM_FLAGS_(netns|integration)=' || true; } | while IFS='=' read -r k v; do printf '%s=%q\n' "$k" "$v"; done
	# integration: the subset, or (VM_INTEGRATION=1) everything but the
	# tests whose rates, budgets or timing assumptions software emulation
	# cannot meet (README.md).
	if [ "$INTEGRATION" = 1 ]; then
		printf 'VM_FLAGS_integration=%q\n' "${VM_FLAGS_integration--test.skip=Throughput|100Pods|TestKill9WithRunningContainersLosesNothing}"
	else
		printf 'VM_FLAGS_integration=%q\n' "${VM_FLAGS_integration--test.run=$INTEGRATION_SUBSET}"
	fi
	printf 'VM_PER_BINARY_TIMEOUT=%q\n' "${VM_PER_BINARY_TIMEOUT:-600}"
	printf 'VM_TIMEOUT_integration=%q\n' "${VM_TIMEOUT_integration:-$((TIMEOUT - 300))}"
	printf 'VM_SKIP_SMOKE=%q\n' "${VM_SKIP_SMOKE:-0}"
	printf 'VM_SKIP_ROOTLESS=%q\n' "${VM_SKIP_ROOTLESS:-0}"
	printf 'VM_SKIP_UNIT=%q\n' "${VM_SKIP_UNIT:-0}"
	printf 'VM_GUEST_TIMEOUT=%q\n' "$((TIMEOUT > 120 ? TIMEOUT - 60 : TIMEOUT))"
} >"$RESULTS/run.env"

APPEND="root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 panic=1 mitigations=off"
APPEND="$APPEND modprobe.blacklist=floppy,parport_pc,ppdev,pcspkr"
if [ "$SHELL_MODE" = 0 ]; then
	APPEND="$APPEND peapod.run=1"
fi
# -nodefaults: no floppy, CD-ROM, VGA or NIC to probe (seconds under TCG).
QEMU=(qemu-system-x86_64 -accel tcg -m "$MEM" -smp 2 -nographic -no-reboot
	-nodefaults -serial mon:stdio
	-kernel "$CACHE/vmlinuz" -initrd "$CACHE/initrd.img" -append "$APPEND"
	-drive "file=$CACHE/rootfs.img,format=raw,if=virtio,snapshot=on"
	-nic none -device virtio-rng-pci
	-virtfs "local,path=$REPO,mount_tag=peapod,security_model=none,readonly=on"
	-virtfs "local,path=$RESULTS,mount_tag=results,security_model=none"
	-virtfs "local,path=$GOCACHE_DIR,mount_tag=gocache,security_model=none")
if [ -n "$GOROOT_HOST" ]; then
	QEMU+=(-virtfs "local,path=$GOROOT_HOST,mount_tag=goroot,security_model=none,readonly=on")
fi

if [ "$SHELL_MODE" = 1 ]; then
	log "shell: log in as root (no password). The shares are not mounted; e.g."
	log "  mkdir -p /mnt/results $REPO && mount -t 9p -o trans=virtio,version=9p2000.L results /mnt/results"
	log "  mount -t 9p -o trans=virtio,version=9p2000.L,ro peapod $REPO   (also: goroot, gocache)"
	log "poweroff (or Ctrl-A x) leaves"
	exec "${QEMU[@]}"
fi

CONSOLE=$RESULTS/console.log
log "booting $(cat "$CACHE/kernel.version" 2>/dev/null || echo kernel) under TCG (-smp 2, ${MEM} MiB), timeout ${TIMEOUT}s; console: $CONSOLE"
start=$(date +%s)
: >"$CONSOLE"
timeout --kill-after=15 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$CONSOLE" 2>&1 &
QPID=$!
# Live progress until qemu is gone: the whole console, or the guest's own lines.
if [ "${VM_VERBOSE:-0}" = 1 ]; then
	tail -n +1 --pid="$QPID" -F "$CONSOLE" 2>/dev/null || true
else
	tail -n +1 --pid="$QPID" -F "$CONSOLE" 2>/dev/null | grep --line-buffered -a 'PEAPOD-VM:' |
		sed -u 's/\r$//; s/^.*PEAPOD-VM: /[guest] /' || true
fi
qrc=0
wait "$QPID" || qrc=$?
elapsed=$(($(date +%s) - start))

echo
if [ ! -f "$RESULTS/exit-code" ]; then
	if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
		log "FAIL: the VM did not finish within ${TIMEOUT}s (set VM_TIMEOUT to change); last console lines:"
	else
		log "FAIL: the VM stopped (qemu exit $qrc) before the test command finished; last console lines:"
	fi
	tail -n 40 "$CONSOLE" | sed 's/\r$//; s/^/    /'
	[ -f "$RESULTS/summary.txt" ] && { log "partial summary:"; cat "$RESULTS/summary.txt"; }
	exit 1
fi
rc=$(cat "$RESULTS/exit-code")
boot=$(sed -n 's/^boot_seconds=//p' "$RESULTS/facts.txt" 2>/dev/null || true)
log "VM done in ${elapsed}s${boot:+ (guest up after ${boot}s)}; logs in $RESULTS"
if [ -f "$RESULTS/summary.txt" ]; then
	echo "==== summary (cgroup v2 VM) ===="
	cat "$RESULTS/summary.txt"
fi
if [ "$rc" != 0 ]; then
	# What failed, from each failing log (the full logs stay in $RESULTS).
	while read -r st name _; do
		[ "$st" = FAIL ] && [ -f "$RESULTS/$name.log" ] || continue
		echo "---- $name: failures (full log: $RESULTS/$name.log) ----"
		grep -E -- '^\s*--- FAIL|^\s+[A-Za-z0-9_]+\.go:[0-9]+: |^FAIL|^panic:' "$RESULTS/$name.log" | head -n 60
	done <"$RESULTS/summary.txt"
	log "FAIL (guest exit $rc)"
	exit 1
fi
log "PASS"
