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
