#!/bin/sh
# Builds a static busybox with busybox's own default config (make defconfig)
# from Debian's source package, for the images of integration/critest, and
# installs it at $1 (bin/cache/busybox). Debian's busybox-static is not used:
# its shell runs some applets internally and it lacks pgrep and ipcs.
#
# Needs root on Debian (apt-get). Installs build-essential and dpkg-dev if
# missing, and enables deb-src for the running release if no deb-src entry is
# configured. Takes 1-4 minutes on 2 cores; `make critest` runs it only when
# the cached binary is missing.
set -eu

out=$(realpath -m "${1:?usage: build-busybox.sh OUTPUT}")
jobs=$(nproc 2>/dev/null || echo 2)

if ! command -v gcc >/dev/null || ! command -v make >/dev/null || ! command -v dpkg-source >/dev/null; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential dpkg-dev >/dev/null
fi

if ! grep -Rqs -e '^Types:.*deb-src' -e '^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	. /etc/os-release
	cat >/etc/apt/sources.list.d/peapod-deb-src.sources <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: ${VERSION_CODENAME} ${VERSION_CODENAME}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
	apt-get update -qq
fi

work=$(mktemp -d /var/tmp/peapod-busybox.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get source -qq busybox >/dev/null 2>apt-source.err; then
	# A stale package list is the usual cause.
	apt-get update -qq
	apt-get source -qq busybox >/dev/null 2>apt-source.err || { cat apt-source.err >&2; exit 1; }
fi
src=$(find . -maxdepth 1 -type d -name 'busybox-*' | head -n1)
cd "$src"
echo "building $(basename "$src") with its default config, static, -j$jobs" >&2
make -s defconfig >/dev/null
make -s LDFLAGS=-static -j"$jobs" >build.log 2>&1 || { tail -n 40 build.log >&2; exit 1; }

# Static, and with the applets critest runs.
if readelf -l busybox | grep -q 'Requesting program interpreter'; then
	echo "busybox is not static" >&2
	exit 1
fi
for a in sh pgrep pidof ipcs top httpd; do
	./busybox --list | grep -qx "$a" || { echo "busybox lacks $a" >&2; exit 1; }
done
mkdir -p "$(dirname "$out")"
install -m 0755 busybox "$out.tmp"
mv "$out.tmp" "$out"
echo "$out: $(./busybox | head -n1)" >&2
