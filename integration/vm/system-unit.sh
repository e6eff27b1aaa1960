#!/bin/bash
# The root system unit, run INSIDE the VM by vm-run.sh: contrib/peapod-root.service
# installed as the README says, as a kubelet operator would, with peapod on
# its defaults (/run/peapod/peapod.sock, /var/lib/peapod, peapod0).
#   - `systemctl start` returns once peapod is ready (Type=notify): the
#     socket answers right away;
#   - the daemon and the pod's shim run with OOMScoreAdjust=-999;
#   - a pod with a running container survives `systemctl restart peapod`
#     and a kill -9 of the daemon (Restart=always brings it back), with the
#     same container process (KillMode=process);
#   - after crictl rmp and `systemctl stop`, nothing of peapod runs.
# The VM is thrown away afterwards; the script still undoes what it did.
#
# Exit 0 pass, 1 fail, 77 skipped (binaries not built, or no systemd).
set -u
: "${REPO:?REPO not set}"
. "$REPO/integration/vm/lib.sh"
PEAPOD=$REPO/bin/peapod
CRICTL=$REPO/bin/tools/crictl
for f in "$PEAPOD" "$CRICTL" "$REPO/bin/cni/bridge"; do
	[ -x "$f" ] || { echo "SKIP: $f not built (make build tools)"; exit 77; }
done
[ "$(cat /proc/1/comm)" = systemd ] || { echo "SKIP: systemd is not the init system"; exit 77; }

BASE=$(mktemp -d /tmp/peapod-unit.XXXXXX)
SOCK=/run/peapod/peapod.sock
export CRI_CONFIG_FILE=/dev/null
crictl() { "$CRICTL" --runtime-endpoint "unix://$SOCK" --timeout 60s "$@"; }
finish() {
	crictl rmp -fa >/dev/null 2>&1
	systemctl stop peapod 2>/dev/null
	systemctl disable peapod 2>/dev/null
	rm -f /etc/systemd/system/peapod.service /usr/local/bin/peapod
	rm -rf /opt/cni/bin /var/lib/peapod /run/peapod "$BASE"
	systemctl daemon-reload
	ip link del peapod0 2>/dev/null
	if [ "$failures" != 0 ]; then
		echo "---- journalctl -u peapod (last 60 lines) ----"
		journalctl -u peapod --no-pager -n 60
		echo "FAIL: $failures check(s) failed"
		exit 1
	fi
	echo "all checks passed"
	exit 0
}
main_pid() { unit_prop peapod.service MainPID; }
wait_main_pid_change() { # OLD: wait until a new daemon is active
	for _ in $(seq 100); do
		local p
		p=$(main_pid)
		[ "$(unit_prop peapod.service ActiveState)" = active ] && [ -n "$p" ] && [ "$p" != 0 ] && [ "$p" != "$1" ] && return 0
		sleep 0.1
	done
	return 1
}

step "install as the unit file says"
install -m 0755 "$PEAPOD" /usr/local/bin/peapod &&
	install -D -m 0755 -t /opt/cni/bin "$REPO"/bin/cni/* &&
	install -m 0644 "$REPO/contrib/peapod-root.service" /etc/systemd/system/peapod.service &&
	systemctl daemon-reload && systemctl enable peapod 2>/dev/null || { fail "install"; finish; }
ok "installed"

step "systemctl start peapod"
systemctl start peapod || { fail "systemctl start peapod"; finish; }
# No wait: Type=notify means start returned when the socket answers.
crictl version >/dev/null 2>&1 && ok "CRI answers as soon as systemctl start returns" ||
	fail "crictl version right after systemctl start: $(crictl version 2>&1)"
DPID=$(main_pid)
[ "$(cat "/proc/$DPID/oom_score_adj" 2>/dev/null)" = -999 ] && ok "daemon oom_score_adj -999" ||
	fail "daemon $DPID oom_score_adj $(cat "/proc/$DPID/oom_score_adj" 2>/dev/null)"

step "a pod with a running container"
make_image "$BASE/image.tar" example.test/unit:1 "$BASE/img" && peapod image import "$BASE/image.tar" >/dev/null ||
	{ fail "build or import the image"; finish; }
cat >"$BASE/pod.json" <<EOF
{"metadata":{"name":"unit","namespace":"vm","uid":"unit-uid-1"},"log_directory":"$BASE/logs","linux":{}}
EOF
cat >"$BASE/ctr.json" <<EOF
{"metadata":{"name":"sleeper"},"image":{"image":"example.test/unit:1"},"command":["sleep","600"],"log_path":"sleeper.log","linux":{}}
EOF
POD=$(crictl runp "$BASE/pod.json") || { fail "crictl runp"; finish; }
CID=$(crictl create "$POD" "$BASE/ctr.json" "$BASE/pod.json") && crictl start "$CID" >/dev/null ||
	{ fail "crictl create/start"; finish; }
CPID=$(crictl inspect -o go-template --template '{{.info.pid}}' "$CID" 2>/dev/null)
SHIM=$(pgrep -f "shim --dir /run/peapod/sandboxes/$POD/shim" | head -1)
[ -n "$SHIM" ] && [ "$(cat "/proc/$SHIM/oom_score_adj")" = -999 ] && ok "the pod's shim has oom_score_adj -999" ||
	fail "shim '$SHIM' oom_score_adj $(cat "/proc/$SHIM/oom_score_adj" 2>/dev/null)"
[ -n "$CPID" ] && [ "$CPID" -gt 0 ] 2>/dev/null && ok "container runs (pid $CPID)" || { fail "container pid '$CPID'"; finish; }

check_survived() { # WHAT
	[ "$(crictl inspect -o go-template --template '{{.status.state}}' "$CID" 2>/dev/null)" = CONTAINER_RUNNING ] &&
		[ "$(crictl inspect -o go-template --template '{{.info.pid}}' "$CID" 2>/dev/null)" = "$CPID" ] &&
		kill -0 "$CPID" 2>/dev/null &&
		[ "$(crictl inspectp -o go-template --template '{{.status.state}}' "$POD" 2>/dev/null)" = SANDBOX_READY ] &&
		ok "pod and container survived $1" ||
		fail "after $1: container $(crictl inspect -o go-template --template '{{.status.state}} pid {{.info.pid}}' "$CID" 2>&1), pod $(crictl inspectp -o go-template --template '{{.status.state}}' "$POD" 2>&1)"
}

step "systemctl restart peapod"
systemctl restart peapod || fail "systemctl restart peapod"
[ "$(main_pid)" != "$DPID" ] && ok "a new daemon ($(main_pid))" || fail "MainPID did not change"
check_survived "systemctl restart"

step "kill -9 of the daemon: Restart=always"
DPID=$(main_pid)
kill -KILL "$DPID"
wait_main_pid_change "$DPID" && ok "systemd restarted peapod ($(main_pid))" || fail "peapod not restarted after kill -9"
for _ in $(seq 50); do crictl version >/dev/null 2>&1 && break; sleep 0.1; done
check_survived "kill -9 and restart"

step "remove the pod, stop the unit"
crictl rmp -f "$POD" >/dev/null || fail "crictl rmp"
systemctl stop peapod || fail "systemctl stop"
left=$(pgrep -f "/run/peapod/bin/|/usr/local/bin/peapod" | tr '\n' ' ')
[ -z "$left" ] && ok "nothing of peapod runs" || fail "still running: $left"
kill -0 "$CPID" 2>/dev/null && fail "container process $CPID still runs" || ok "container process gone"
finish
