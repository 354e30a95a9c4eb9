#!/usr/bin/env bash
# kt-vmm with the project's real pieces: the guest image from
# images/build-image.sh (kerntransport.ko, kt, /init) plus virtio_mmio.ko and
# a `vmm-kt` workload, and kt-vhost-device as the vhost-user backend with a
# host echo service (`kt serve`): one message goes guest -> host -> guest. Runs in
# the KVM runner VM (or directly where /dev/kvm is real). Exit 0 = pass.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
KVER=${KVER:-6.12.95+deb12-cloud-amd64}
img=$("$root/images/build-image.sh" | tail -n1)
eval "$img" # KERNEL=... INITRAMFS=...
(cd "$root" && nice cargo build --release -q -p kt-vhost-device --bin kt-vhost-device &&
	nice cargo build --release -q -p kt --bin kt) >&2
target=${CARGO_TARGET_DIR:-$root/target}
extra=$(mktemp -d)
trap 'rm -rf "$extra"' EXIT
mkdir -p "$extra/lib/modules" "$extra/workloads"
xz -dc "/lib/modules/$KVER/kernel/drivers/virtio/virtio_mmio.ko.xz" >"$extra/lib/modules/virtio_mmio.ko"
cat >"$extra/workloads/vmm-kt.sh" <<'WL'
# Workload "vmm-kt": under kt-vmm the kerntransport device is virtio-mmio,
# described in ACPI; load virtio_mmio and check kerntransport.ko binds it.
. /workloads/lib.sh
insmod /lib/modules/virtio_mmio.ko || fail "insmod virtio_mmio.ko failed"
found=
for i in 1 2 3 4 5 6 7 8 9 10; do
	for v in /sys/bus/virtio/devices/*; do
		[ "$(cat "$v/device" 2>/dev/null)" = "0x003c" ] && found=$v
	done
	[ -n "$found" ] && [ -e "$found/driver" ] && break
	sleep 0.5
done
[ -n "$found" ] || fail "no virtio device with ID 0x003c on virtio-mmio"
echo "KT: virtio device $found has ID 60"
drv=$(basename "$(readlink "$found/driver")")
[ "$drv" = kerntransport ] || fail "device 60 bound to '$drv', not kerntransport"
echo "KT: bound to $drv; status $(cat "$found/status")"
[ -c /dev/kerntransport ] || fail "/dev/kerntransport missing"
echo "KT: /dev/kerntransport present"
if ! reply=$(echo hello-through-kt-vmm | timeout 30 kt connect echo --count 1); then
	grep -i virtio /proc/interrupts
	kt stats
	dmesg | tail -n 20
	fail "kt connect echo failed: $reply"
fi
echo "KT: echo service answered: $reply"
case "$reply" in
*hello-through-kt-vmm*) ;;
*) fail "unexpected echo reply '$reply'" ;;
esac
WL
export KT_GUEST_KERNEL=$KERNEL KT_GUEST_INITRD=$INITRAMFS KT_GUEST_EXTRA=$extra
export KT_RUNNER_BINS="$target/release/kt-vhost-device $target/release/kt"
if [ -w /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ] && [ "${KT_FORCE_RUNNER:-0}" != 1 ]; then
	dir=$("$here/build-runner.sh" | tail -n1)
	PATH=$target/release:$PATH KT_GUEST_DIR=$dir/guest exec sh "$here/in-runner-kt-device-test.sh"
fi
exec "$here/run.sh" --timeout "${KT_RUNNER_TIMEOUT:-600}" -- kt-test-device
