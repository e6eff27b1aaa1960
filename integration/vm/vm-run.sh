#!/bin/bash
# The suite, run INSIDE the VM by guest/peapod-vm-entry (cwd: the results
# share). Runs every precompiled test binary in $REPO/bin/vm/*.test from its
# package directory (as `go test` would), then the crictl smoke test of the
# real bin/peapod, the root system unit and the rootless user unit, and writes:
#
#   facts.txt        kernel, cgroup layout, delegation: what the suite ran on
#   <name>.log       full output of each binary / of the smoke test
#   summary.txt      one line per binary: PASS|FAIL|SKIP name seconds [detail]
#
# Exit status: 0 when everything passed.
set -u
RES=${RES:-/mnt/results}
: "${REPO:?REPO not set (run.env)}"
PER_BINARY_TIMEOUT=${VM_PER_BINARY_TIMEOUT:-600}

say() { echo "PEAPOD-VM: $*"; }

# The Go toolchain of the host, for tests that build helpers (pause's own
# `go build`), with a build cache the host warmed: nothing is fetched.
if [ -n "${GOROOT_HOST:-}" ]; then
	export PATH="$GOROOT_HOST/bin:$PATH"
fi
export HOME=/root TMPDIR=/tmp GOFLAGS=-buildvcs=false GOTOOLCHAIN=local GOPROXY=off GOTELEMETRY=off
# The image boots systemd: its driver's tests must run here, not skip.
export PEAPOD_REQUIRE_SYSTEMD=1
[ -n "${GOCACHE_HOST:-}" ] && export GOCACHE="$GOCACHE_HOST"

{
	echo "boot_seconds=$(cut -d' ' -f1 /proc/uptime)"
	echo "kernel=$(uname -r)"
	echo "cmdline=$(cat /proc/cmdline)"
	echo "cgroup_fs=$(stat -fc %T /sys/fs/cgroup)"
	echo "cgroup_mounts=$(grep cgroup /proc/mounts | tr '\n' ';')"
	echo "root_controllers=$(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"
	echo "root_subtree_control=$(cat /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null)"
	u=/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service
	echo "peapod_test_delegated_controllers=$(cat "$u/cgroup.controllers" 2>/dev/null || echo 'user@1000 not running')"
	echo "peapod_test_owner=$(stat -c %U "$u" 2>/dev/null)"
	echo "subuid=$(cat /etc/subuid)"
	echo "system_state=$(systemctl is-system-running 2>/dev/null)"
	echo "failed_units=$(systemctl --failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\n' ' ')"
	echo "systemd=$(systemctl --version 2>/dev/null | head -1)"
	echo "go=$(go version 2>/dev/null || echo none)"
} >"$RES/facts.txt"
say "up after $(sed -n 's/^boot_seconds=//p' "$RES/facts.txt") s; /sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup), controllers: $(cat /sys/fs/cgroup/cgroup.controllers 2>/dev/null)"

: >"$RES/summary.txt"
fails=0
record() { # status name seconds detail...
	local st=$1 name=$2 secs=$3
	shift 3
	printf '%-4s %-10s %4ss %s\n' "$st" "$name" "$secs" "$*" >>"$RES/summary.txt"
	say "$st $name (${secs}s) $*"
	[ "$st" = FAIL ] && fails=$((fails + 1))
	return 0
}

# The image itself: v2 only, and the delegated user of the rootless tests.
u=/sys/fs/cgroup/user.slice/user-1000.slice/user@1000.service
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
	record FAIL image 0 "/sys/fs/cgroup is $(stat -fc %T /sys/fs/cgroup), not cgroup2fs"
elif ! [ -d "$u" ] || [ "$(stat -c %U "$u")" != peapod-test ]; then
	record FAIL image 0 "user@1000 (peapod-test) is not running with a delegated cgroup: $(systemctl is-active user@1000.service)"
else
	record PASS image 0 "cgroup2 only; peapod-test's user@1000 delegated: $(cat "$u/cgroup.controllers")"
fi

shopt -s nullglob
bins=("$REPO"/bin/vm/*.test)
[ ${#bins[@]} -gt 0 ] || { record FAIL tests 0 "no test binaries in $REPO/bin/vm (make vm-bins)"; }
# cgroups first (it is what the VM is for), the long integration suite last.
ordered=()
for b in "${bins[@]}"; do [ "$(basename "$b")" = cgroups.test ] && ordered+=("$b"); done
for b in "${bins[@]}"; do case $(basename "$b") in cgroups.test | integration.test) ;; *) ordered+=("$b") ;; esac; done
for b in "${bins[@]}"; do [ "$(basename "$b")" = integration.test ] && ordered+=("$b"); done

for bin in "${ordered[@]}"; do
	name=$(basename "$bin" .test)
	pkgdir="$REPO/$name"
	[ -d "$pkgdir" ] || pkgdir=/tmp
	flagvar=VM_FLAGS_$name
	# shellcheck disable=SC2086
	extra=$(echo ${VM_TEST_FLAGS:-} ${!flagvar:-})
	tvar=VM_TIMEOUT_$name
	limit=${!tvar:-$PER_BINARY_TIMEOUT}
	say "RUN $name $extra"
	t0=$(date +%s)
	# shellcheck disable=SC2086
	(cd "$pkgdir" && exec timeout --kill-after=10 "$limit" "$bin" -test.v -test.count=1 \
		-test.timeout "$((limit - 30))s" $extra) >"$RES/$name.log" 2>&1
	rc=$?
	secs=$(($(date +%s) - t0))
	npass=$(grep -c -- '^--- PASS' "$RES/$name.log")
	nskip=$(grep -c -- '^--- SKIP' "$RES/$name.log")
	failed=$(grep -E -- '^\s*--- FAIL' "$RES/$name.log" | awk '{print $3}' | tr '\n' ' ')
	if [ "$rc" = 0 ]; then
		record PASS "$name" "$secs" "$npass passed, $nskip skipped${extra:+ ($extra)}"
	elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		record FAIL "$name" "$secs" "timed out after ${limit}s; failed: ${failed:-?}"
	else
		record FAIL "$name" "$secs" "exit $rc; failed: ${failed:-?}"
	fi
done

# run_script NAME DETAIL: runs integration/vm/NAME.sh into NAME.log and
# records it (exit 0 PASS with DETAIL, 77 SKIP, else FAIL).
run_script() {
	local name=$1 detail=$2 t0 rc secs
	say "RUN $name"
	t0=$(date +%s)
	bash "$REPO/integration/vm/$name.sh" >"$RES/$name.log" 2>&1
	rc=$?
	secs=$(($(date +%s) - t0))
	case $rc in
	0) record PASS "$name" "$secs" "$detail" ;;
	77) record SKIP "$name" "$secs" "$(tail -1 "$RES/$name.log")" ;;
	*) record FAIL "$name" "$secs" "exit $rc: $(grep '^FAIL' "$RES/$name.log" | head -1)" ;;
	esac
}

if [ "${VM_SKIP_SMOKE:-0}" != 1 ]; then
	run_script smoke "peapod + crictl on cgroup v2: pods (cgroupfs); pods + containers (systemd driver)"
fi
# The root system unit (contrib/peapod-root.service) under the VM's systemd.
if [ "${VM_SKIP_UNIT:-0}" != 1 ]; then
	run_script system-unit "contrib/peapod-root.service: ready on start (Type=notify), OOMScoreAdjust -999 for daemon and shim, a pod survives restart and kill -9"
fi
# Rootless peapod as peapod-test under systemd with a delegated cgroup.
if [ "${VM_SKIP_ROOTLESS:-0}" != 1 ]; then
	run_script rootless-v2 "peapod-test under systemd: pods in a delegated scope, limited and accounted, kept across a restart; undelegated: pods run"
fi

n=$(wc -l <"$RES/summary.txt")
say "DONE $((n - fails)) of $n passed"
[ "$fails" = 0 ]
