# shellcheck shell=bash
# Sourced by the benchmarks that boot one real guest per measurement
# (bench-fairness.sh, bench-multiqueue.sh) after scripts/lib/artifacts.sh's
# kt_build_artifacts: a work directory whose logs are kept on failure,
# child processes stopped on exit, and one kt-vhost-device + QEMU guest run
# to the workload's KT-RESULT. Owns process set-up only; callers own their
# arguments and output.
#
#   bench_init NAME          work dir in $BENCH_WORK, cleanup trap, die()
#   bench_spawn LOG CMD...   CMD in the background, stopped on exit
#   bench_device LOG ARGS... kt-vhost-device on $BENCH_WORK/vm.vhost with
#                            ARGS; waits for its socket
#   bench_guest LOG APPEND NUM_VQS SMP
#                            QEMU (TCG unless KT_ACCEL=kvm) on that socket
#                            with NUM_VQS queues, serial log in LOG; waits
#                            for the workload's KT-RESULT (up to 1260 s);
#                            fails unless the result is PASS
#   bench_stop_all           stops every process started so far
#   bench_header VCPUS       the date/commit/machine lines of a table

bench_pids=()

bench_init() {
	BENCH_NAME=$1
	BENCH_WORK=$(mktemp -d "/tmp/kt-$1.XXXXXX")
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

bench_cleanup() {
	local rc=$?
	bench_stop_all
	if [ "$rc" = 0 ]; then
		rm -rf "$BENCH_WORK"
	else
		echo "$BENCH_NAME: logs kept in $BENCH_WORK" >&2
	fi
}

bench_stop_all() {
	local i
	for ((i = ${#bench_pids[@]} - 1; i >= 0; i--)); do
		kill "${bench_pids[$i]}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	bench_pids=()
}

die() {
	echo "$BENCH_NAME: $*" >&2
	exit 1
}

bench_spawn() {
	local log=$1
	shift
	"$@" >"$log" 2>&1 &
	bench_pids+=($!)
}

bench_device() {
	local log=$1
	shift
	rm -f "$BENCH_WORK/vm.vhost"
	bench_spawn "$log" "$KT_DEVICE_BIN" --socket-path "$BENCH_WORK/vm.vhost" "$@"
	local _
	for _ in $(seq 100); do
		[ -S "$BENCH_WORK/vm.vhost" ] && return 0
		sleep 0.1
	done
	die "kt-vhost-device did not start: $(cat "$log")"
}

bench_guest() {
	local serial=$1 append=$2 vqs=$3 smp=$4 qemu_pid n
	: >"$serial"
	"$KT_QEMU" -nodefaults -no-user-config -display none -M q35 -cpu max \
		-accel "${KT_ACCEL:-tcg}" -L /usr/share/qemu -L /usr/share/seabios -nic none -no-reboot \
		-smp "$smp" -m 512M -object memory-backend-memfd,id=mem,size=512M,share=on \
		-numa node,memdev=mem -serial "file:$serial" -kernel "$KT_KERNEL" -initrd "$KT_INITRAMFS" \
		-append "console=ttyS0 panic=-1 no_timer_check quiet $append" \
		-chardev "socket,id=kt0,path=$BENCH_WORK/vm.vhost,reconnect-ms=500" \
		-device "vhost-user-device-pci,chardev=kt0,virtio-id=60,num_vqs=$vqs,vq_size=256,config_size=20" \
		>"$serial.qemu" 2>&1 &
	qemu_pid=$!
	bench_pids+=("$qemu_pid")
	n=0
	until grep -aq "KT-RESULT:" "$serial"; do
		kill -0 "$qemu_pid" 2>/dev/null ||
			die "QEMU exited before the guest reported: $(tail -n 5 "$serial.qemu")"
		n=$((n + 1))
		[ "$n" -le 12600 ] || die "no result from the guest within 1260 s"
		sleep 0.1
	done
	grep -aq "KT-RESULT: PASS" "$serial" ||
		die "the guest failed: $(grep -a 'KT-RESULT\|KT: FAIL' "$serial" | tr -d '\r')"
}

# bench_header: the date, commit and machine lines every table starts with.
bench_header() {
	echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified)')"
	echo "accel: ${KT_ACCEL:-tcg}, $1 vCPU(s)  host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
}
