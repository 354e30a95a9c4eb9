# Workload "pci-device": the guest sees the kerntransport virtio device
# (PCI 1af4:107c = virtio modern 0x1040 + ID 60) and the virtio bus lists
# device ID 60 (0x003c).
. /workloads/lib.sh
dev=$(pci_has 0x1af4 0x107c) || {
	echo "KT: PCI devices:"
	for d in /sys/bus/pci/devices/*; do echo "  $d $(cat "$d/vendor"):$(cat "$d/device")"; done
	fail "no PCI device 1af4:107c"
}
echo "KT: found kerntransport PCI function at $dev"
found=
for v in /sys/bus/virtio/devices/*; do
	[ "$(cat "$v/device")" = "0x003c" ] && found=$v
done
[ -n "$found" ] || fail "PCI 1af4:107c present but no virtio device with ID 0x003c"
echo "KT: virtio device $found has ID 60"
