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

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it
# succeeds; fails with "timed out after SECONDS s waiting for WHAT", after
# running the command named in KT_ON_TIMEOUT, if set (a diagnostic dump).
wait_until() {
	_limit=$(($1 * 10))
	_what=$2
	shift 2
	_n=0
	until "$@"; do
		_n=$((_n + 1))
		if [ "$_n" -gt "$_limit" ]; then
			[ -z "${KT_ON_TIMEOUT:-}" ] || "$KT_ON_TIMEOUT"
			fail "timed out after $((_limit / 10)) s waiting for $_what"
		fi
		usleep 100000
	done
}

# kt_stat NAME: one counter of the bound device (see kt_sysfs).
kt_stat() {
	cat "$(kt_sysfs)/$1"
}

# host_sessions_done N: true once N host-initiated channels were opened
# and no channel is open any more.
host_sessions_done() {
	[ "$(kt_stat opens_in)" -ge "$1" ] && [ "$(kt_stat open_channels)" = 0 ]
}

# wait_stalled PID LABEL STALLS0 TX0: waits until the writer PID has had to
# wait for credit (credit_stalls above STALLS0) and sent nothing for a
# second while still running; reports how many messages went out since
# tx_msgs was TX0. The writer's output is in /tmp/LABEL.out.
wait_stalled() {
	_n=0
	while :; do
		kill -0 "$1" 2>/dev/null ||
			fail "$2: the writer exited before it stalled: $(cat "/tmp/$2.out")"
		_a=$(kt_stat tx_msgs)
		sleep 1
		_b=$(kt_stat tx_msgs)
		if [ "$_a" = "$_b" ] && [ "$(kt_stat credit_stalls)" -gt "$3" ] &&
			kill -0 "$1" 2>/dev/null; then
			break
		fi
		_n=$((_n + 1))
		[ "$_n" -le 60 ] || fail "$2: the writer did not stall within 60 s"
	done
	echo "KT: $2 writer stalled after $((_b - $4)) messages, still running (credit_stalls $(($(kt_stat credit_stalls) - $3)))"
}
