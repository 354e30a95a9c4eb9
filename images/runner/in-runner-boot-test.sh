#!/bin/sh
# Runs inside the KVM runner VM (installed there as kt-test-boot): boots the
# guest under kt-vmm with 2 vCPUs and two vhost-user devices served by the
# fill test backend (virtio-id 4 = the guest's virtio-rng driver drives the
# data path end to end; virtio-id 60 = kerntransport's ID, probed only),
# then checks the guest's serial markers. Exit status 0 = all seen.
# On a host with a real /dev/kvm, images/runner/test.sh runs it directly
# with KT_GUEST_DIR pointing at the cached guest files.
set -u
guest=${KT_GUEST_DIR:-/guest}
tmp=$(mktemp -d)
out=$tmp/kt-vmm-boot.log
vhost-user-fill "$tmp/rng.sock" 1 &
rng_pid=$!
vhost-user-fill "$tmp/kt.sock" 3 &
kt_pid=$!
trap 'kill $rng_pid $kt_pid 2>/dev/null; rm -rf "$tmp"' EXIT
for s in "$tmp/rng.sock" "$tmp/kt.sock"; do
	i=0
	while [ ! -S "$s" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
done
start=$(cut -d' ' -f1 /proc/uptime)
kt-vmm --kernel "$guest/vmlinuz" --initrd "$guest/initrd.cpio.gz" --cpus 2 --mem 512M \
	--cmdline "console=ttyS0 reboot=k panic=-1 quiet" \
	--vhost-user "socket=$tmp/rng.sock,virtio-id=4,queues=1" \
	--vhost-user "socket=$tmp/kt.sock,virtio-id=60,queues=3,queue-size=256,config-size=16" \
	>"$out" 2>&1
rc=$?
end=$(cut -d' ' -f1 /proc/uptime)
cat "$out"
echo "kt-test-boot: kt-vmm exited with $rc after $(echo "$end $start" | awk '{printf "%.1f", $1 - $2}')s"
fail=0
check() {
	if grep -q "$1" "$out"; then echo "kt-test-boot: ok: $2"; else echo "kt-test-boot: MISSING: $2"; fail=1; fi
}
check "KT-GUEST: init reached" "guest reached init"
check "KT-GUEST: cpus online 0-1" "2 vCPUs online"
check "device=0x0004" "virtio device 4 (vhost-user, virtio-mmio via ACPI LNRO0005)"
check "device=0x003c" "virtio device 60"
check "KT-GUEST: hwrng 5a5a5a5a" "virtio-rng read the backend's bytes (kick ioeventfd + call irqfd)"
check "kt-vmm: guest powered off" "ACPI power-off ended kt-vmm"
[ "$rc" = 0 ] || fail=1
exit $fail
