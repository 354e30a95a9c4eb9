#!/usr/bin/env bash
# Channel fairness benchmark (issue 11): 1,000 channels in one real guest,
# one of them flooding; the others' p99 round trip against the idle figure
# (target: within 2x). Boots the guest image under QEMU (TCG unless
# KT_ACCEL=kvm) with kt-vhost-device and a host echo service
# (`kt serve --mode echo`); the guest runs workload "fairness"
# (images/workloads/fairness.sh: `kt bench echo --fairness N`), whose table
# this prints under the environment. Exit 0 if the guest ran the bench.
#
#   scripts/bench-fairness.sh                 # real guest, kt.fairness=1000,5000
#   KT_FAIRNESS=1000,20000 scripts/bench-fairness.sh
#   scripts/bench-fairness.sh --sim [ARGS]    # simulated guest instead:
#                                             # kt-vhost-device-fairness ARGS
#
# Environment: KT_FAIRNESS=CHANNELS,ROUND_TRIPS, KT_FLOOD (echo: the
# flooding channel's 64 B messages are echoed back, default; source: a
# host source, `kt serve --mode source`, floods the guest; sink: the guest
# floods a host sink, `kt serve --mode sink`), KT_TX_SHARE=N[,N...] (run
# the guest's bench once per value of the driver's tx_share parameter, side
# by side in one boot), KT_ACCEL (tcg|kvm),
# KT_SMP (guest vCPUs, default 1; the flood's two threads share them with
# the round trips), KT_CACHE, KT_DEVICE_ARGS (extra kt-vhost-device flags).
# Not part of `make test`: it is a benchmark, not a test (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--sim" ]; then
	shift
	cargo build --release --quiet -p kt-vhost-device -p kt-sim
	exec target/release/kt-vhost-device-fairness "$@"
fi
[ $# = 0 ] || {
	echo "usage: scripts/bench-fairness.sh [--sim [ARGS]]" >&2
	exit 2
}
# shellcheck source=scripts/lib/artifacts.sh
. scripts/lib/artifacts.sh
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
params=${KT_FAIRNESS:-1000,5000}
case "$params" in
[0-9]*,[0-9]*) ;;
*)
	echo "bench-fairness: KT_FAIRNESS must be CHANNELS,ROUND_TRIPS, not '$params'" >&2
	exit 2
	;;
esac
channels=${params%%,*}
flood=${KT_FLOOD:-echo}
case "$flood" in
echo | source | sink) ;;
*)
	echo "bench-fairness: KT_FLOOD must be echo, source or sink, not '$flood'" >&2
	exit 2
	;;
esac
shares=${KT_TX_SHARE:-}
case "$shares" in
*[!0-9,]* | ,* | *, | *,,*)
	echo "bench-fairness: KT_TX_SHARE must be N[,N...], not '$shares'" >&2
	exit 2
	;;
esac
# shellcheck source=scripts/lib/bench-guest.sh
. scripts/lib/bench-guest.sh
bench_init bench-fairness
work=$BENCH_WORK

kt_build_artifacts "$work/build.log" || die "build failed"
bench_spawn "$work/serve.log" "$KT_TOOL_BIN" serve --socket "$work/echo.sock" --mode echo
bench_spawn "$work/source.log" "$KT_TOOL_BIN" serve --socket "$work/source.sock" --mode source \
	--count 1000000000 --min-size 64 --max-size 64
bench_spawn "$work/sink.log" "$KT_TOOL_BIN" serve --socket "$work/sink.sock" --mode sink
cat >"$work/policy.toml" <<TOML
[[service]]
name = "echo"
socket = "$work/echo.sock"

[[service]]
name = "source"
socket = "$work/source.sock"

[[service]]
name = "sink"
socket = "$work/sink.sock"
TOML
# shellcheck disable=SC2086 # KT_DEVICE_ARGS is a list of flags
bench_device "$work/backend.log" --policy "$work/policy.toml" \
	--max-channels $((channels + 64)) --log-level warn ${KT_DEVICE_ARGS:-}
for _ in $(seq 100); do
	[ -S "$work/echo.sock" ] && [ -S "$work/source.sock" ] && [ -S "$work/sink.sock" ] && break
	sleep 0.1
done
bench_guest "$work/serial.log" \
	"kt.workload=fairness kt.fairness=$params kt.flood=$flood${shares:+ kt.tx_share=$shares} kt.timeout=1200" 3 "${KT_SMP:-1}"
bench_header "${KT_SMP:-1}"
echo "flood: $flood  tx_share: ${shares:-default}  device args: --max-channels $((channels + 64)) ${KT_DEVICE_ARGS:-}"
tr -d '\r' <"$work/serial.log" | sed -n 's/^BENCH fairness: //p'
