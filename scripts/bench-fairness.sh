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
# host source, `kt serve --mode source`, floods the guest), KT_ACCEL (tcg|kvm),
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
echo | source) ;;
*)
	echo "bench-fairness: KT_FLOOD must be echo or source, not '$flood'" >&2
	exit 2
	;;
esac
work=$(mktemp -d /tmp/kt-fairness.XXXXXX)
pids=()
cleanup() {
	local rc=$?
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[$i]}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	if [ "$rc" = 0 ]; then
		rm -rf "$work"
	else
		echo "bench-fairness: logs kept in $work (serial.log, backend.log, serve.log, qemu.log)" >&2
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
die() {
	echo "bench-fairness: $*" >&2
	exit 1
}

kt_build_artifacts "$work/build.log" || die "build failed"
"$KT_TOOL_BIN" serve --socket "$work/echo.sock" --mode echo >"$work/serve.log" 2>&1 &
pids+=($!)
"$KT_TOOL_BIN" serve --socket "$work/source.sock" --mode source --count 1000000000 \
	--min-size 64 --max-size 64 >"$work/source.log" 2>&1 &
pids+=($!)
cat >"$work/policy.toml" <<TOML
[[service]]
name = "echo"
socket = "$work/echo.sock"

[[service]]
name = "source"
socket = "$work/source.sock"
TOML
# shellcheck disable=SC2086 # KT_DEVICE_ARGS is a list of flags
"$KT_DEVICE_BIN" --socket-path "$work/vm.vhost" --policy "$work/policy.toml" \
	--max-channels $((channels + 64)) --log-level warn ${KT_DEVICE_ARGS:-} \
	>"$work/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	[ -S "$work/vm.vhost" ] && [ -S "$work/echo.sock" ] && break
	sleep 0.1
done
[ -S "$work/vm.vhost" ] || die "kt-vhost-device did not start: $(cat "$work/backend.log")"

accel=${KT_ACCEL:-tcg}
: >"$work/serial.log"
"$KT_QEMU" -nodefaults -no-user-config -display none -M q35 -cpu max -accel "$accel" \
	-L /usr/share/qemu -L /usr/share/seabios -nic none -no-reboot \
	-smp "${KT_SMP:-1}" -m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
	-serial "file:$work/serial.log" -kernel "$KT_KERNEL" -initrd "$KT_INITRAMFS" \
	-append "console=ttyS0 panic=-1 no_timer_check quiet kt.workload=fairness kt.fairness=$params kt.flood=$flood kt.timeout=1200" \
	-chardev "socket,id=kt0,path=$work/vm.vhost,reconnect-ms=500" \
	-device vhost-user-device-pci,chardev=kt0,virtio-id=60,num_vqs=3,vq_size=256,config_size=16 \
	>"$work/qemu.log" 2>&1 &
qemu_pid=$!
pids+=("$qemu_pid")
n=0
until grep -aq "KT-RESULT:" "$work/serial.log"; do
	kill -0 "$qemu_pid" 2>/dev/null || die "QEMU exited before the guest reported"
	n=$((n + 1))
	[ "$n" -le 12600 ] || die "no result from the guest within 1260 s"
	sleep 0.1
done
echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified)')"
echo "accel: $accel, ${KT_SMP:-1} vCPU(s)  host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "flood: $flood  device args: --max-channels $((channels + 64)) ${KT_DEVICE_ARGS:-}"
tr -d '\r' <"$work/serial.log" | sed -n 's/^BENCH fairness: //p'
grep -aq "KT-RESULT: PASS" "$work/serial.log" ||
	die "the guest failed: $(grep -a 'KT-RESULT' "$work/serial.log" | tr -d '\r')"
