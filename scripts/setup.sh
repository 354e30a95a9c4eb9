#!/usr/bin/env bash
# Installs everything the project needs on a Debian bookworm x86_64 machine:
# apt sources for bookworm-backports (same archive host as the existing
# sources), Debian packages, Python build tools for QEMU, and cargo-fuzz
# (crate registry; for scripts/fuzz.sh). Idempotent: a second run only
# checks. Owns installation; builds nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib/apt-sources.sh
. "$here/lib/apt-sources.sh"
# shellcheck source=scripts/lib/kernels.sh
. "$here/lib/kernels.sh"
# shellcheck source=scripts/lib/fuzz-tools.sh
. "$here/lib/fuzz-tools.sh"

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

# Packages from bookworm (main/security); coccinelle runs the kernel's
# coccicheck scripts on the driver (guest-driver/check.sh), and its spatch
# loads libpython3.X.so at run time, which only the -dev package provides
# (a fresh root failed every script without it). The debug guest kernel
# (images/debug-kernel/build.sh) also needs flex, bison, bc and libelf-dev.
PKGS=(
	build-essential pkg-config git cpio xz-utils zstd gzip
	busybox-static sparse coccinelle libpython3-dev linux-source-6.12
	ninja-build libglib2.0-dev libpixman-1-dev flex bison libfdt-dev
	python3 python3-venv iproute2 socat kmod
	debootstrap dkms dpkg-dev systemd help2man man-db
	bc libelf-dev
)
# Packages that must come from bookworm-backports.
BPO_PKGS=(qemu-system-x86 "${KT_KERNEL_612_PACKAGES[@]}")

missing() {
	local p out=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
	done
	echo "${out[@]:-}"
}

# The sources files setup reads and writes (KT_APT_ROOT: tests only).
APT_ROOT=${KT_APT_ROOT:-}

add_backports() {
	local files uri
	mapfile -t files < <(apt_source_files "$APT_ROOT")
	if apt_has_suite bookworm-backports "${files[@]}"; then
		return 1
	fi
	# The archive host the machine already uses for bookworm, read from
	# apt's active entries only; never a host of our own.
	if ! uri=$(apt_bookworm_uri "${files[@]}"); then
		echo "setup: no active apt entry for bookworm in ${files[*]:-/etc/apt} (need one to add bookworm-backports on the same archive host)" >&2
		exit 1
	fi
	echo "setup: adding bookworm-backports from $uri"
	$SUDO mkdir -p "$APT_ROOT/etc/apt/sources.list.d"
	$SUDO tee "$APT_ROOT/etc/apt/sources.list.d/kerntransport-backports.sources" >/dev/null <<EOS
Types: deb deb-src
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
	return 0
}

# cargo-fuzz for scripts/fuzz.sh, which runs it with the nightly toolchain
# rustup already has, from $(kt_cargo_fuzz_root) (scripts/lib/fuzz-tools.sh).
# Without nightly: one error line, the rest of setup goes on (the fuzz stage
# of make test then fails with the same reason).
cargo_fuzz() {
	local root
	root=$(kt_cargo_fuzz_root)
	if ! cargo +nightly --version >/dev/null 2>&1; then
		echo "setup: error: no nightly Rust toolchain (needed by scripts/fuzz.sh): rustup toolchain install nightly" >&2
		return 0
	fi
	[ -x "$root/bin/cargo-fuzz" ] && return 0
	echo "setup: installing cargo-fuzz $KT_CARGO_FUZZ_VERSION into $root"
	cargo install --locked --quiet --version "$KT_CARGO_FUZZ_VERSION" --root "$root" cargo-fuzz ||
		{ echo "setup: installing cargo-fuzz failed" >&2; exit 1; }
}

main() {
	need_root
	if [ "${1:-}" = "--backports-only" ]; then
		# Only the apt sources step (used by scripts/tests/apt-sources.sh
		# with KT_APT_ROOT pointing at sample roots).
		add_backports || echo "setup: bookworm-backports already in apt's sources"
		return 0
	fi
	local updated=0
	if add_backports; then
		$SUDO apt-get update -q
		updated=1
	fi
	local m b
	m=$(missing "${PKGS[@]}")
	b=$(missing "${BPO_PKGS[@]}")
	if [ -z "$(kt_kernel_61)" ]; then
		[ "$updated" = 1 ] || $SUDO apt-get update -q
		updated=1
		local h61
		h61=$(kt_kernel_61_package)
		[ -n "$h61" ] || { echo "setup: no 6.1 cloud kernel headers in apt's lists" >&2; exit 1; }
		m="$m $h61"
	fi
	if [ -n "${m// /}$b" ]; then
		[ "$updated" = 1 ] || $SUDO apt-get update -q
		export DEBIAN_FRONTEND=noninteractive
		# bookworm's packages first, then the backports ones, which upgrade
		# only what they need. The other order broke a fresh root: the
		# backports install pulled libelf1 from backports, then bookworm's
		# libelf-dev (= its own libelf1) could not be installed.
		# shellcheck disable=SC2086
		[ -z "${m// /}" ] || $SUDO apt-get install -y -q $m
		# shellcheck disable=SC2086
		[ -z "$b" ] || $SUDO apt-get install -y -q -t bookworm-backports $b
	fi
	# The kernels every other script will use must now be present.
	local k
	for k in $(kt_supported_kernels); do
		[ -f "$(kt_headers_dir "$k")/Makefile" ] ||
			{ echo "setup: headers for $k missing after installation" >&2; exit 1; }
	done
	echo "setup: Debian packages present; kernels: $(kt_supported_kernels | paste -sd' ')"
	cargo_fuzz
}

main "$@"
