# Workload "vmm-echo": the quickest check of the project image under kt-vmm:
# kerntransport.ko bound virtio device 60 on virtio-mmio (virtio_mmio.ko is
# loaded by /init) and one message makes the round trip guest -> host echo
# service -> guest right after boot. On failure it prints interrupts,
# `kt stats` and the driver's kernel messages.
. /workloads/lib.sh
need_module kerntransport
found=
for v in /sys/bus/virtio/devices/*; do
	[ "$(cat "$v/device" 2>/dev/null)" = "0x003c" ] && found=$v
done
[ -n "$found" ] || fail "no virtio device with ID 0x003c (is virtio_mmio loaded?)"
drv=$(basename "$(readlink "$found/driver")")
[ "$drv" = kerntransport ] || fail "device 60 bound to '$drv', not kerntransport"
echo "KT: virtio device $found (ID 60) bound to $drv, status $(cat "$found/status")"
if ! reply=$(echo hello-through-kt-vmm | kt connect echo --count 1 --timeout 30 2>&1); then
	grep -i -e virtio -e CPU /proc/interrupts
	kt stats 2>&1
	dmesg | grep -i -e kerntransport -e virtio | tail -n 20
	fail "kt connect echo failed: $reply"
fi
case "$reply" in
*hello-through-kt-vmm*) echo "KT: echo service answered: $reply" ;;
*) fail "unexpected echo reply '$reply'" ;;
esac
