#!/usr/bin/env bash
# Builds the kerntransport guest image: Debian's 6.12 cloud kernel (installed
# from bookworm-backports) plus a gzip cpio initramfs with busybox-static,
# kerntransport.ko and kt_kecho.ko built against exactly that kernel's
# headers, the kernel's own virtio_mmio.ko (decompressed, for kt-vmm), the
# static guest tool `kt`, /init and the workload scripts.
# Cached in $KT_CACHE/image-<hash>/, keyed by every input (kernel version and
# vmlinuz checksum, virtio_mmio.ko, module sources, kt binary, busybox, init,
# workloads, this script). Owns the image only; it builds no QEMU and runs no guest.
# Progress goes to stderr; the last stdout line is
#   KERNEL=<vmlinuz> INITRAMFS=<initramfs.cpio.gz>
# Environment: KT_CACHE, KT_GUEST_KVER (override the kernel version),
# KT_IMAGE_KEEP (how many cached images to keep, default 8).
#   images/build-image.sh --debug-kernel
# builds the same image for the debug kernel of images/debug-kernel/build.sh
# (KASAN, KFENCE, lockdep; virtio-mmio built in, no vsock modules), with the
# modules built against its tree: the end-to-end tests run on it too.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
DRIVER="$ROOT/guest-driver"
KT_CRATE="$DRIVER/kt"
BUSYBOX=/bin/busybox
TARGET=x86_64-unknown-linux-gnu

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The kernel the guest runs: scripts/lib/kernels.sh decides (KT_GUEST_KVER
# overrides it there).
# shellcheck source=scripts/lib/kernels.sh
. "$ROOT/scripts/lib/kernels.sh"
DEBUG=0
case "${1:-}" in
--debug-kernel) DEBUG=1 ;;
"" | --print-kernel) ;;
*) die "usage: images/build-image.sh [--print-kernel | --debug-kernel]" ;;
esac
if [ "$DEBUG" = 1 ]; then
	dk=$("$HERE/debug-kernel/build.sh" | tail -n1) || die "images/debug-kernel/build.sh failed"
	case "$dk" in
	KERNEL=*" KDIR="*) ;;
	*) die "images/debug-kernel/build.sh printed '$dk', expected KERNEL=... KDIR=..." ;;
	esac
	VMLINUZ=${dk%% KDIR=*}
	VMLINUZ=${VMLINUZ#KERNEL=}
	KDIR=${dk##* KDIR=}
	KVER=$(cat "$KDIR/include/config/kernel.release") || die "no kernel.release in $KDIR"
else
	KVER=$(kt_require_kernel_612 build-image) || exit 1
	VMLINUZ=/boot/vmlinuz-$KVER
	KDIR=/lib/modules/$KVER/build
fi
case "$KVER" in
6.12.*) ;;
*) die "guest kernel $KVER is not a 6.12 kernel" ;;
esac
[ "${1:-}" != "--print-kernel" ] || { echo "$KVER"; exit 0; }
[ -r "$VMLINUZ" ] || die "$VMLINUZ missing (package linux-image-$KVER)"
[ -f "$KDIR/Makefile" ] || die "headers for $KVER missing at $KDIR (install linux-headers-$KVER)"
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing (install busybox-static)"
# kt-vmm's devices are virtio-mmio; the cloud kernel builds that as a module
# (xz, which busybox insmod cannot read: it goes in decompressed). The debug
# kernel has it built in.
VIRTIO_MMIO=/lib/modules/$KVER/kernel/drivers/virtio/virtio_mmio.ko.xz
if [ "$DEBUG" = 1 ]; then
	VIRTIO_MMIO=
else
	[ -r "$VIRTIO_MMIO" ] || die "$VIRTIO_MMIO missing (package linux-image-$KVER)"
fi
log "guest kernel $KVER$([ "$DEBUG" = 0 ] || echo ' (debug kernel)')"

# Source files of a directory (tracked and untracked-but-not-ignored), so
# build products never enter the key.
source_files() {
	if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
		git -C "$ROOT" ls-files -co --exclude-standard -- "$@" | sort
	else
		(cd "$ROOT" && find "$@" -type f ! -path '*/target/*' ! -name '*.o' ! -name '*.ko' \
			! -name '*.mod*' ! -name '.*.cmd' ! -name Module.symvers ! -name modules.order | sort)
	fi
}

hash_files() {
	local f
	while read -r f; do
		[ -f "$ROOT/$f" ] || continue
		printf '%s ' "$f"
		sha256sum <"$ROOT/$f"
	done
}

# 1. The guest tool: static, for the guest's architecture. Its own target dir
#    in the cache, so the static RUSTFLAGS never invalidate host builds; one
#    per checkout, because cargo's freshness checks (mtimes) cannot tell two
#    checkouts' sources apart and would hand one the other's binary.
KT_BIN=
if [ -f "$KT_CRATE/Cargo.toml" ]; then
	log "building the guest tool kt (static)"
	guest_target=$KT_CACHE/cargo-guest-tool-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)
	RUSTFLAGS='-C target-feature=+crt-static' nice cargo build --release --quiet \
		--manifest-path "$KT_CRATE/Cargo.toml" --target "$TARGET" \
		--target-dir "$guest_target" >&2
	KT_BIN="$guest_target/$TARGET/release/kt"
	[ -x "$KT_BIN" ] || die "cargo built no 'kt' binary at $KT_BIN"
	if readelf -l "$KT_BIN" | grep -q 'INTERP'; then
		die "$KT_BIN is dynamically linked; the initramfs has no libc"
	fi
else
	log "guest-driver/kt/Cargo.toml is not in the tree yet: building the image without the kt tool"
fi

HAVE_DRIVER=0
if [ -f "$DRIVER/Makefile" ]; then
	HAVE_DRIVER=1
else
	log "guest-driver/Makefile is not in the tree yet: building the image without kerntransport.ko and kt_kecho.ko"
fi

# The guest kernel's vsock modules, for the peer benchmark
# (scripts/bench-peers.sh; virtio-serial is built in): one path a line.
PEER_MODULES="vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport"
peer_modules() {
	local m
	[ "$DEBUG" = 0 ] || return 0
	for m in $PEER_MODULES; do
		find "/lib/modules/$KVER/kernel/net/vmw_vsock" -name "$m.ko*" -print -quit 2>/dev/null
	done
}

# 2. The cache key.
HASH=$( {
	echo "kernel $KVER debug $DEBUG"
	sha256sum <"$VMLINUZ"
	echo "virtio_mmio"
	if [ -n "$VIRTIO_MMIO" ]; then sha256sum <"$VIRTIO_MMIO"; else echo built-in; fi
	echo "busybox"
	sha256sum <"$BUSYBOX"
	echo "kt"
	if [ -n "$KT_BIN" ]; then sha256sum <"$KT_BIN"; else echo none; fi
	echo "driver $HAVE_DRIVER"
	[ "$HAVE_DRIVER" = 0 ] || source_files guest-driver proto/include | grep -v '^guest-driver/kt/' | hash_files
	echo "peer modules"
	peer_modules | while read -r f; do sha256sum <"$f"; done
	echo "image scripts"
	source_files images/build-image.sh images/initramfs images/workloads | hash_files
} | sha256sum | cut -c1-16)
OUT="$KT_CACHE/image-$HASH"

report() {
	echo "KERNEL=$OUT/vmlinuz INITRAMFS=$OUT/initramfs.cpio.gz"
}

if [ -f "$OUT/.complete" ]; then
	log "cache hit: $OUT"
	report
	exit 0
fi

mkdir -p "$KT_CACHE"
exec 9>"$KT_CACHE/image-$HASH.lock"
flock 9
if [ -f "$OUT/.complete" ]; then
	report
	exit 0
fi

WORK=$(mktemp -d "$KT_CACHE/image-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/root"
mkdir -p "$STAGE"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,workloads,lib/modules/kerntransport}

# 3. The driver modules, against exactly $KVER's headers.
if [ "$HAVE_DRIVER" = 1 ]; then
	log "building guest-driver against $KDIR"
	nice make -C "$DRIVER" KDIR="$KDIR" >&2
	for m in kerntransport kt_kecho; do
		ko=$(cd "$DRIVER" && find . -name "$m.ko" ! -path './kt/*' -print -quit)
		[ -n "$ko" ] || die "make -C guest-driver built no $m.ko"
		ko="$DRIVER/${ko#./}"
		vermagic=$(modinfo -F vermagic "$ko")
		case "$vermagic" in
		"$KVER "*) ;;
		*) die "$ko was built for '$vermagic', not $KVER" ;;
		esac
		cp "$ko" "$STAGE/lib/modules/kerntransport/"
	done
fi

# 4. The rest of the tree.
cp "$BUSYBOX" "$STAGE/bin/busybox"
ln -s busybox "$STAGE/bin/sh"
install -m 0755 "$HERE/initramfs/init" "$STAGE/init"
[ -z "$VIRTIO_MMIO" ] || xz -dc "$VIRTIO_MMIO" >"$STAGE/lib/modules/virtio_mmio.ko"
install -m 0644 "$HERE"/workloads/*.sh "$STAGE/workloads/"
[ -z "$KT_BIN" ] || install -m 0755 -s "$KT_BIN" "$STAGE/usr/bin/kt"
# 4b. Peer-benchmark modules, decompressed for busybox insmod (missing ones
#     are skipped; the benchmark then reports vsock as n/a).
mkdir -p "$STAGE/lib/modules/peers"
peer_modules | while read -r f; do
	m=$(basename "$f")
	case "$f" in
	*.xz) xz -dc "$f" >"$STAGE/lib/modules/peers/${m%.xz}" ;;
	*.ko) cp "$f" "$STAGE/lib/modules/peers/" ;;
	esac
done
{
	echo "KT: image $HASH kernel $KVER"
	echo "KT: modules: $(cd "$STAGE/lib/modules/kerntransport" && echo *.ko | sed 's/^\*\.ko$/none/')"
	echo "KT: kt tool: $([ -n "$KT_BIN" ] && echo yes || echo no)"
} >"$STAGE/etc/kt-image"

(cd "$STAGE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet --owner=0:0) |
	gzip -9n >"$WORK/initramfs.cpio.gz"

mkdir -p "$WORK/out"
cp "$VMLINUZ" "$WORK/out/vmlinuz"
mv "$WORK/initramfs.cpio.gz" "$WORK/out/"
cp "$STAGE/etc/kt-image" "$WORK/out/contents.txt"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
touch "$OUT/.complete"
log "built $OUT ($(du -h "$OUT/initramfs.cpio.gz" | cut -f1) initramfs)"

# Keep the newest $KT_IMAGE_KEEP images (default 8): every driver edit makes
# a new one. Older ones whose lock nobody holds go.
keep=${KT_IMAGE_KEEP:-8}
ls -1dt "$KT_CACHE"/image-????????????????/ 2>/dev/null | tail -n +"$((keep + 1))" | while read -r old; do
	old=${old%/}
	(
		flock -n 8 || exit 0
		rm -rf "$old"
		rm -f "$old.lock"
	) 8>"$old.lock"
done
sed 's/^KT: /build-image: /' "$OUT/contents.txt" >&2
report
