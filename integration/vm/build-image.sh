#!/bin/bash
# Builds the v2 test VM: a Debian bookworm root (debootstrap) with Debian's
# linux-image-amd64, as an ext4 disk image, plus the kernel and initrd taken
# out of it. Everything lands in the cache dir given as $1 (bin/cache/vm):
#
#   base/        debootstrap + linux-image-amd64 + updates, unconfigured;
#   base.stamp   rebuilt only when SUITE, PACKAGES, build_base or BASE_REV change
#   rootfs.img   raw ext4 image of / (booted with -snapshot: never modified)
#   vmlinuz      the kernel of the image's linux-image-amd64
#   initrd.img   its initramfs (initramfs-tools, MODULES=list: virtio, ext4)
#   image.stamp  hash of this script and guest/: a change re-makes the image
#                from base/ (configuration + mkfs, well under a minute)
#
# Needs root, debootstrap and e2fsprogs (mkfs.ext4 -d: no loop device, no
# mount of the image). Packages come from the Debian mirror of the host's
# apt sources, through debootstrap and apt only.
set -euo pipefail

CACHE=${1:?usage: build-image.sh CACHE_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
SUITE=bookworm
# The packages of the brief; libpam-systemd and dbus-user-session make the
# lingering user manager (user@1000, the delegated subtree) start; procps and
# less only help debugging in vm-shell; slirp4netns is the rootless network
# (rootless-v2.sh).
PACKAGES=systemd,systemd-sysv,udev,iproute2,iptables,busybox-static,kmod,util-linux,ca-certificates,iperf3,uidmap,dbus,libseccomp2,libpam-systemd,dbus-user-session,procps,less,slirp4netns
# Bump to force a new base (e.g. for newer packages of the suite).
BASE_REV=1
TEST_USER=peapod-test
TEST_UID=1000

log() { printf '[vm-image] %s\n' "$*"; }
die() { printf '[vm-image] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot)"
for tool in debootstrap mkfs.ext4 chroot sha256sum; do
	command -v "$tool" >/dev/null || die "$tool missing: run 'make vm-deps' (apt-get install debootstrap e2fsprogs qemu-system-x86 qemu-utils)"
done

stamp() {
	(cd "$HERE" && cat build-image.sh guest/*) | sha256sum | cut -d' ' -f1
}
base_stamp() { # what the base is made of: the suite, the packages, build_base itself
	{ echo "$SUITE $PACKAGES $BASE_REV"; declare -f build_base; } | sha256sum | cut -d' ' -f1
}

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
want=$(stamp)
if [ -f "$CACHE/image.stamp" ] && [ "$(cat "$CACHE/image.stamp")" = "$want" ] &&
	[ -f "$CACHE/rootfs.img" ] && [ -f "$CACHE/vmlinuz" ] && [ -f "$CACHE/initrd.img" ]; then
	log "cached image is up to date ($CACHE)"
	exit 0
fi

# The mirror of the host's apt sources (deb822 or one-line format).
mirror() {
	local m
	m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
	[ -n "$m" ] || m=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
	echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=$(mirror)
SECURITY_MIRROR=${MIRROR%/debian}/debian-security

MOUNTED=()
cleanup() {
	local i
	for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
		umount -l "${MOUNTED[$i]}" 2>/dev/null || true
	done
	MOUNTED=()
}
trap cleanup EXIT

# Never delete through a mount point (a bind of the host's /dev or /proc).
safe_rmtree() {
	local dir=$1
	[ -e "$dir" ] || return 0
	if findmnt -rn -o TARGET | grep -q "^$dir"; then
		die "$dir still has mounts below it; not deleting"
	fi
	rm -rf --one-file-system "$dir"
}

start=$(date +%s)
BASE="$CACHE/base"
ROOT="$CACHE/rootfs.build"
rm -f "$CACHE/rootfs.img" "$CACHE/image.stamp"

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 "$@"; }

build_base() {
	local ROOT="$BASE.tmp"
	safe_rmtree "$ROOT"
	safe_rmtree "$BASE"
	rm -f "$CACHE/base.stamp"
	log "debootstrap $SUITE from $MIRROR (minbase + $PACKAGES)"
	debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" \
		>"$CACHE/debootstrap.log" 2>&1 || {
		tail -30 "$CACHE/debootstrap.log" >&2
		die "debootstrap failed (full log: $CACHE/debootstrap.log)"
	}
	cat >"$ROOT/etc/apt/sources.list" <<EOF2
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF2
	cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
	printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
	chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
	mount -t proc proc "$ROOT/proc" && MOUNTED+=("$ROOT/proc")
	mount -t sysfs sysfs "$ROOT/sys" && MOUNTED+=("$ROOT/sys")
	log "kernel (linux-image-amd64), updates of $SUITE-updates and -security"
	# A small initrd (it is decompressed under TCG at every boot): only what
	# mounting /dev/vda as ext4 needs; the rest loads from the root fs.
	mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
	echo 'MODULES=list' >"$ROOT/etc/initramfs-tools/conf.d/peapod-vm.conf"
	printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >>"$ROOT/etc/initramfs-tools/modules"
	{
		in_root apt-get update &&
			in_root apt-get -y -o Dpkg::Options::=--force-confold dist-upgrade &&
			in_root apt-get -y --no-install-recommends install linux-image-amd64 initramfs-tools &&
			in_root apt-get clean
	} >"$CACHE/apt.log" 2>&1 || {
		tail -30 "$CACHE/apt.log" >&2
		die "installing the kernel failed (full log: $CACHE/apt.log)"
	}
	cleanup
	rm -f "$ROOT/usr/sbin/policy-rc.d"
	rm -rf "$ROOT/var/lib/apt/lists/"*
	: >"$ROOT/etc/resolv.conf"
	mv "$ROOT" "$BASE"
	base_stamp >"$CACHE/base.stamp"
	log "base built in $(($(date +%s) - start)) s"
}

if [ -d "$BASE" ] && [ -f "$CACHE/base.stamp" ] && [ "$(cat "$CACHE/base.stamp")" = "$(base_stamp)" ]; then
	log "reusing the cached base ($BASE)"
else
	build_base
fi

safe_rmtree "$ROOT"
cp -a "$BASE" "$ROOT"

log "configuring the guest"
echo peapod-vm >"$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpeapod-vm\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
printf '/dev/vda\t/\text4\trw,relatime\t0\t0\n' >"$ROOT/etc/fstab"
# Root without a password: only reachable on the serial console (vm-shell).
in_root passwd -d root >/dev/null

# The delegated user of the rootless tests: subordinate ids, a systemd user
# manager at boot (linger) with the whole cgroup subtree delegated.
in_root useradd --create-home --shell /bin/bash --uid "$TEST_UID" "$TEST_USER"
echo "$TEST_USER:100000:65536" >"$ROOT/etc/subuid"
echo "$TEST_USER:100000:65536" >"$ROOT/etc/subgid"
mkdir -p "$ROOT/etc/systemd/system/user@.service.d" "$ROOT/var/lib/systemd/linger"
printf '[Service]\nDelegate=yes\n' >"$ROOT/etc/systemd/system/user@.service.d/delegate.conf"
touch "$ROOT/var/lib/systemd/linger/$TEST_USER"

# 9p for the shares, loaded before the test unit.
printf '9p\n9pnet_virtio\n' >"$ROOT/etc/modules-load.d/peapod-vm.conf"

# The test unit: runs only when the kernel command line says peapod.run=1.
install -m 0755 "$HERE/guest/peapod-vm-entry" "$ROOT/usr/local/sbin/peapod-vm-entry"
install -m 0644 "$HERE/guest/peapod-vm-test.service" "$ROOT/etc/systemd/system/peapod-vm-test.service"
in_root systemctl enable peapod-vm-test.service >/dev/null 2>&1
# Nothing periodic or networked in a VM that lives a few minutes.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
	systemd-timesyncd.service systemd-networkd.service systemd-resolved.service; do
	in_root systemctl mask "$u" >/dev/null 2>&1 || true
done
# A short journal, kept in memory.
mkdir -p "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' >"$ROOT/etc/systemd/journald.conf.d/peapod-vm.conf"

cleanup

kver=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -1)")
[ -f "$ROOT/boot/vmlinuz-$kver" ] && [ -f "$ROOT/boot/initrd.img-$kver" ] ||
	die "kernel $kver or its initrd missing in $ROOT/boot"
cp "$ROOT/boot/vmlinuz-$kver" "$CACHE/vmlinuz"
cp "$ROOT/boot/initrd.img-$kver" "$CACHE/initrd.img"
echo "$kver" >"$CACHE/kernel.version"

# An ext4 image straight from the directory; room to spare for the tests'
# files (writes go to qemu's -snapshot overlay, never into this file).
used_mb=$(du -sm "$ROOT" | cut -f1)
size_mb=$((used_mb + 1536))
log "ext4 image ${size_mb} MiB (${used_mb} MiB used), kernel $kver"
mkfs.ext4 -q -F -L peapod-root -d "$ROOT" "$CACHE/rootfs.img.tmp" "${size_mb}M"
mv "$CACHE/rootfs.img.tmp" "$CACHE/rootfs.img"
safe_rmtree "$ROOT"
echo "$want" >"$CACHE/image.stamp"
log "done in $(($(date +%s) - start)) s"
