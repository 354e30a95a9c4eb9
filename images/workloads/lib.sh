# Helpers for workload scripts (source with `. /workloads/lib.sh`). Owns the
# failure-reason convention /init reports: `fail REASON` records the reason
# and exits non-zero; /init prints it as `KT-RESULT: FAIL REASON`.

fail() {
	echo "$*" >"${KT_REASON_FILE:-/run/kt-reason}"
	echo "KT: FAIL: $*"
	exit 1
}

# need_module NAME: fail unless module NAME is loaded.
need_module() {
	grep -q "^$1 " /proc/modules || fail "module $1 is not loaded"
}

# pci_has VENDOR DEVICE (hex, e.g. 0x1af4 0x107c): true if a PCI function
# with that ID exists; prints its sysfs path.
pci_has() {
	for d in /sys/bus/pci/devices/*; do
		[ "$(cat "$d/vendor")" = "$1" ] && [ "$(cat "$d/device")" = "$2" ] &&
			{ echo "$d"; return 0; }
	done
	return 1
}

# kt_arg NAME: the value of NAME=VALUE on the kernel command line.
kt_arg() {
	for word in $(cat /proc/cmdline); do
		case "$word" in
		"$1="*) echo "${word#*=}"; return 0 ;;
		esac
	done
	return 1
}

# kt_sysfs: the kerntransport sysfs directory of the first bound device.
kt_sysfs() {
	for d in /sys/bus/virtio/devices/*; do
		[ -d "$d/kerntransport" ] && { echo "$d/kerntransport"; return 0; }
	done
	return 1
}
