#!/bin/sh
# Runs inside the KVM runner VM (installed as kt-test-device): the project's
# guest image under kt-vmm with kerntransport's own backend, kt-vhost-device,
# as virtio device 60 on virtio-mmio. The guest workload `vmm-kt` (added by
# test-kt-device.sh) loads virtio_mmio, checks that kerntransport.ko bound
# the device and sends one message to the host echo service (`kt serve`).
# Exit status 0 = the image reported KT-RESULT: PASS.
set -u
guest=${KT_GUEST_DIR:-/guest}
tmp=$(mktemp -d)
printf '[[service]]\nname = "echo"\nsocket = "%s/echo.sock"\n' "$tmp" >"$tmp/policy.toml"
kt serve --socket "$tmp/echo.sock" --mode echo &
echo_pid=$!
kt-vhost-device --socket-path "$tmp/kt.sock" --policy "$tmp/policy.toml" \
	--log-level "${KT_DEVICE_LOG:-debug}" &
dev_pid=$!
trap 'kill $dev_pid $echo_pid 2>/dev/null; rm -rf "$tmp"' EXIT
i=0
while [ ! -S "$tmp/kt.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kt-vmm --kernel "$guest/vmlinuz" --initrd "$guest/initrd.cpio.gz" --cpus 2 --mem 512M \
	--cmdline "console=ttyS0 reboot=k panic=-1 quiet kt.workload=vmm-kt kt.timeout=60" \
	--vhost-user "socket=$tmp/kt.sock,virtio-id=60,queues=3,queue-size=256,config-size=16" \
	>"$tmp/out" 2>&1
rc=$?
cat "$tmp/out"
echo "kt-test-device: kt-vmm exited with $rc"
grep -q "KT-RESULT: PASS" "$tmp/out" && [ "$rc" = 0 ]
