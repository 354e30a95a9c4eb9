#!/usr/bin/env bash
# Installs everything the project needs on a Debian bookworm x86_64 machine:
# apt sources for bookworm-backports (same archive host as the existing
# sources), Debian packages, and Python build tools for QEMU. Idempotent:
# a second run only checks. Owns installation; builds nothing.
set -euo pipefail

need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null; then SUDO=sudo; else
			echo "setup: must run as root (or have sudo) to install packages" >&2
			exit 1
		fi
	else
		SUDO=
	fi
}

# Packages from bookworm (main/security).
PKGS=(
	build-essential pkg-config git cpio xz-utils zstd gzip
	busybox-static sparse linux-source-6.12
	ninja-build libglib2.0-dev libpixman-1-dev flex bison libfdt-dev
	python3 python3-venv iproute2 socat kmod
)
# Packages that must come from bookworm-backports.
BPO_PKGS=(qemu-system-x86 linux-image-cloud-amd64 linux-headers-cloud-amd64)

missing() {
	local p out=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
	done
	echo "${out[@]:-}"
}

archive_uri() {
	# The archive host the machine already uses for bookworm.
	local uri
	uri=$(grep -rhoE 'https?://[^ ]+/debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
		| grep -v security | head -n1 || true)
	echo "${uri:-http://deb.debian.org/debian}"
}

add_backports() {
	if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
		return 1
	fi
	local uri
	uri=$(archive_uri)
	echo "setup: adding bookworm-backports from $uri"
	$SUDO tee /etc/apt/sources.list.d/kerntransport-backports.sources >/dev/null <<EOS
Types: deb deb-src
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
	return 0
}

# The guest driver also builds against bookworm's own 6.1 cloud kernel; its
# headers package name carries an ABI number that changes with updates, so
# find the newest one the archive has.
have_headers_61() {
	dpkg-query -W -f='${Package} ${Status}\n' 'linux-headers-6.1.*-cloud-amd64' 2>/dev/null |
		grep -q "install ok installed"
}

headers_61_pkg() {
	local v
	v=$(apt-cache madison linux-headers-cloud-amd64 |
		awk -F'|' '{gsub(/ /, "", $2)} $2 ~ /^6\.1\./ {print $2; exit}')
	[ -n "$v" ] || { echo "setup: no 6.1 cloud kernel headers in apt's lists" >&2; exit 1; }
	apt-cache show "linux-headers-cloud-amd64=$v" |
		sed -n 's/^Depends: \(linux-headers-[^ ,]*\).*/\1/p' | head -n1
}

main() {
	need_root
	local updated=0
	if add_backports; then
		$SUDO apt-get update -q
		updated=1
	fi
	local m b
	m=$(missing "${PKGS[@]}")
	b=$(missing "${BPO_PKGS[@]}")
	if ! have_headers_61; then
		[ "$updated" = 1 ] || $SUDO apt-get update -q
		updated=1
		m="$m $(headers_61_pkg)"
	fi
	if [ -n "${m// /}$b" ]; then
		[ "$updated" = 1 ] || $SUDO apt-get update -q
		export DEBIAN_FRONTEND=noninteractive
		# shellcheck disable=SC2086
		[ -z "$b" ] || $SUDO apt-get install -y -q -t bookworm-backports $b
		# shellcheck disable=SC2086
		[ -z "$m" ] || $SUDO apt-get install -y -q $m
	fi
	echo "setup: Debian packages present"
}

main "$@"
