#!/usr/bin/env bash
# Multiqueue benchmark (issue 11): aggregate 64 B message rate of one real
# guest with 2 vCPUs (KT_SMP) over one rx/tx pair and over two, side by
# side in one run, and the ratio (target: 2 pairs >= 1.5x 1 pair). Each
# case boots the guest image under QEMU (TCG unless KT_ACCEL=kvm) with
# kt-vhost-device and a host bench peer (`kt serve --mode bench`); the
# guest runs workload "mq-bench" (images/workloads/mq-bench.sh): one
# `kt bench` per vCPU, pinned, both directions in turn.
#
#   1 pair:  kt-vhost-device --queue-pairs 1, QEMU with 3 queues
#   2 pairs: kt-vhost-device --queue-pairs 2, QEMU with 5 queues
#
#   scripts/bench-multiqueue.sh               # real guest
#   KT_MQ_COUNT=50000 scripts/bench-multiqueue.sh
#   scripts/bench-multiqueue.sh --sim [ARGS]  # simulated guest instead:
#                                             # kt-vhost-device-bench --pairs 2 ARGS
#
# Environment: KT_MQ_COUNT (64 B messages per vCPU per direction, default
# 200000), KT_ACCEL (tcg|kvm), KT_SMP (guest vCPUs, default 2), KT_CACHE,
# KT_DEVICE_ARGS (extra kt-vhost-device flags). Not part of `make test`:
# it is a benchmark, not a test (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sim" ]; then
	shift
	cargo build --release --quiet -p kt-vhost-device -p kt-sim
	exec target/release/kt-vhost-device-bench --pairs 2 "$@"
fi
[ $# = 0 ] || {
	echo "usage: scripts/bench-multiqueue.sh [--sim [ARGS]]" >&2
	exit 2
}
count=${KT_MQ_COUNT:-200000}
smp=${KT_SMP:-2}
case "$count$smp" in
*[!0-9]* | "")
	echo "bench-multiqueue: KT_MQ_COUNT and KT_SMP must be numbers" >&2
	exit 2
	;;
esac
# shellcheck source=scripts/lib/artifacts.sh
. scripts/lib/artifacts.sh
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
# shellcheck source=scripts/lib/bench-guest.sh
. scripts/lib/bench-guest.sh
bench_init bench-multiqueue
work=$BENCH_WORK

kt_build_artifacts "$work/build.log" || die "build failed"
cat >"$work/policy.toml" <<TOML
[[service]]
name = "bench"
socket = "$work/bench.sock"
TOML

# run PAIRS: one boot with PAIRS pairs; its BENCH mq lines in $work/PAIRS.out.
run() {
	local pairs=$1
	bench_spawn "$work/serve-$pairs.log" "$KT_TOOL_BIN" serve --socket "$work/bench.sock" --mode bench
	# shellcheck disable=SC2086 # KT_DEVICE_ARGS is a list of flags
	bench_device "$work/backend-$pairs.log" --policy "$work/policy.toml" \
		--queue-pairs "$pairs" --log-level warn ${KT_DEVICE_ARGS:-}
	bench_guest "$work/serial-$pairs.log" \
		"kt.workload=mq-bench kt.mq_bench=$count kt.timeout=1200" $((1 + 2 * pairs)) "$smp"
	tr -d '\r' <"$work/serial-$pairs.log" | sed -n 's/^BENCH mq: //p' >"$work/$pairs.out"
	bench_stop_all
	rm -f "$work/bench.sock"
}
run 1
run 2

# field PAIRS PATTERN: the number before " msgs/s" on the line PATTERN.
field() {
	sed -n "s/^$2 \([0-9][0-9]*\) msgs\/s$/\1/p" "$work/$1.out"
}
bench_header "$smp"
echo "guest: $(sed -n "s/^guest //p" "$work/1.out")"
echo "pairs used by the driver: $(sed -n 's/^pairs //p' "$work/1.out") and $(sed -n 's/^pairs //p' "$work/2.out")"
printf '%-44s %14s %14s %10s\n' "row (64 B messages, aggregate)" "1 pair" "2 pairs" "2 / 1"
for way in to-host from-host; do
	one=$(field 1 "$way aggregate")
	two=$(field 2 "$way aggregate")
	if [ -z "$one" ] || [ -z "$two" ]; then
		die "no $way figures: $(cat "$work/1.out" "$work/2.out")"
	fi
	printf '%-44s %9s msg/s %9s msg/s %9sx\n' "message rate, $way" "$one" "$two" \
		"$(awk -v a="$two" -v b="$one" 'BEGIN { printf "%.2f", a / b }')"
	for i in $(seq 0 $((smp - 1))); do
		printf '%-44s %9s msg/s %9s msg/s\n' "  of which vCPU $i" \
			"$(field 1 "$way cpu$i")" "$(field 2 "$way cpu$i")"
	done
done
