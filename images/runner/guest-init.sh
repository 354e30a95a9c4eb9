#!/bin/busybox sh
# /init of the tiny guest that kt-vmm (or QEMU) boots inside the KVM runner
# VM: prints a marker as soon as user space runs, loads virtio_mmio, lists
# virtio devices, then powers off. Owns nothing else.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
mount -t proc proc /proc
echo "KT-GUEST: init reached after $(cut -d' ' -f1 /proc/uptime)s uptime"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "KT-GUEST: cpus online $(cat /sys/devices/system/cpu/online)"
case " $(cat /proc/cmdline) " in
*" kt.bench "*) poweroff -f ;;
esac
if insmod /lib/modules/virtio_mmio.ko; then
	if [ -f /lib/modules/virtio-rng.ko ]; then insmod /lib/modules/virtio-rng.ko; fi
	for d in /sys/bus/virtio/devices/*; do
		[ -e "$d/device" ] || continue
		echo "KT-GUEST: virtio $(basename "$d") device=$(cat "$d/device") vendor=$(cat "$d/vendor")"
	done
	if [ -c /dev/hwrng ]; then
		echo "KT-GUEST: hwrng $(head -c 8 /dev/hwrng | od -An -tx1 | tr -d ' \n')"
	fi
else
	echo "KT-GUEST: insmod virtio_mmio failed"
fi
if [ -x /guest-cmd ]; then /guest-cmd; fi
echo "KT-GUEST: done"
poweroff -f
