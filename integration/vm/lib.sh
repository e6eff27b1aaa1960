# Shell helpers the VM's scripts share (sourced, inside the VM).

# Checks print "== what" for a step, "ok: what" or "FAIL: what"; failures
# counts the FAILs for the script's verdict.
failures=0
step() { echo "== $*"; }
ok() { echo "ok: $*"; }
fail() {
	echo "FAIL: $*"
	failures=$((failures + 1))
}

# make_image FILE TAG DIR: a docker-save archive of the VM's static busybox
# tagged TAG, built in DIR (no registry needed; `peapod image import FILE`).
make_image() {
	local file=$1 tag=$2 d=$3 bb diff a
	bb=$(command -v busybox) || return 1
	rm -rf "$d" && mkdir -p "$d/rootfs/bin" "$d/rootfs/etc" "$d/rootfs/tmp" "$d/rootfs/proc" "$d/rootfs/sys" "$d/rootfs/dev" || return 1
	cp "$bb" "$d/rootfs/bin/busybox" || return 1
	for a in sh sleep cat echo head dd seq kill true; do ln -s busybox "$d/rootfs/bin/$a"; done
	echo 'root:x:0:0:root:/root:/bin/sh' >"$d/rootfs/etc/passwd"
	echo 'root:x:0:' >"$d/rootfs/etc/group"
	tar -C "$d/rootfs" -cf "$d/layer.tar" . || return 1
	diff=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
	printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}\n' "$diff" >"$d/config.json"
	echo "[{\"Config\":\"config.json\",\"RepoTags\":[\"$tag\"],\"Layers\":[\"layer.tar\"]}]" >"$d/manifest.json"
	tar -C "$d" -cf "$file" manifest.json config.json layer.tar && chmod a+r "$file"
}

# unit_prop UNIT PROPERTY: one property of a systemd unit.
unit_prop() { systemctl show -p "$2" --value "$1" 2>/dev/null; }
