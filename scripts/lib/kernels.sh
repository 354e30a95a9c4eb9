# Sourced by every script that needs a kernel: the one answer to "which
# kernels does kerntransport support". Nothing here pins a version or an ABI
# number: both come from what Debian's archive (through apt) and dpkg say, so
# they move with the archive. Users: scripts/setup.sh, guest-driver/check.sh,
# guest-driver/tests/run.sh, images/build-image.sh, images/runner/build-runner.sh.
# scripts/tests/kernels.sh fails if any of them disagrees with this file.
#
# The supported kernels:
#   6.12  Debian's cloud kernel from bookworm-backports (linux-image-cloud-amd64
#         and linux-headers-cloud-amd64 there): the guest image's kernel, the
#         runner VM's kernel, and a build target of the driver.
#   6.1   bookworm's own cloud kernel: a build target of the driver (headers
#         only; the package name carries an ABI number that updates change).
# KT_GUEST_KVER overrides the 6.12 release (a kernel the user installed).

# The metapackages that pull in the current 6.12 cloud kernel and headers.
KT_KERNEL_612_PACKAGES=(linux-image-cloud-amd64 linux-headers-cloud-amd64)

# _kt_installed PATTERN: installed packages matching the dpkg-query PATTERN.
_kt_installed() {
	dpkg-query -W -f='${Status}|${Package}\n' "$1" 2>/dev/null |
		sed -n 's/^install ok installed|//p'
}

# kt_kernel_612: the 6.12 release the project uses, e.g. 6.12.<n>+deb12-cloud-amd64:
# the one the installed linux-image-cloud-amd64 depends on, else the newest
# installed linux-image-6.12*-cloud-amd64. Prints nothing when there is none.
kt_kernel_612() {
	if [ -n "${KT_GUEST_KVER:-}" ]; then
		echo "$KT_GUEST_KVER"
		return
	fi
	local dep
	dep=$(dpkg-query -W -f='${Status}|${Depends}\n' linux-image-cloud-amd64 2>/dev/null |
		sed -n 's/^install ok installed|.*linux-image-\(6\.12[^ ,]*-cloud-amd64\).*/\1/p' | head -n1)
	if [ -n "$dep" ]; then
		echo "$dep"
		return
	fi
	_kt_installed 'linux-image-6.12*-cloud-amd64' | sed 's/^linux-image-//' |
		grep -v -- '-unsigned$' | sort -V | tail -n1
}

# kt_require_kernel_612 WHO: kt_kernel_612, or WHO's one-line error and
# status 1 when there is none (use as: k=$(kt_require_kernel_612 me) || exit 1).
kt_require_kernel_612() {
	local k
	k=$(kt_kernel_612)
	if [ -z "$k" ]; then
		echo "$1: no Debian 6.12 cloud kernel installed (run scripts/setup.sh)" >&2
		return 1
	fi
	echo "$k"
}

# kt_kernel_61: the newest installed bookworm 6.1 cloud kernel headers'
# release, e.g. 6.1.0-<abi>-cloud-amd64. Prints nothing when there is none.
kt_kernel_61() {
	_kt_installed 'linux-headers-6.1.*-cloud-amd64' | sed 's/^linux-headers-//' | sort -V | tail -n1
}

# kt_kernel_61_package: the 6.1 cloud headers package apt would install now
# (the newest the archive has). Needs apt's lists; prints nothing if none.
kt_kernel_61_package() {
	local v
	v=$(apt-cache madison linux-headers-cloud-amd64 2>/dev/null |
		awk -F'|' '{gsub(/ /, "", $2)} $2 ~ /^6\.1\./ {print $2; exit}')
	[ -n "$v" ] || return 0
	apt-cache show "linux-headers-cloud-amd64=$v" |
		sed -n 's/^Depends: \(linux-headers-[^ ,]*\).*/\1/p' | head -n1
}

# kt_supported_kernels: every release the driver is built against, newest
# first, one per line. Fails with a message naming what is missing.
kt_supported_kernels() {
	local k612 k61
	k612=$(kt_kernel_612)
	k61=$(kt_kernel_61)
	if [ -z "$k612" ]; then
		echo "kernels: no Debian 6.12 cloud kernel installed (run scripts/setup.sh)" >&2
		return 1
	fi
	if [ -z "$k61" ]; then
		echo "kernels: no Debian 6.1 cloud kernel headers installed (run scripts/setup.sh)" >&2
		return 1
	fi
	printf '%s\n%s\n' "$k612" "$k61"
}

# kt_headers_dir RELEASE: where that release's headers live.
kt_headers_dir() {
	echo "/usr/src/linux-headers-$1"
}
