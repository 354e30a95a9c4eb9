#!/usr/bin/env bash
# End-to-end tests: builds (or takes from $KT_CACHE) the patched QEMU and the
# guest image, builds the workspace's release binaries, then runs kt-tests'
# ignored end-to-end tests one at a time with KT_QEMU, KT_KERNEL,
# KT_INITRAMFS and KT_VHOST_DEVICE set. Called by scripts/test.sh; fails
# when any part is missing (never falls back to a subset).
#   scripts/e2e.sh [TEST]   TEST (e.g. e2e_soak): only that test file, and
#                           no driver conformance run (scripts/soak.sh)
# The full run ends with the messages tests again under bounce buffering
# (the device with iommu_platform=on, the guest with swiotlb=force).
#   scripts/e2e.sh --debug-kernel
#       the tests that reset, reload and kill things (soak with
#       KT_SOAK_MESSAGES=30000, reset, device, k.echo reload) on the debug
#       kernel (images/debug-kernel: KASAN, KFENCE, lockdep) with 2 and then
#       4 vCPUs; any kernel splat fails the test that saw it.
set -euo pipefail
cd "$(dirname "$0")/.."
only=
debug=0
case "${1:-}" in
"") ;;
--debug-kernel) debug=1 ;;
e2e_[a-z]*) only=$1 ;;
*) echo "usage: scripts/e2e.sh [e2e_TEST | --debug-kernel] (TEST: a file of tests/tests/)" >&2; exit 2 ;;
esac
if [ -n "$only" ] && [ ! -f "tests/tests/$only.rs" ]; then
	echo "e2e: no test file tests/tests/$only.rs" >&2
	exit 2
fi
# shellcheck source=scripts/lib/artifacts.sh
. scripts/lib/artifacts.sh
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
step() { printf -- '-- e2e: %s\n' "$*"; }
t0=$(date +%s)
elapsed() { echo "$(($(date +%s) - t0)) s"; }

step "patched QEMU (images/build-qemu.sh)"
KT_QEMU=$(images/build-qemu.sh | tail -n1)
[ -x "$KT_QEMU" ] || { echo "e2e: build-qemu.sh gave no binary ($KT_QEMU)" >&2; exit 1; }
export KT_QEMU
echo "KT_QEMU=$KT_QEMU ($(elapsed))"

if [ -z "$only" ] && [ "$debug" = 0 ]; then
	step "guest driver conformance tests against a scripted fake device (guest-driver/tests/run.sh)"
	QEMU_KT=$KT_QEMU guest-driver/tests/run.sh
	echo "driver conformance done ($(elapsed))"
fi

step "workspace release binaries"
cargo build --workspace --release

step "guest image (images/build-image.sh)"
image_args=()
[ "$debug" = 0 ] || image_args=(--debug-kernel)
image=$(images/build-image.sh "${image_args[@]}" | tail -n1)
kt_split_image "$image" || {
	echo "e2e: build-image.sh printed '$image', expected KERNEL=... INITRAMFS=..." >&2
	exit 1
}
export KT_KERNEL KT_INITRAMFS
echo "KT_KERNEL=$KT_KERNEL"
echo "KT_INITRAMFS=$KT_INITRAMFS ($(elapsed))"

# The backend the tests run: the release build just made (honouring
# CARGO_TARGET_DIR), or KT_VHOST_DEVICE. Every e2e test needs it.
backend=${KT_VHOST_DEVICE:-$(kt_target_dir)/release/kt-vhost-device}
[ -x "$backend" ] || { echo "e2e: backend $backend not found after the release build" >&2; exit 1; }
export KT_VHOST_DEVICE=$backend
echo "KT_VHOST_DEVICE=$KT_VHOST_DEVICE"

if [ "$debug" = 1 ]; then
	export KT_SOAK_MESSAGES=${KT_SOAK_MESSAGES:-30000}
	export KT_E2E_APPEND="kfence.sample_interval=10 log_buf_len=1M"
	for smp in 2 4; do
		step "debug kernel, -smp $smp: soak, reset, device, k.echo reload"
		for t in e2e_soak e2e_reset e2e_device; do
			KT_E2E_SMP=$smp cargo test -p kt-tests --release --test "$t" -- \
				--include-ignored --test-threads=1 --nocapture
		done
		KT_E2E_SMP=$smp cargo test -p kt-tests --release --test e2e_kecho -- \
			--include-ignored --test-threads=1 host_exchanges_messages_with_k_echo
	done
elif [ -n "$only" ]; then
	step "cargo test -p kt-tests --test $only"
	cargo test -p kt-tests --release --test "$only" -- --include-ignored --test-threads=1 --nocapture
else
	step "cargo test -p kt-tests (end-to-end, one at a time)"
	cargo test -p kt-tests --release --tests -- --include-ignored --test-threads=1 --nocapture
	# What a confidential guest does: the device offers ACCESS_PLATFORM,
	# the driver maps every buffer through the DMA API, and swiotlb bounces
	# them (256 KiB per mapping at most: 1 MiB messages must be split).
	step "bounce buffers (iommu_platform=on, swiotlb=force): the messages tests again"
	KT_E2E_DEVICE_PROPS=iommu_platform=on KT_E2E_APPEND=swiotlb=force \
		cargo test -p kt-tests --release --test e2e_messages -- \
		--include-ignored --test-threads=1 --nocapture
fi
echo "e2e: done in $(elapsed)"
