#!/bin/sh
# Runs inside the KVM runner VM (installed as kt-test-device): the project's
# guest image (KT_IMAGE_DIR, default /kt-image) under kt-vmm with
# kerntransport's own backend, kt-vhost-device, as virtio device 60 on
# virtio-mmio; the workload `vmm-echo` checks that kerntransport.ko bound
# the device and sends one message to the host echo service (`kt serve`)
# right after boot. KT_REPEAT=N boots it N times (to catch rare failures).
# Exit status 0 = every boot reported KT-RESULT: PASS.
set -u
img=${KT_IMAGE_DIR:-/kt-image}
tmp=$(mktemp -d)
printf '[[service]]\nname = "echo"\nsocket = "%s/echo.sock"\n' "$tmp" >"$tmp/policy.toml"
kt serve --socket "$tmp/echo.sock" --mode echo >/dev/null 2>&1 &
echo_pid=$!
kt-vhost-device --socket-path "$tmp/kt.sock" --policy "$tmp/policy.toml" \
	--log-level "${KT_DEVICE_LOG:-info}" >"$tmp/dev.log" 2>&1 &
dev_pid=$!
trap 'kill $dev_pid $echo_pid 2>/dev/null; rm -rf "$tmp"' EXIT
i=0
while [ ! -S "$tmp/kt.sock" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
fails=0
run=1
while [ "$run" -le "${KT_REPEAT:-1}" ]; do
	kt-vmm --kernel "$img/vmlinuz" --initrd "$img/initramfs.cpio.gz" --cpus 2 --mem 512M \
		--cmdline "console=ttyS0 reboot=k panic=-1 quiet kt.workload=vmm-echo kt.timeout=60" \
		--vhost-user "socket=$tmp/kt.sock,virtio-id=60,queues=3,queue-size=256,config-size=16" \
		>"$tmp/out" 2>&1 </dev/null
	rc=$?
	if grep -q "KT-RESULT: PASS" "$tmp/out" && [ "$rc" = 0 ]; then
		echo "kt-test-device: boot $run: $(grep -o 'echo service answered.*' "$tmp/out")"
	else
		fails=$((fails + 1))
		cat "$tmp/out"
		echo "---- kt-vhost-device log (last 40 lines) ----"
		tail -n 40 "$tmp/dev.log"
		echo "kt-test-device: boot $run FAILED (kt-vmm exited with $rc)"
	fi
	run=$((run + 1))
done
echo "kt-test-device: $fails of ${KT_REPEAT:-1} boot(s) failed"
[ "$fails" = 0 ]
