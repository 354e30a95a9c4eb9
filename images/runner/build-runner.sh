#!/usr/bin/env bash
# Builds the KVM runner VM image: an initramfs for Debian's cloud kernel
# holding busybox, the KVM modules, kt-vmm (+ kt-vmm-bench), optionally
# QEMU, and a guest (kernel + tiny busybox initramfs with virtio_mmio).
# Cached in ${KT_CACHE:-~/.cache/kerntransport}/runner-<hash>/ keyed by every
# input; prints that directory as the last line of stdout.
#
# Usage: build-runner.sh [--with-qemu | --print-kernel]
# Env:   KT_RUNNER_KERNEL  kernel of the runner VM   (default: Debian's 6.12
#                          cloud kernel as scripts/lib/kernels.sh names it;
#                          KT_GUEST_KVER overrides that release there)
#        KT_GUEST_KERNEL   kernel kt-vmm boots        (default: same)
#        KT_GUEST_INITRD   guest initramfs            (default: built here)
#        KT_GUEST_EXTRA    directory added to the guest initramfs (copied into
#                          the built one, appended as a second archive to
#                          KT_GUEST_INITRD)
#        KT_IMAGE_KERNEL, KT_IMAGE_INITRD
#                          a second guest (the project image from
#                          images/build-image.sh) at /kt-image/{vmlinuz,
#                          initramfs.cpio.gz}, next to /guest
#        KT_RUNNER_BINS    more host programs for the runner's /usr/bin
#                          (space separated; their libraries come along)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=scripts/lib/kernels.sh
. "$root/scripts/lib/kernels.sh"
KVER=$(kt_require_kernel_612 build-runner) || exit 1
[ "${1:-}" != "--print-kernel" ] || { echo "$KVER"; exit 0; }
RUNNER_KERNEL=${KT_RUNNER_KERNEL:-/boot/vmlinuz-$KVER}
GUEST_KERNEL=${KT_GUEST_KERNEL:-/boot/vmlinuz-$KVER}
MODDIR=/lib/modules/$KVER/kernel
CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
with_qemu=0
[ "${1:-}" = "--with-qemu" ] && with_qemu=1

die() { echo "build-runner: $*" >&2; exit 1; }
for f in "$RUNNER_KERNEL" "$GUEST_KERNEL" /bin/busybox; do
	[ -r "$f" ] || die "missing $f"
done

# kt-vmm binaries (dynamically linked: their libraries are copied below).
(cd "$root" && nice cargo build --release -q -p kt-vmm --bins --examples) >&2
target=${CARGO_TARGET_DIR:-$root/target}
vmm_bin=$target/release/kt-vmm
bench_bin=$target/release/kt-vmm-bench
fill_bin=$target/release/examples/vhost-user-fill

modules=()
for m in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd arch/x86/kvm/kvm-intel \
	drivers/crypto/ccp/ccp; do
	if [ -f "$MODDIR/$m.ko.xz" ]; then modules+=("$MODDIR/$m.ko.xz"); fi
done
virtio_mmio=$MODDIR/drivers/virtio/virtio_mmio.ko.xz
virtio_rng=$MODDIR/drivers/char/hw_random/virtio-rng.ko.xz
[ -f "$virtio_mmio" ] || die "missing $virtio_mmio"
[ -f "$virtio_rng" ] || die "missing $virtio_rng"
qemu_bin=$(command -v qemu-system-x86_64 || true)
[ "$with_qemu" = 0 ] || [ -n "$qemu_bin" ] || die "qemu-system-x86_64 not installed"

inputs=("$here/build-runner.sh" "$here/runner-init.sh" "$here/guest-init.sh" "$RUNNER_KERNEL"
	"$GUEST_KERNEL" /bin/busybox "$vmm_bin" "$bench_bin" "$fill_bin" "$here/in-runner-boot-test.sh"
	"$here/in-runner-kt-device-test.sh" "$here/in-runner-e2e-test.sh" "$here/in-runner-demo.sh"
	"$here/in-runner-bench.sh" "$virtio_mmio" "$virtio_rng" "${modules[@]}")
if [ -n "${KT_GUEST_INITRD:-}" ]; then inputs+=("$KT_GUEST_INITRD"); fi
if [ -n "${KT_IMAGE_KERNEL:-}" ] || [ -n "${KT_IMAGE_INITRD:-}" ]; then
	[ -r "${KT_IMAGE_KERNEL:-}" ] && [ -r "${KT_IMAGE_INITRD:-}" ] ||
		die "KT_IMAGE_KERNEL and KT_IMAGE_INITRD must both name readable files"
	inputs+=("$KT_IMAGE_KERNEL" "$KT_IMAGE_INITRD")
fi
read -r -a extra_bins <<<"${KT_RUNNER_BINS:-}"
for b in "${extra_bins[@]}"; do
	[ -x "$b" ] || die "KT_RUNNER_BINS: $b is not an executable"
	inputs+=("$b")
done
if [ "$with_qemu" = 1 ]; then inputs+=("$qemu_bin"); fi
extra_sums() {
	if [ -n "${KT_GUEST_EXTRA:-}" ]; then
		(cd "$KT_GUEST_EXTRA" && find . -type f -exec sha256sum {} + | sort)
	fi
}
hash=$( { sha256sum "${inputs[@]}" | cut -d' ' -f1; echo "qemu=$with_qemu"; extra_sums; } \
	| sha256sum | cut -c1-16)
out=$CACHE/runner-$hash
if [ -f "$out/runner-initrd.cpio.gz" ]; then
	echo "$out"
	exit 0
fi
mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/.runner-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# copy_bin FILE DESTROOT: a binary and the shared libraries ldd names.
copy_bin() {
	local bin=$1 dest=$2 lib
	install -D -m 755 "$bin" "$dest/usr/bin/$(basename "$bin")"
	for lib in $(ldd "$bin" 2>/dev/null | grep -oE '/[^ ]+'); do
		[ -e "$dest$lib" ] || install -D -m 755 "$(readlink -f "$lib")" "$dest$lib"
	done
}

mkcpio() { (cd "$1" && find . -print0 | cpio --null -o -H newc --owner 0:0 --quiet) | gzip -6 >"$2"; }

# The guest's initramfs.
g=$work/guest
mkdir -p "$g/bin" "$g/lib/modules"
cp /bin/busybox "$g/bin/busybox"
install -m 755 "$here/guest-init.sh" "$g/init"
xz -dc "$virtio_mmio" >"$g/lib/modules/virtio_mmio.ko"
xz -dc "$virtio_rng" >"$g/lib/modules/virtio-rng.ko"
if [ -n "${KT_GUEST_EXTRA:-}" ]; then cp -a "$KT_GUEST_EXTRA/." "$g/"; fi
r=$work/runner
mkdir -p "$r/bin" "$r/lib/modules/kt" "$r/guest"
if [ -n "${KT_GUEST_INITRD:-}" ]; then
	cp "$KT_GUEST_INITRD" "$r/guest/initrd.cpio.gz"
	if [ -n "${KT_GUEST_EXTRA:-}" ]; then
		mkdir -p "$work/extra"
		cp -a "$KT_GUEST_EXTRA/." "$work/extra/"
		mkcpio "$work/extra" "$work/extra.cpio.gz"
		cat "$work/extra.cpio.gz" >>"$r/guest/initrd.cpio.gz"
	fi
else
	mkcpio "$g" "$r/guest/initrd.cpio.gz"
fi
cp "$GUEST_KERNEL" "$r/guest/vmlinuz"

# The runner's initramfs.
cp /bin/busybox "$r/bin/busybox"
install -m 755 "$here/runner-init.sh" "$r/init"
for m in "${modules[@]}"; do
	xz -dc "$m" >"$r/lib/modules/kt/$(basename "$m" .xz)"
done
copy_bin "$vmm_bin" "$r"
copy_bin "$bench_bin" "$r"
copy_bin "$fill_bin" "$r"
for b in "${extra_bins[@]}"; do copy_bin "$b" "$r"; done
install -m 755 "$here/in-runner-boot-test.sh" "$r/usr/bin/kt-test-boot"
install -m 755 "$here/in-runner-kt-device-test.sh" "$r/usr/bin/kt-test-device"
install -m 755 "$here/in-runner-e2e-test.sh" "$r/usr/bin/kt-test-e2e"
install -m 755 "$here/in-runner-demo.sh" "$r/usr/bin/kt-demo-vmm"
install -m 755 "$here/in-runner-bench.sh" "$r/usr/bin/kt-bench-vmm"
if [ -n "${KT_IMAGE_KERNEL:-}" ]; then
	mkdir -p "$r/kt-image"
	cp "$KT_IMAGE_KERNEL" "$r/kt-image/vmlinuz"
	cp "$KT_IMAGE_INITRD" "$r/kt-image/initramfs.cpio.gz"
fi
if [ "$with_qemu" = 1 ]; then
	copy_bin "$qemu_bin" "$r"
	mkdir -p "$r/usr/share/qemu"
	for f in /usr/share/seabios/bios-256k.bin /usr/share/seabios/bios-microvm.bin \
		/usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/kvmvapic.bin \
		/usr/share/qemu/qboot.rom /usr/share/qemu/pvh.bin; do
		if [ -e "$f" ]; then cp -L "$f" "$r/usr/share/qemu/"; fi
	done
fi
mkcpio "$r" "$work/runner-initrd.cpio.gz"
mkdir -p "$out/guest"
cp "$r/guest/vmlinuz" "$r/guest/initrd.cpio.gz" "$out/guest/"
cp "$RUNNER_KERNEL" "$out/vmlinuz"
mv "$work/runner-initrd.cpio.gz" "$out/"
echo "$out"
