#!/bin/bash
# Rootless peapod on cgroup v2 with systemd delegation, run INSIDE the VM (as
# root) by vm-run.sh. The VM's peapod-test (uid 1000) has a lingering user
# manager whose user@1000.service is delegated (build-image.sh).
#
# Delegated: `peapod serve` runs as peapod-test in a user service with
# Delegate=yes and KillMode=process (as contrib/peapod.service), started
# as a user unit. Checks: the parent and the daemon stay in the unit's cgroup,
# which passes no controller down; the holder and the network helper are in
# the leaf "supervisor" of a scope with Delegate=yes (peapod-holder-<pid>.scope)
# that passes cpu, memory and pids down; Status names <scope>/pods as the
# default parent with every accounting controller available; a pod's pause
# is in <scope>/pods/<id>/<id>; a container
# (image imported in the daemon's user namespace) with memory, CPU and pids
# limits gets memory.max, cpu.max and pids.max and meets them (OOM kill of
# an allocation above the limit, CPU throttling, forks refused);
# ContainerStats and PodSandboxStats show its CPU and working set; `systemctl
# --user stop` with the pod running keeps the pod (KillMode=process) and a
# start joins it again (same holder, scope and pod); stop of the
# container and the pod, then of the unit, leaves no cgroup, scope, process
# or holder behind.
#
# Not delegated: the same binary started by peapod-test from a cgroup of
# root's (this test's system service): pods and a container with limits
# still run, without cgroups; Status and `peapod check` say why.
#
# Exit 0 pass, 1 fail, 77 skipped (binaries or slirp4netns missing).
set -u
: "${REPO:?REPO not set}"
. "$REPO/integration/vm/lib.sh"
U=peapod-test
for f in "$REPO/bin/peapod" "$REPO/bin/tools/crictl" "$REPO/bin/cni/bridge"; do
	[ -x "$f" ] || { echo "SKIP: $f not built (make build tools)"; exit 77; }
done
command -v slirp4netns >/dev/null || command -v pasta >/dev/null ||
	{ echo "SKIP: neither slirp4netns nor pasta in the image (build-image.sh PACKAGES)"; exit 77; }
id "$U" >/dev/null 2>&1 || { echo "FAIL: no user $U in the image"; exit 1; }
UUID=$(id -u "$U")
UHOME=$(getent passwd "$U" | cut -d: -f6)
RT=/run/user/$UUID
SOCK=$RT/peapod/peapod.sock
STATE=$RT/peapod
DATA=$UHOME/.local/share/peapod
UNIT=peapod-vmtest.service
OPT=/opt/peapod-vm
WORK=$UHOME/vmtest
CG=
export CRI_CONFIG_FILE=/dev/null

crictl() { "$OPT/bin/crictl" --runtime-endpoint "unix://$SOCK" --timeout 120s "$@"; }
uctl() { systemctl --user -M "$U@.host" "$@"; }
uprop() { uctl show -p "$2" --value "$1" 2>/dev/null; }
cgof() { sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null; }
holder_pid() { tr -d ' \n' 2>/dev/null <"$STATE/rootless/holder.json" | sed -n 's/.*"holder":{"pid":\([0-9]*\).*/\1/p'; }
net_pid() { tr -d ' \n' 2>/dev/null <"$STATE/rootless/holder.json" | sed -n 's/.*"net_process":{"pid":\([0-9]*\).*/\1/p'; }
flat() { tr -d ' \n\t' <"$1"; }
num() { grep -o "\"$1\":{\"value\":\"[0-9]*\"" | head -1 | grep -o '[0-9][0-9]*'; }
wait_sock() { # pid-or-unit-check seconds
	for _ in $(seq $((${2:-180} * 5))); do
		[ -S "$SOCK" ] && crictl version >/dev/null 2>&1 && return 0
		eval "$1" || return 1
		sleep 0.2
	done
	return 1
}

finish() {
	uctl stop "$UNIT" >/dev/null 2>&1
	uctl reset-failed "$UNIT" >/dev/null 2>&1
	rm -f "/etc/systemd/user/$UNIT"
	if [ "$failures" != 0 ]; then
		for l in "$WORK/daemon.log" "$WORK/undelegated.log"; do
			[ -f "$l" ] && { echo "---- $l (last 60 lines) ----"; tail -n 60 "$l"; }
		done
		echo "FAIL: $failures check(s) failed"
		exit 1
	fi
	echo "all checks passed"
	exit 0
}

# The binaries where peapod-test can run them, an image, the work dir.
rm -rf "$OPT" && mkdir -p "$OPT/bin/cni" || exit 1
cp "$REPO/bin/peapod" "$REPO/bin/tools/crictl" "$OPT/bin/" && cp "$REPO"/bin/cni/* "$OPT/bin/cni/" || exit 1
chmod -R a+rX "$OPT"
rm -rf "$WORK" && install -d -o "$U" -g "$U" "$WORK" || exit 1

make_image "$WORK/image.tar" example.test/rootless:1 "$WORK/img" || { fail "make the busybox image"; finish; }

pod_json() { # name uid file
	cat >"$3" <<EOF
{"metadata": {"name": "$1", "namespace": "default", "uid": "$2"}, "hostname": "$1",
 "log_directory": "$WORK/logs/$1", "linux": {}}
EOF
}

# ---------------------------------------------------------------- delegated
step "delegated: peapod serve as $U in the user unit $UNIT (contrib/peapod.service: Delegate=yes, KillMode=process)"
echo "systemd: $(systemctl --version | head -1)"
uctl reset-failed "$UNIT" >/dev/null 2>&1
# contrib/peapod.service as a user unit of every user (/etc/systemd/user),
# with this binary, its output in a file and no automatic restart.
sed -e "s|^ExecStart=.*|ExecStart=$OPT/bin/peapod serve --log-level debug\nStandardOutput=append:$WORK/daemon.log\nStandardError=append:$WORK/daemon.log|" \
	-e 's|^Restart=.*|Restart=no|' "$REPO/contrib/peapod.service" >"/etc/systemd/user/$UNIT"
grep -q '^Delegate=yes' "/etc/systemd/user/$UNIT" && grep -q '^KillMode=process' "/etc/systemd/user/$UNIT" ||
	fail "contrib/peapod.service lacks Delegate=yes or KillMode=process"
uctl daemon-reload
start_unit() { uctl start "$UNIT"; }
unit_active() { [ "$(uprop "$UNIT" ActiveState)" = active ] || [ "$(uprop "$UNIT" ActiveState)" = activating ]; }
start_unit || { fail "systemctl --user start $UNIT"; finish; }
if ! wait_sock unit_active 240; then
	fail "daemon did not serve on $SOCK ($UNIT: $(uprop "$UNIT" ActiveState) $(uprop "$UNIT" Result))"
	finish
fi
ok "daemon serving on $SOCK"
CG=$(uprop "$UNIT" ControlGroup)
MAIN=$(uprop "$UNIT" MainPID)
echo "unit cgroup $CG; main pid $MAIN"
case "$CG" in /user.slice/user-"$UUID".slice/user@"$UUID".service/*) ok "unit in $U's delegated tree" ;; *) fail "unit cgroup $CG is not under user@$UUID.service" ;; esac

# The service's cgroup keeps the parent, the daemon (and the shims) and
# passes nothing down, so that systemd can start it again while pods run;
# the holder and the network helper are in the leaf of a delegated scope
# (peapod-holder-<pid>.scope) beside it, the pods in <scope>/pods.
check_layout() { # what
	local main holder net pid daemon
	main=$(uprop "$UNIT" MainPID)
	holder=$(holder_pid)
	net=$(net_pid)
	SCOPE=peapod-holder-$holder.scope
	SC=$(dirname "$CG")/$SCOPE
	[ "$(uprop "$SCOPE" ActiveState)" = active ] && [ "$(uprop "$SCOPE" Delegate)" = yes ] && ok "$1: $SCOPE active, Delegate=yes" ||
		fail "$1: $SCOPE: $(uprop "$SCOPE" ActiveState) Delegate=$(uprop "$SCOPE" Delegate)"
	[ "$(uprop "$SCOPE" ControlGroup)" = "$SC" ] && ok "$1: scope cgroup $SC" || fail "$1: scope cgroup '$(uprop "$SCOPE" ControlGroup)', want $SC"
	for pid in "$holder" "$net"; do
		[ -n "$pid" ] && [ "$(cgof "$pid")" = "$SC/supervisor" ] && ok "$1: $(cat /proc/"$pid"/comm) $pid in $SC/supervisor" ||
			fail "$1: '$pid' ($(cat /proc/"$pid"/comm 2>/dev/null)) in '$(cgof "$pid")', want $SC/supervisor"
	done
	daemon=$(pgrep -P "$main" -x peapod | head -1)
	for pid in "$main" "$daemon"; do
		[ -n "$pid" ] && [ "$(cgof "$pid")" = "$CG" ] && ok "$1: $(cat /proc/"$pid"/comm) $pid in the service's cgroup" ||
			fail "$1: parent/daemon '$pid' in '$(cgof "$pid")', want $CG"
	done
	[ -z "$(cat "/sys/fs/cgroup$CG/cgroup.subtree_control")" ] && ok "$1: the service's cgroup passes no controller down" ||
		fail "$1: $CG/cgroup.subtree_control: $(cat "/sys/fs/cgroup$CG/cgroup.subtree_control")"
	[ -z "$(cat "/sys/fs/cgroup$SC/cgroup.procs")" ] && ok "$1: no process in the scope's own cgroup" ||
		fail "$1: processes in $SC: $(tr '\n' ' ' <"/sys/fs/cgroup$SC/cgroup.procs")"
	for c in cpu memory pids; do
		grep -qw "$c" "/sys/fs/cgroup$SC/cgroup.subtree_control" && ok "$1: $c enabled for the scope's children" ||
			fail "$1: $c not in $SC/cgroup.subtree_control ($(cat "/sys/fs/cgroup$SC/cgroup.subtree_control"))"
	done
}
check_layout start

crictl info >"$WORK/info.json" 2>&1 || fail "crictl info"
f=$(flat "$WORK/info.json")
echo "$f" | grep -q "\"defaultCgroupParent\":\"$SC/pods\"" && ok "Status: default cgroup parent $SC/pods" ||
	fail "Status: default cgroup parent: $(echo "$f" | grep -o '"defaultCgroupParent":"[^"]*"')"
un=$(echo "$f" | grep -o '"cgroupControllersUnavailable":\[[^]]*\]')
case "$un" in *'"cpu"'* | *'"memory"'* | *'"pids"'*) fail "Status: unavailable controllers $un" ;; *) ok "Status: cpu, memory, pids available ($un)" ;; esac

step "delegated: pod"
pod_json rl-pod rl-uid-1 "$WORK/pod.json"
POD=$(crictl runp "$WORK/pod.json" 2>&1 | tail -1)
[ ${#POD} = 64 ] || { fail "runp: $POD"; finish; }
ok "runp ${POD:0:12}"
PAUSE=$(crictl inspectp -o go-template --template '{{.info.pid}}' "$POD" 2>&1)
PODCG=$SC/pods/$POD
[ "$(cgof "$PAUSE")" = "$PODCG/$POD" ] && ok "pause $PAUSE in $PODCG/$POD" || fail "pause '$PAUSE' in '$(cgof "$PAUSE")', want $PODCG/$POD"
for c in cpu memory pids; do
	grep -qw "$c" "/sys/fs/cgroup$PODCG/cgroup.controllers" && ok "pod cgroup has $c" || fail "pod cgroup lacks $c"
done

step "delegated: image import in the daemon's user namespace"
HOLDER=$(holder_pid)
if nsenter -t "$HOLDER" -U -m -- "$OPT/bin/peapod" image import "$WORK/image.tar" --root "$DATA"; then
	ok "image imported"
else
	fail "peapod image import in the holder's namespaces"
fi

step "delegated: a container with memory, cpu and pids limits"
cat >"$WORK/ctr.json" <<'EOF'
{
  "metadata": {"name": "hog"},
  "image": {"image": "example.test/rootless:1"},
  "command": ["sh", "-c", "sh -c 'while :; do :; done' & b=$!; sleep 4; kill $b; head -c 33554432 /dev/zero >/dev/shm/fill; dd if=/dev/zero of=/dev/null bs=150M count=1; echo dd-exit=$?; (for i in $(seq 40); do sleep 600 & done) 2>/dev/null; echo forked; echo >/dev/shm/done; exec sleep 3600"],
  "log_path": "hog.log",
  "linux": {"resources": {"memory_limit_in_bytes": 100663296, "cpu_quota": 50000, "cpu_period": 100000, "unified": {"pids.max": "16"}}}
}
EOF
CTR=$(crictl create --no-pull "$POD" "$WORK/ctr.json" "$WORK/pod.json" 2>&1 | tail -1)
if [ ${#CTR} != 64 ]; then
	fail "crictl create: $CTR"
else
	crictl start "$CTR" >/dev/null 2>&1 && ok "container ${CTR:0:12} started" || fail "crictl start"
	CPID=$(crictl inspect -o go-template --template '{{.info.pid}}' "$CTR" 2>&1)
	CCG=$(cgof "$CPID")
	CD=/sys/fs/cgroup$CCG
	case "$CCG" in "$PODCG"/*) ok "container $CPID in $CCG" ;; *) fail "container '$CPID' in '$CCG', want below $PODCG" ;; esac
	[ "$(cat "$CD/memory.max" 2>/dev/null)" = 100663296 ] && ok "memory.max 96 MiB" || fail "memory.max '$(cat "$CD/memory.max" 2>&1)'"
	[ "$(cat "$CD/cpu.max" 2>/dev/null)" = "50000 100000" ] && ok "cpu.max 50 %" || fail "cpu.max '$(cat "$CD/cpu.max" 2>&1)'"
	[ "$(cat "$CD/pids.max" 2>/dev/null)" = 16 ] && ok "pids.max 16" || fail "pids.max '$(cat "$CD/pids.max" 2>&1)'"
	# The burn (4 s at a 50 % quota), 32 MiB of shm, a 150 MiB allocation
	# (OOM-killed), 40 forks (refused past 16): slow under TCG.
	for _ in $(seq 240); do
		grep -q forked "$WORK/logs/rl-pod/hog.log" 2>/dev/null && break
		sleep 0.5
	done
	echo "container log: $(tr '\n' ' ' <"$WORK/logs/rl-pod/hog.log" 2>/dev/null | head -c 600)"
	sleep 1
	thr=$(sed -n 's/^nr_throttled //p' "$CD/cpu.stat")
	[ "${thr:-0}" -gt 0 ] && ok "cpu throttled $thr times at the quota" || fail "cpu.stat: $(tr '\n' ' ' <"$CD/cpu.stat")"
	oom=$(sed -n 's/^oom_kill //p' "$CD/memory.events")
	[ "${oom:-0}" -ge 1 ] && ok "allocation above memory.max OOM-killed ($oom)" || fail "memory.events: $(tr '\n' ' ' <"$CD/memory.events")"
	grep -q 'dd-exit=137' "$WORK/logs/rl-pod/hog.log" && ok "the 150 MiB dd died of SIGKILL" || fail "no dd-exit=137 in the container log"
	pmax=$(sed -n 's/^max //p' "$CD/pids.events")
	[ "${pmax:-0}" -ge 1 ] && ok "forks refused at pids.max ($pmax)" || fail "pids.events: $(tr '\n' ' ' <"$CD/pids.events")"
	[ "$(cat "$CD/pids.current")" -le 16 ] && ok "pids.current $(cat "$CD/pids.current") <= 16" || fail "pids.current $(cat "$CD/pids.current")"

	step "delegated: ContainerStats and PodSandboxStats"
	if crictl stats -o json --id "$CTR" >"$WORK/cstats.json" 2>&1; then
		cpu=$(flat "$WORK/cstats.json" | num usageCoreNanoSeconds)
		mem=$(flat "$WORK/cstats.json" | num workingSetBytes)
		echo "container: cpu ${cpu:-none} ns, working set ${mem:-none} B"
		[ "${cpu:-0}" -gt 500000000 ] && ok "container cpu > 0.5 s (the burn)" || fail "container cpu ${cpu:-none}"
		[ "${mem:-0}" -gt 33000000 ] && [ "${mem:-0}" -le 100663296 ] && ok "container working set counts its 32 MiB, under the limit" ||
			fail "container working set ${mem:-none}"
	else
		fail "crictl stats: $(head -c 400 "$WORK/cstats.json")"
	fi
	if crictl statsp -o json --id "$POD" >"$WORK/pstats.json" 2>&1; then
		cpu=$(flat "$WORK/pstats.json" | num usageCoreNanoSeconds)
		mem=$(flat "$WORK/pstats.json" | num workingSetBytes)
		echo "pod: cpu ${cpu:-none} ns, working set ${mem:-none} B"
		[ "${cpu:-0}" -gt 500000000 ] && ok "pod cpu > 0.5 s" || fail "pod cpu ${cpu:-none}"
		[ "${mem:-0}" -gt 33000000 ] && ok "pod working set counts the container's" || fail "pod working set ${mem:-none}"
	else
		fail "crictl statsp: $(head -c 400 "$WORK/pstats.json")"
	fi
fi

step "delegated: stop the unit with the pod running, start it again"
uctl stop "$UNIT"
for _ in $(seq 100); do [ "$(uprop "$UNIT" ActiveState)" = inactive ] || [ "$(uprop "$UNIT" ActiveState)" = failed ] && break; sleep 0.2; done
kill -0 "$PAUSE" 2>/dev/null && ok "pause survives the stop" || fail "pause gone with the unit"
[ -d "/sys/fs/cgroup$PODCG" ] && ok "pod cgroup kept" || fail "pod cgroup gone with the unit"
OLD_HOLDER=$HOLDER
OLD_SC=$SC
uctl reset-failed "$UNIT" >/dev/null 2>&1
if start_unit && wait_sock unit_active 240; then
	ok "restarted"
	[ "$(holder_pid)" = "$OLD_HOLDER" ] && ok "joined the running holder $OLD_HOLDER" || fail "holder $(holder_pid), was $OLD_HOLDER"
	check_layout restart
	[ "$SC" = "$OLD_SC" ] && ok "the same scope" || fail "scope $SC, was $OLD_SC"
	st=$(crictl inspectp -o go-template --template '{{.status.state}}' "$POD" 2>&1)
	[ "$st" = SANDBOX_READY ] && ok "pod still ready" || fail "pod after restart: $st"
	[ "$(cgof "$PAUSE")" = "$PODCG/$POD" ] && ok "pause still in its cgroup" || fail "pause in '$(cgof "$PAUSE")'"
else
	fail "start after stop with a running pod: $(uprop "$UNIT" ActiveState) $(uprop "$UNIT" Result) status $(uprop "$UNIT" ExecMainStatus)"
	finish
fi

step "delegated: remove everything, stop"
if [ -n "${CTR:-}" ] && [ ${#CTR} = 64 ]; then
	crictl stop --timeout 2 "$CTR" >/dev/null 2>&1 && ok "stop container" || fail "crictl stop"
	crictl rm "$CTR" >/dev/null 2>&1 && ok "rm container" || fail "crictl rm"
	[ -d "$CD" ] && fail "container cgroup $CD left" || ok "container cgroup removed"
fi
crictl stopp "$POD" >/dev/null 2>&1 && ok "stopp" || fail "stopp"
crictl rmp "$POD" >/dev/null 2>&1 && ok "rmp" || fail "rmp"
kill -0 "$PAUSE" 2>/dev/null && fail "pause alive after rmp" || ok "pause gone"
[ -d "/sys/fs/cgroup$PODCG" ] && fail "pod cgroup left" || ok "pod cgroup removed"
HOLDER=$(holder_pid)
uctl stop "$UNIT"
for _ in $(seq 100); do [ "$(uprop "$UNIT" ActiveState)" = inactive ] && break; sleep 0.2; done
[ "$(uprop "$UNIT" ActiveState)" = inactive ] && ok "unit stopped ($(uprop "$UNIT" Result))" || fail "unit $(uprop "$UNIT" ActiveState)"
kill -0 "$HOLDER" 2>/dev/null && fail "holder $HOLDER alive after the last stop" || ok "holder gone"
[ -d "/sys/fs/cgroup$CG" ] && fail "unit cgroup left: $(find "/sys/fs/cgroup$CG" | tr '\n' ' ')" || ok "no cgroup left of $UNIT"
for _ in $(seq 50); do [ -d "/sys/fs/cgroup$SC" ] || break; sleep 0.2; done
[ -d "/sys/fs/cgroup$SC" ] && fail "scope cgroup left: $(find "/sys/fs/cgroup$SC" | tr '\n' ' ')" || ok "no cgroup left of $SCOPE"
[ "$(uprop "$SCOPE" ActiveState)" = active ] && fail "$SCOPE still active" || ok "$SCOPE gone"
left=$(ps -u "$U" -o pid=,comm= | grep -v -e systemd -e '(sd-pam)' -e dbus-daemon || true)
[ -z "$left" ] && ok "no process of $U left but its user manager" || fail "processes left: $left"

# ------------------------------------------------------------ not delegated
step "not delegated: peapod serve as $U from root's cgroup $(cgof $$)"
rm -rf "$STATE"
(cd / && exec runuser -u "$U" -- env -i HOME="$UHOME" USER="$U" LOGNAME="$U" XDG_RUNTIME_DIR="$RT" PATH=/usr/local/bin:/usr/bin:/bin \
	"$OPT/bin/peapod" serve --log-level debug) >"$WORK/undelegated.log" 2>&1 &
NPID=$!
if ! wait_sock "kill -0 $NPID 2>/dev/null" 240; then
	fail "undelegated daemon did not serve"
	kill "$NPID" 2>/dev/null
	finish
fi
ok "daemon serving"
grep -q 'no delegated cgroup v2 subtree' "$WORK/undelegated.log" && ok "parent logged why there is no cgroup" || fail "no warning in the parent's log"
crictl info >"$WORK/info2.json" 2>&1
f=$(flat "$WORK/info2.json")
for c in cpu memory pids; do
	echo "$f" | grep -q "\"$c\":\"notdelegatedtothisuser" && ok "Status: $c not delegated, with the reason" ||
		fail "Status gives no reason for $c: $(echo "$f" | grep -o '"cgroupControllersUnavailableReasons":{[^}]*}' | head -c 600)"
done
pod_json rl-nodeleg rl-uid-2 "$WORK/pod2.json"
POD2=$(crictl runp "$WORK/pod2.json" 2>&1 | tail -1)
if [ ${#POD2} = 64 ]; then
	ok "runp without a delegated cgroup"
	P2=$(crictl inspectp -o go-template --template '{{.info.pid}}' "$POD2" 2>&1)
	echo "pause $P2 in $(cgof "$P2")"
	cp "$WORK/ctr.json" "$WORK/ctr2.json"
	HOLDER=$(holder_pid)
	nsenter -t "$HOLDER" -U -m -- "$OPT/bin/peapod" image import "$WORK/image.tar" --root "$DATA" >/dev/null 2>&1 || fail "image import (undelegated)"
	C2=$(crictl create --no-pull "$POD2" "$WORK/ctr2.json" "$WORK/pod2.json" 2>&1 | tail -1)
	if [ ${#C2} = 64 ] && crictl start "$C2" >/dev/null 2>&1; then
		ok "container with limits runs (limits dropped)"
		[ "$(crictl inspect -o go-template --template '{{.status.state}}' "$C2" 2>&1)" = CONTAINER_RUNNING ] && ok "container running" || fail "container not running"
		crictl stats -o json --id "$C2" >"$WORK/cstats2.json" 2>&1 && ok "ContainerStats answers without cgroups" || fail "crictl stats: $(head -c 300 "$WORK/cstats2.json")"
		crictl stop --timeout 2 "$C2" >/dev/null 2>&1; crictl rm "$C2" >/dev/null 2>&1 || fail "rm container"
	else
		fail "container without a delegated cgroup: $C2"
	fi
	crictl stopp "$POD2" >/dev/null 2>&1 && crictl rmp "$POD2" >/dev/null 2>&1 && ok "stopp/rmp" || fail "stopp/rmp"
	kill -0 "$P2" 2>/dev/null && fail "pause alive after rmp" || ok "pause gone"
else
	fail "runp without a delegated cgroup: $POD2"
fi
(cd / && runuser -u "$U" -- env -i HOME="$UHOME" USER="$U" XDG_RUNTIME_DIR="$RT" PATH=/usr/local/bin:/usr/bin:/bin \
	"$OPT/bin/peapod" check) >"$WORK/check.txt" 2>&1
echo "peapod check: $(grep -i cgroup "$WORK/check.txt" | head -3)"
grep -qi 'cgroup' "$WORK/check.txt" && grep -qi "user@$UUID.service\|Delegate" "$WORK/check.txt" && ok "peapod check says where the delegated cgroup is" ||
	fail "peapod check says nothing about cgroup delegation: $(head -c 800 "$WORK/check.txt")"
kill -TERM "$NPID"
for _ in $(seq 100); do kill -0 "$NPID" 2>/dev/null || break; sleep 0.2; done
kill -0 "$NPID" 2>/dev/null && fail "undelegated parent still running"
HOLDER=$(holder_pid)
[ -z "$HOLDER" ] && ok "namespaces removed" || fail "holder record left: $HOLDER"
[ -d /sys/fs/cgroup/peapod-$U ] && fail "/sys/fs/cgroup/peapod-$U made" || true
finish
