#!/bin/busybox sh
# /init of the KVM runner VM: loads Debian's KVM modules (kvm + kvm-amd on
# QEMU's emulated SVM), runs the command packed in /kt-cmd, and reports
# "KT-RUNNER: PASS" or "KT-RUNNER: FAIL (status N)" on the serial console.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# Transparent huge pages for memfd guest RAM (kt-vmm and QEMU both madvise
# it): fewer nested page faults for the inner guest.
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
if [ -w "$thp" ]; then echo advise >"$thp"; fi
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/tmp
vendor=kvm-amd
grep -q GenuineIntel /proc/cpuinfo && vendor=kvm-intel
for m in irqbypass ccp kvm $vendor; do
	if [ -f "/lib/modules/kt/$m.ko" ]; then insmod "/lib/modules/kt/$m.ko"; fi
done
if [ -c /dev/kvm ]; then echo "KT-RUNNER: /dev/kvm ready"; else echo "KT-RUNNER: no /dev/kvm"; fi
cd /tmp
sh /kt-cmd
rc=$?
if [ "$rc" = 0 ]; then echo "KT-RUNNER: PASS"; else echo "KT-RUNNER: FAIL (status $rc)"; fi
poweroff -f
