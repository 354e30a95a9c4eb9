#!/usr/bin/env bash
# Builds kerntransport's Debian packages with dpkg-deb, one .deb each, into
# $KT_PACKAGES_DIR (default target/debian):
#   kt-vhost-device     the backend daemon, its man page, the systemd template
#                       unit kt-vhost-device@.service (one VM each), the unit
#                       kt-vhost-device.service (the VMs of vms.toml),
#                       example configuration
#   kt-vmm              the minimal VMM and its man page
#   kt                  the guest/host tool and its man page
#   kerntransport-dkms  the guest driver's source for DKMS (/usr/src)
# Owns the package layout, control files and man page generation; the
# files the packages ship besides binaries live in packaging/. Versions come
# from the workspace Cargo.toml. Documented in docs/packages.md.
# Usage: scripts/packages.sh [--no-build]   (--no-build: use the release
# binaries already built instead of running cargo build --release)
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

build=1
case "${1:-}" in
"") ;;
--no-build) build=0 ;;
*)
	echo "packages: unknown argument $1 (usage: $0 [--no-build])" >&2
	exit 2
	;;
esac

for tool in dpkg-deb dpkg-shlibdeps help2man gzip; do
	command -v "$tool" >/dev/null || {
		echo "packages: $tool not found (run scripts/setup.sh)" >&2
		exit 1
	}
done

# The workspace version ([workspace.package] version in Cargo.toml).
version=$(awk '/^\[/ { s = ($0 == "[workspace.package]") } s && /^version *=/ { gsub(/.*= *"|".*/, ""); print; exit }' Cargo.toml)
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]] || {
	echo "packages: no [workspace.package] version in Cargo.toml" >&2
	exit 1
}
arch=$(dpkg --print-architecture)
out=${KT_PACKAGES_DIR:-$root/target/debian}
target_dir=${CARGO_TARGET_DIR:-$root/target}
maintainer="kerntransport developers <kerntransport@localhost>"

if [ "$build" = 1 ]; then
	cargo build --release --locked -p kt-vhost-device -p kt-vmm -p kt --bins
fi
bindir=$target_dir/release
for b in kt-vhost-device kt-vmm kt; do
	[ -x "$bindir/$b" ] || {
		echo "packages: $bindir/$b missing (build it, or drop --no-build)" >&2
		exit 1
	}
done

work=$(mktemp -d "${TMPDIR:-/tmp}/kt-packages.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Each package is staged in $stage/PKG: the debian/PKG layout
# dpkg-shlibdeps expects.
stage=$work/debian
mkdir -p "$out"

# copyright PKG: /usr/share/doc/PKG/copyright in staging dir $stage/PKG.
copyright() {
	install -d "$stage/$1/usr/share/doc/$1"
	cat >"$stage/$1/usr/share/doc/$1/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kerntransport

Files: *
Copyright: the kerntransport developers
License: Apache-2.0 OR BSD-3-Clause
 On Debian systems the full texts are in /usr/share/common-licenses/Apache-2.0
 and /usr/share/common-licenses/BSD.
EOF
}

# binary PKG BIN "man page name line": the stripped binary and its man page.
binary() {
	local bin=$2 what=$3 d=$stage/$1
	# DEBIAN/ marks the package root for dpkg-shlibdeps.
	install -d "$d/DEBIAN"
	install -D -m 0755 "$bindir/$bin" "$d/usr/bin/$bin"
	strip --strip-unneeded "$d/usr/bin/$bin"
	install -d "$d/usr/share/man/man1"
	help2man --no-info --no-discard-stderr --version-string="$version" \
		--name="$what" --output="$work/$bin.1" "$d/usr/bin/$bin"
	grep -q '^\.TH' "$work/$bin.1" || {
		echo "packages: help2man made no man page for $bin" >&2
		exit 1
	}
	gzip -9n <"$work/$bin.1" >"$d/usr/share/man/man1/$bin.1.gz"
	rm "$work/$bin.1"
}

# shlibs PKG: the Depends line dpkg-shlibdeps computes for PKG's binaries.
shlibs() {
	local f args=()
	printf 'Source: kerntransport\n\nPackage: %s\nArchitecture: any\n' "$1" >"$stage/control"
	for f in "$stage/$1"/usr/bin/*; do args+=("-edebian/$1/usr/bin/${f##*/}"); done
	(cd "$work" && dpkg-shlibdeps -O "${args[@]}") | sed -n 's/^shlibs:Depends=//p'
	rm "$stage/control"
}

# depends PKG [EXTRA]: PKG's shared-library dependencies (never empty: every
# binary links libc), then EXTRA.
depends() {
	local deps
	deps=$(shlibs "$1")
	[ -n "$deps" ] || {
		echo "packages: dpkg-shlibdeps found no dependencies for $1" >&2
		exit 1
	}
	echo "$deps${2:+, $2}"
}

# control PKG ARCH DEPENDS SECTION DESCRIPTION...: writes DEBIAN/control.
control() {
	local pkg=$1 a=$2 deps=$3 section=$4 d=$stage/$1
	shift 4
	install -d "$d/DEBIAN"
	{
		echo "Package: $pkg"
		echo "Version: $version"
		echo "Architecture: $a"
		echo "Maintainer: $maintainer"
		echo "Installed-Size: $(du -sk --exclude=DEBIAN "$d" | cut -f1)"
		[ -z "$deps" ] || echo "Depends: $deps"
		echo "Section: $section"
		echo "Priority: optional"
		echo "Description: $1"
		shift
		local line
		for line in "$@"; do echo " $line"; done
	} >"$d/DEBIAN/control"
}

# script PKG NAME: a maintainer script from packaging/PKG/NAME, @VERSION@ set.
script() {
	install -d "$stage/$1/DEBIAN"
	sed "s/@VERSION@/$version/g" "packaging/$1/$2" >"$stage/$1/DEBIAN/$2"
	chmod 0755 "$stage/$1/DEBIAN/$2"
}

deb() {
	local file=$out/${1}_${version}_$2.deb
	dpkg-deb --root-owner-group -Zxz --build "$stage/$1" "$file" >/dev/null
	echo "packages: $file"
}

# kt-vhost-device
p=kt-vhost-device
copyright $p
binary $p kt-vhost-device "kerntransport host backend, a vhost-user device daemon"
install -D -m 0644 "packaging/$p/kt-vhost-device@.service" "$stage/$p/lib/systemd/system/kt-vhost-device@.service"
install -D -m 0644 "packaging/$p/example.toml" "$stage/$p/usr/share/doc/$p/examples/vm0.toml"
install -D -m 0644 "packaging/$p/example.conf" "$stage/$p/usr/share/doc/$p/examples/vm0.conf"
install -D -m 0644 "packaging/$p/kt-vhost-device.service" "$stage/$p/lib/systemd/system/kt-vhost-device.service"
install -D -m 0644 "packaging/$p/example-vms.toml" "$stage/$p/usr/share/doc/$p/examples/vms.toml"
install -D -m 0644 docs/packages.md "$stage/$p/usr/share/doc/$p/packages.md"
install -d -m 0755 "$stage/$p/etc/kerntransport"
script $p postinst
script $p postrm
deps=$(depends $p adduser)
control $p "$arch" "$deps" admin \
	"kerntransport host backend (vhost-user device daemon)" \
	"kt-vhost-device implements kerntransport's virtio device 60 as a" \
	"vhost-user backend: guest channels become host SOCK_SEQPACKET" \
	"connections to the services a policy file names." \
	"." \
	"Includes the systemd template unit kt-vhost-device@.service, one" \
	"instance per VM, and kt-vhost-device.service, one daemon for the VMs" \
	"of /etc/kerntransport/vms.toml; configured in /etc/kerntransport/."
deb $p "$arch"

# kt-vmm
p=kt-vmm
copyright $p
binary $p kt-vmm "minimal KVM VMM hosting vhost-user devices on virtio-mmio"
deps=$(depends $p)
control $p "$arch" "$deps" admin \
	"minimal KVM VMM for vhost-user devices" \
	"kt-vmm boots a Linux guest under KVM and hosts vhost-user devices" \
	"(such as kt-vhost-device) on virtio-mmio, sharing guest memory as memfd."
deb $p "$arch"

# kt
p=kt
copyright $p
binary $p kt "kerntransport tool for guest and host endpoints"
deps=$(depends $p)
control $p "$arch" "$deps" utils \
	"kerntransport command-line tool" \
	"kt sends, receives, serves and benchmarks kerntransport messages:" \
	"in a guest through /dev/kerntransport, on the host through" \
	"kt-vhost-device's sockets."
deb $p "$arch"

# kerntransport-dkms
p=kerntransport-dkms
copyright $p
make -s -C guest-driver dist DESTDIR="$stage/$p/usr/src/kerntransport-$version" VERSION="$version" >/dev/null
grep -qx "PACKAGE_VERSION=\"$version\"" "$stage/$p/usr/src/kerntransport-$version/dkms.conf" || {
	echo "packages: dkms.conf does not carry version $version" >&2
	exit 1
}
script $p postinst
script $p prerm
control $p all "dkms" kernel \
	"kerntransport guest driver (DKMS source)" \
	"kerntransport.ko drives kerntransport's virtio device 60 in a Linux" \
	"guest (/dev/kerntransport and an in-kernel API); kt_kecho.ko is a" \
	"sample kernel service. DKMS builds both for the installed kernels."
deb $p all
