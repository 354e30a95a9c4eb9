# Sourced by the scripts that boot the guest image (demo-qemu.sh,
# bench-peers.sh): builds, or takes from $KT_CACHE, the patched QEMU, the
# workspace's release binaries and the guest image, and sets KT_QEMU,
# KT_KERNEL, KT_INITRAMFS, KT_TARGET_DIR (cargo's target directory, which
# honours CARGO_TARGET_DIR), KT_DEVICE_BIN and KT_TOOL_BIN. Owns only the
# build-and-locate step; callers own their processes and output.

# kt_target_dir: cargo's target directory (CARGO_TARGET_DIR or ./target).
# (made absolute).
kt_target_dir() {
	local t=${CARGO_TARGET_DIR:-$PWD/target}
	case "$t" in /*) ;; *) t=$PWD/$t ;; esac
	echo "$t"
}

# kt_split_image "KERNEL=... INITRAMFS=..." sets KT_KERNEL and KT_INITRAMFS
# from build-image.sh's last line; returns 1 if the line has another shape.
kt_split_image() {
	case "$1" in
	KERNEL=*" INITRAMFS="*) ;;
	*) return 1 ;;
	esac
	KT_KERNEL=${1#KERNEL=}
	KT_KERNEL=${KT_KERNEL%% INITRAMFS=*}
	KT_INITRAMFS=${1##* INITRAMFS=}
}

# kt_build_artifacts LOG: builds everything, quietly into LOG; on failure
# prints LOG's tail to stderr and returns 1.
kt_build_artifacts() {
	local log=$1 image
	{
		KT_QEMU=$(images/build-qemu.sh | tail -n1) &&
			nice cargo build --workspace --release &&
			image=$(images/build-image.sh | tail -n1)
	} >"$log" 2>&1 || {
		tail -n 30 "$log" >&2
		return 1
	}
	kt_split_image "$image" || {
		echo "build-image.sh printed '$image', expected KERNEL=... INITRAMFS=..." >&2
		return 1
	}
	KT_TARGET_DIR=$(kt_target_dir)
	KT_DEVICE_BIN=$KT_TARGET_DIR/release/kt-vhost-device
	KT_TOOL_BIN=$KT_TARGET_DIR/release/kt
	local f
	for f in "$KT_QEMU" "$KT_KERNEL" "$KT_INITRAMFS" "$KT_DEVICE_BIN" "$KT_TOOL_BIN"; do
		[ -e "$f" ] || {
			echo "missing build output $f" >&2
			return 1
		}
	done
}
