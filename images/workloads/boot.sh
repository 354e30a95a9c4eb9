# Workload "boot": proves /init ran with the basics mounted and the
# image's files in place. Needs no kerntransport device.
. /workloads/lib.sh
[ -r /proc/cmdline ] || fail "/proc is not mounted"
[ -d /sys/bus/pci/devices ] || fail "/sys is not mounted"
[ -c /dev/null ] || fail "devtmpfs is not mounted on /dev"
grep -qw "kt.workload=boot" /proc/cmdline || fail "kt.workload=boot missing from /proc/cmdline"
echo "KT: boot workload ok: $(cut -d' ' -f1 /proc/uptime)s uptime"
