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
# Exit 0 pass, 1 fail, 77 skipped (binaries not built).
set -u
: "${REPO:?REPO not set}"
PEAPOD=$REPO/bin/peapod
CRICTL=$REPO/bin/tools/crictl
CNI=$REPO/bin/cni
for f in "$PEAPOD" "$CRICTL" "$CNI/bridge"; do
	[ -x "$f" ] || { echo "SKIP: $f not built (make build tools)"; exit 77; }
done

BASE=$(mktemp -d /tmp/peapod-smoke.XXXXXX)
SOCK=$BASE/peapod.sock
DAEMON_LOG=$BASE/daemon.log
export CRI_CONFIG_FILE=/dev/null
KPARENT=/kubepods-vm/besteffort/podsmoke-uid-2
failures=0
DPID=

step() { echo "== $*"; }
ok() { echo "ok: $*"; }
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}
crictl() { "$CRICTL" --runtime-endpoint "unix://$SOCK" --timeout 120s "$@"; }

finish() {
	if [ -n "$DPID" ] && kill -0 "$DPID" 2>/dev/null; then
		kill -TERM "$DPID"
		for _ in $(seq 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$DPID" 2>/dev/null
	fi
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

finish
