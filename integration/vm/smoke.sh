#!/bin/bash
# Smoke test of the real daemon on cgroup v2, run INSIDE the VM by
# vm-run.sh: bin/peapod with its embedded default network and the plugins of
# bin/cni, driven by bin/tools/crictl. Two pods: one under peapod's default
# cgroup parent, one under a kubelet-style parent (created beforehand, as a
# kubelet does, with controllers enabled). For each: runp, inspectp, the
# pause process in the pod cgroup (0::/... only: v2), accounting controllers
# present, pod IP on eth0 of the pinned netns; then stopp, rmp, and nothing
# left (cgroup, pause, state).
#
# Then the same binary with --cgroup-driver systemd (the image boots
# systemd): pods in a slice made by the "kubelet", in a slice peapod makes
# for a parent that does not exist yet, and in a slice of peapod's own; the
# pause in peapod-<id>.scope; a container (image made here from the VM's
# busybox, imported with `peapod image import`) in peapod-<id>.scope of the
# same slice with its limits as unit properties, its stats; after rm / rmp
# no scope or peapod slice is left and the kubelet's slice is kept.
#
# Exit 0 pass, 1 fail, 77 skipped (binaries not built).
set -u
: "${REPO:?REPO not set}"
. "$REPO/integration/vm/lib.sh"
PEAPOD=$REPO/bin/peapod
CRICTL=$REPO/bin/tools/crictl
CNI=$REPO/bin/cni
for f in "$PEAPOD" "$CRICTL" "$CNI/bridge"; do
	[ -x "$f" ] || { echo "SKIP: $f not built (make build tools)"; exit 77; }
done
# VM only: on a cgroup v1 host (this project's own), /sys/fs/cgroup is a
# tmpfs, and the mkdir and echo below would leave plain files in it that
# confuse every cgroup library on the host.
if [ ! -f /sys/fs/cgroup/cgroup.controllers ]; then
	echo "FAIL: smoke.sh runs inside the cgroup v2 VM (make vm-test), not on this host: /sys/fs/cgroup is not cgroup2"
	exit 1
fi

BASE=$(mktemp -d /tmp/peapod-smoke.XXXXXX)
SOCK=$BASE/peapod.sock
DAEMON_LOG=$BASE/daemon.log
export CRI_CONFIG_FILE=/dev/null
KPARENT=/kubepods-vm/besteffort/podsmoke-uid-2
DPID=

crictl() { "$CRICTL" --runtime-endpoint "unix://$SOCK" --timeout 120s "$@"; }

stop_daemon() {
	if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
		kill -TERM "$DPID"
		for _ in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$DPID" 2>/dev/null
	fi
	DPID=
}
finish() {
	stop_daemon
	if [ "$failures" != 0 ]; then
		echo "---- daemon log (last 80 lines) ----"
		tail -n 80 "$DAEMON_LOG"
		echo "FAIL: $failures check(s) failed"
		exit 1
	fi
	echo "all checks passed"
	exit 0
}

step "peapod $("$PEAPOD" --version 2>&1 | head -1)"
"$PEAPOD" serve --socket "$SOCK" --root "$BASE/root" --state "$BASE/state" \
	--cni-conf-dir "$BASE/net.d" --cni-bin-dir "$CNI" --log-level debug >"$DAEMON_LOG" 2>&1 &
DPID=$!
for _ in $(seq 300); do
	[ -S "$SOCK" ] && break
	kill -0 "$DPID" 2>/dev/null || break
	sleep 0.2
done
if ! [ -S "$SOCK" ]; then
	fail "daemon did not listen on $SOCK"
	finish
fi
ok "daemon listening"
crictl version || fail "crictl version"
step "crictl info (runtime status)"
crictl info >"$BASE/info.json" 2>&1 || fail "crictl info"
sed -n '1,60p' "$BASE/info.json"


run_pod() { # name uid cgroup_parent
	local name=$1 uid=$2 parent=$3 json="$BASE/$1.json" out id state pid ip cg cgdir=
	step "pod $name (cgroup_parent ${parent:-default})"
	cat >"$json" <<EOF
{
  "metadata": {"name": "$name", "namespace": "default", "uid": "$uid"},
  "hostname": "$name",
  "log_directory": "$BASE/logs/$name",
  "linux": {${parent:+\"cgroup_parent\": \"$parent\"}}
}
EOF
	if ! out=$(crictl runp "$json" 2>&1); then
		fail "crictl runp $name: $out"
		return
	fi
	id=$(echo "$out" | tail -1)
	[ ${#id} = 64 ] || { fail "runp printed '$out', want a sandbox id"; return; }
	ok "runp $name -> ${id:0:12}"
	crictl inspectp "$id" >"$BASE/$name.inspect" 2>&1 || fail "crictl inspectp"
	read -r state pid ip < <(crictl inspectp -o go-template \
		--template '{{.status.state}} {{.info.pid}} {{.status.network.ip}}' "$id" 2>&1)
	[ "$state" = SANDBOX_READY ] && ok "state SANDBOX_READY" || fail "state is '$state', want SANDBOX_READY"
	[ -n "$ip" ] && ok "pod IP $ip" || fail "no pod IP in inspectp"
	if [ -z "$pid" ] || ! [ -r "/proc/$pid/cgroup" ]; then
		fail "no live pause pid in inspectp ($pid)"
	else
		cg=$(cat "/proc/$pid/cgroup")
		echo "pause $pid: /proc/$pid/cgroup = $cg"
		case "$cg" in
		0::/*) [ "$(echo "$cg" | wc -l)" = 1 ] && ok "pause in a v2-only cgroup" || fail "more than one hierarchy: $cg" ;;
		*) fail "pause cgroup is not a v2 path: $cg" ;;
		esac
		cgdir=/sys/fs/cgroup${cg#0::}
		if [ -n "$parent" ]; then
			case "${cg#0::}" in "$parent"/*) ok "pause below the kubelet's parent $parent" ;; *) fail "pause not below $parent: $cg" ;; esac
		fi
		grep -qx "$pid" "$cgdir/cgroup.procs" && ok "pid in $cgdir/cgroup.procs" || fail "pid not in $cgdir/cgroup.procs"
		podcg=$(dirname "$cgdir")
		echo "pod cgroup $podcg: controllers '$(cat "$podcg/cgroup.controllers")'; memory.current=$(cat "$podcg/memory.current" 2>/dev/null) pids.current=$(cat "$podcg/pids.current" 2>/dev/null)"
		for c in cpu memory pids; do
			grep -qw "$c" "$podcg/cgroup.controllers" && ok "pod cgroup has the $c controller" || fail "pod cgroup lacks the $c controller (accounting)"
		done
		if command -v nsenter >/dev/null; then
			nsenter -t "$pid" -n ip -4 -o addr show dev eth0 2>&1 | grep -q " $ip/" && ok "eth0 in the pod netns has $ip" || fail "eth0 of the pod netns lacks $ip"
		fi
	fi
	# Pod stats come from the v2 files (cpu.stat, memory.*, pids.current).
	if crictl statsp --id "$id" -o json >"$BASE/$name.stats" 2>&1; then
		flat=$(tr -d ' \n' <"$BASE/$name.stats")
		cpu=$(echo "$flat" | grep -o '"usageCoreNanoSeconds":{"value":"[0-9]*"' | head -1 | grep -o '[0-9][0-9]*')
		mem=$(echo "$flat" | grep -o '"workingSetBytes":{"value":"[0-9]*"' | head -1 | grep -o '[0-9][0-9]*')
		echo "statsp: cpu usageCoreNanoSeconds=${cpu:-none} memory workingSetBytes=${mem:-none}"
		[ "${cpu:-0}" -gt 0 ] && ok "statsp: pod cpu usage from cpu.stat" || fail "statsp: no pod cpu usage: $(head -c 600 "$BASE/$name.stats")"
		[ "${mem:-0}" -gt 0 ] && ok "statsp: pod working set from memory.*" || fail "statsp: no pod working set: $(head -c 600 "$BASE/$name.stats")"
	else
		fail "crictl statsp: $(head -5 "$BASE/$name.stats")"
	fi
	crictl stopp "$id" >/dev/null 2>&1 && ok "stopp" || fail "crictl stopp $id"
	crictl rmp "$id" >/dev/null 2>&1 && ok "rmp" || fail "crictl rmp $id"
	[ -n "$pid" ] && { kill -0 "$pid" 2>/dev/null && fail "pause $pid still alive after rmp" || ok "pause gone"; }
	if [ -n "$cgdir" ]; then
		[ -d "$cgdir" ] && fail "pause cgroup $cgdir left after rmp" || ok "pause cgroup removed"
		# peapod's own pod cgroup goes; a kubelet's parent stays (checked below).
		if [ -z "$parent" ]; then
			[ -d "$(dirname "$cgdir")" ] && fail "pod cgroup $(dirname "$cgdir") left after rmp" || ok "pod cgroup removed"
		fi
	fi
	[ -z "$(crictl pods -q 2>/dev/null)" ] && ok "no pods listed" || fail "pods still listed: $(crictl pods 2>&1)"
}

run_pod smoke-default smoke-uid-1 ""

# A kubelet (cgroupDriver=cgroupfs) creates the pod's parent and enables the
# controllers down to it before RunPodSandbox.
mkdir -p "/sys/fs/cgroup$KPARENT"
p=/sys/fs/cgroup
for part in ${KPARENT//\// }; do
	echo "+cpu +memory +pids +io" >"$p/cgroup.subtree_control" 2>/dev/null || echo "+cpu +memory +pids" >"$p/cgroup.subtree_control"
	p=$p/$part
done
run_pod smoke-kubelet smoke-uid-2 "$KPARENT"
[ -d "/sys/fs/cgroup$KPARENT" ] && ok "kubelet's parent kept" || fail "the kubelet's parent $KPARENT was removed"
rmdir "/sys/fs/cgroup$KPARENT" "/sys/fs/cgroup/kubepods-vm/besteffort" "/sys/fs/cgroup/kubepods-vm" 2>/dev/null

# ---- the systemd cgroup driver ----

wait_inactive() { # unit
	for _ in $(seq 100); do
		[ "$(unit_prop "$1" ActiveState)" = active ] || return 0
		sleep 0.2
	done
	return 1
}

# sd_container POD_ID POD_JSON POD_CGROUP_DIR: a container in its scope.
sd_container() {
	local id=$1 json=$2 podcg=$3 cj="$BASE/ctr-$1.json" cid cpid cg flat cpu mem
	cat >"$cj" <<'EOF'
{
  "metadata": {"name": "work"},
  "image": {"image": "example.test/smoke:1"},
  "command": ["sh", "-c", "i=0; while [ $i -lt 50000 ]; do i=$((i+1)); done; head -c 16777216 /dev/zero >/dev/shm/fill; echo >/dev/shm/filled; exec sleep 3600"],
  "log_path": "work.log",
  "linux": {"resources": {"memory_limit_in_bytes": 104857600, "cpu_quota": 50000, "cpu_period": 100000}}
}
EOF
	cid=$(crictl create --no-pull "$id" "$cj" "$json" 2>&1 | tail -1)
	if [ ${#cid} != 64 ]; then
		fail "crictl create: $cid"
		return
	fi
	crictl start "$cid" >/dev/null 2>&1 || { fail "crictl start $cid"; return; }
	cpid=$(crictl inspect -o go-template --template '{{.info.pid}}' "$cid" 2>&1)
	cg=$(cat "/proc/$cpid/cgroup" 2>/dev/null)
	if [ "$cg" = "0::${podcg#/sys/fs/cgroup}/peapod-$cid.scope" ]; then
		ok "container in peapod-${cid:0:12}….scope of the pod slice"
	else
		fail "container $cpid cgroup '$cg', want 0::${podcg#/sys/fs/cgroup}/peapod-$cid.scope"
	fi
	[ "$(unit_prop "peapod-$cid.scope" MemoryMax)" = 104857600 ] && ok "container scope MemoryMax=100M" ||
		fail "container scope MemoryMax=$(unit_prop "peapod-$cid.scope" MemoryMax)"
	[ "$(unit_prop "peapod-$cid.scope" CPUQuotaPerSecUSec)" = 500ms ] && ok "container scope CPUQuota 50%" ||
		fail "container scope CPUQuotaPerSecUSec=$(unit_prop "peapod-$cid.scope" CPUQuotaPerSecUSec)"
	# The loop and the 16 MiB in /dev/shm (shmem: charged to the writer,
	# part of its working set) take a while under TCG.
	for _ in $(seq 60); do
		[ "$(crictl exec "$cid" sh -c '[ -f /dev/shm/filled ] && echo y' 2>/dev/null)" = y ] && break
		sleep 0.5
	done
	sleep 1
	if crictl stats -o json --id "$cid" >"$BASE/cstats-$id" 2>&1; then
		flat=$(tr -d ' \n' <"$BASE/cstats-$id")
		cpu=$(echo "$flat" | grep -o '"usageCoreNanoSeconds":{"value":"[0-9]*"' | head -1 | grep -o '[0-9][0-9]*')
		mem=$(echo "$flat" | grep -o '"workingSetBytes":{"value":"[0-9]*"' | head -1 | grep -o '[0-9][0-9]*')
		echo "container stats: cpu ${cpu:-none} ns, working set ${mem:-none} B"
		[ "${cpu:-0}" -gt 0 ] && ok "container cpu usage read from its scope" || fail "no container cpu usage: $(head -c 600 "$BASE/cstats-$id")"
		[ "${mem:-0}" -gt 16000000 ] && ok "container working set counts its 16 MiB" || fail "container working set ${mem:-none}, want > 16 MB"
	else
		fail "crictl stats: $(head -5 "$BASE/cstats-$id")"
	fi
	crictl stop --timeout 2 "$cid" >/dev/null 2>&1 && ok "stop container" || fail "crictl stop $cid"
	crictl rm "$cid" >/dev/null 2>&1 && ok "rm container" || fail "crictl rm $cid"
	wait_inactive "peapod-$cid.scope" && ok "container scope gone" || fail "container scope still active"
}

sd_pod() { # name uid slice-or-empty owned(1 if peapod makes the slice)
	local name=$1 uid=$2 parent=$3 owned=$4 json="$BASE/$1.json" out id pid slice cg podcg
	step "systemd driver: pod $name (cgroup_parent ${parent:-none})"
	cat >"$json" <<EOF
{
  "metadata": {"name": "$name", "namespace": "default", "uid": "$uid"},
  "hostname": "$name",
  "log_directory": "$BASE/logs/$name",
  "linux": {${parent:+\"cgroup_parent\": \"$parent\"}}
}
EOF
	if ! out=$(crictl runp "$json" 2>&1); then
		fail "crictl runp $name: $out"
		return
	fi
	id=$(echo "$out" | tail -1)
	pid=$(crictl inspectp -o go-template --template '{{.info.pid}}' "$id" 2>&1)
	cg=$(cat "/proc/$pid/cgroup" 2>/dev/null)
	echo "pause $pid: $cg"
	case "$cg" in 0::*/peapod-"$id".scope) ok "pause in peapod-${id:0:12}….scope" ;; *) fail "pause cgroup '$cg' is not peapod-$id.scope" ;; esac
	[ "$(unit_prop "peapod-$id.scope" ActiveState)" = active ] && ok "pause scope unit active" ||
		fail "pause scope unit: $(unit_prop "peapod-$id.scope" ActiveState)"
	slice=$(unit_prop "peapod-$id.scope" Slice)
	if [ -n "$parent" ]; then
		[ "$slice" = "$parent" ] && ok "pause scope in the slice $parent" || fail "pause scope in slice '$slice', want $parent"
	else
		case "$slice" in peapod*-"$id".slice) ok "pause scope in peapod's pod slice $slice" ;; *) fail "pause scope in slice '$slice'" ;; esac
	fi
	podcg=/sys/fs/cgroup$(unit_prop "$slice" ControlGroup)
	sd_container "$id" "$json" "$podcg"
	crictl stopp "$id" >/dev/null 2>&1 && ok "stopp" || fail "crictl stopp $id"
	crictl rmp "$id" >/dev/null 2>&1 && ok "rmp" || fail "crictl rmp $id"
	kill -0 "$pid" 2>/dev/null && fail "pause $pid alive after rmp" || ok "pause gone"
	wait_inactive "peapod-$id.scope" && ok "pause scope gone" || fail "pause scope still active"
	if [ "$owned" = 1 ]; then
		wait_inactive "$slice" && ok "peapod's pod slice $slice stopped" || fail "pod slice $slice still active"
		[ -d "$podcg" ] && fail "pod slice cgroup $podcg left" || ok "pod slice cgroup removed"
	else
		[ "$(unit_prop "$slice" ActiveState)" = active ] && ok "the kubelet's slice kept" || fail "the kubelet's slice $slice was stopped"
	fi
}

if ! [ -d /run/systemd/system ]; then
	echo "systemd is not PID 1 here: the systemd driver part is left out"
	finish
fi
stop_daemon
SDROOT=$BASE/root-sd
step "systemd driver: import the smoke image"
if make_image "$BASE/smoke-image.tar" example.test/smoke:1 "$BASE/img" && "$PEAPOD" image import "$BASE/smoke-image.tar" --root "$SDROOT"; then
	ok "image example.test/smoke:1 imported"
else
	fail "build or import the smoke image"
fi
SOCK=$BASE/peapod-sd.sock
"$PEAPOD" serve --cgroup-driver systemd --socket "$SOCK" --root "$SDROOT" --state "$BASE/state-sd" \
	--cni-conf-dir "$BASE/net.d" --cni-bin-dir "$CNI" --log-level debug >>"$DAEMON_LOG" 2>&1 &
DPID=$!
for _ in $(seq 300); do
	[ -S "$SOCK" ] && break
	kill -0 "$DPID" 2>/dev/null || break
	sleep 0.2
done
if ! [ -S "$SOCK" ]; then
	fail "daemon with --cgroup-driver systemd did not listen on $SOCK"
	finish
fi
ok "daemon with --cgroup-driver systemd listening"
crictl info 2>&1 | grep -q '"cgroupDriver": "systemd"' && ok "crictl info: cgroupDriver systemd" ||
	fail "crictl info does not say systemd: $(crictl info 2>&1 | grep -i cgroup)"

# A kubelet makes its pod slice before RunPodSandbox (a unit in it keeps it
# up here).
KSLICE=kubepods-besteffort-podsmoke$$.slice
systemd-run --quiet --unit "smoke-kubelet-$$" --slice "$KSLICE" --property DefaultDependencies=no sleep 600 ||
	fail "make the kubelet's slice $KSLICE"
sd_pod sd-kubelet sd-uid-1 "$KSLICE" 0
systemctl stop "smoke-kubelet-$$.service" "$KSLICE" 2>/dev/null
# A parent slice that does not exist yet: peapod makes it, and removes it.
sd_pod sd-newslice sd-uid-2 "kubepods-burstable-podsmoke$$.slice" 1
# No parent (crictl's default): a slice of peapod's own.
sd_pod sd-default sd-uid-3 "" 1
[ -z "$(crictl pods -q 2>/dev/null)" ] && ok "no pods listed" || fail "pods still listed: $(crictl pods 2>&1)"

finish
