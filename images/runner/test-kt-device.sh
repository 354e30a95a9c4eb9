#!/usr/bin/env bash
# The quickest check of kt-vmm with the project's real pieces: the guest
# image from images/build-image.sh (kerntransport.ko, kt, virtio_mmio.ko,
# /init, workload vmm-echo) with kt-vhost-device as the vhost-user backend
# and a host echo service (`kt serve`): one message goes guest -> host ->
# guest right after boot. KT_REPEAT=N boots the guest N times in one run.
# Runs in the KVM runner VM (or directly where /dev/kvm is real). Exit 0 =
# pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
img=$("$root/images/build-image.sh" | tail -n1)
KERNEL= INITRAMFS=
eval "$img" # KERNEL=... INITRAMFS=...
(cd "$root" && nice cargo build --release -q -p kt-vhost-device --bin kt-vhost-device &&
	nice cargo build --release -q -p kt --bin kt) >&2
target=${CARGO_TARGET_DIR:-$root/target}
repeat=${KT_REPEAT:-1}
if [ -w /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && [ "${KT_FORCE_RUNNER:-0}" != 1 ]; then
	PATH=$target/release:$PATH KT_IMAGE_DIR=$(dirname "$KERNEL") KT_REPEAT=$repeat \
		exec sh "$here/in-runner-kt-device-test.sh"
fi
export KT_IMAGE_KERNEL=$KERNEL KT_IMAGE_INITRD=$INITRAMFS
export KT_RUNNER_BINS="$target/release/kt-vhost-device $target/release/kt"
exec "$here/run.sh" --timeout "${KT_RUNNER_TIMEOUT:-900}" -- "KT_REPEAT=$repeat kt-test-device"
