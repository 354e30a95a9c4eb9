#!/usr/bin/env bash
# Side-by-side benchmark of kerntransport against virtio-vsock (vhost-user,
# vhost-device-vsock) and virtio-serial (QEMU built-in), in ONE guest boot
# with all three devices, under the same QEMU (TCG by default), guest kernel
# and message sizes. The guest runs workload "bench-peers" (`kt bench` per
# transport against a host echo peer); this script starts the host peers,
# collects the guest's "BENCH <transport>:" lines and prints one table:
# rows = metric, columns = kerntransport | vsock | virtio-serial, plus
# kerntransport/peer ratios. A transport that fails shows "n/a (reason)".
# It also writes, into $KT_BENCH_OUT (default docs/bench, the committed
# latest results): peers.md (the table in markdown, with the environment),
# peers.csv (row,unit,kerntransport,vsock,virtio_serial,better), peers.env
# (the environment: date, commit, host CPU and kernel, QEMU, guest kernel,
# sizes) and peers.svg (the chart, drawn by kt-benchplot from the CSV).
# Not part of `make test`: it is a benchmark, not a test.
#
# Environment: KT_CACHE, KT_ACCEL (tcg|kvm), KT_BENCH=ITER,BULK_MB,SMALL_COUNT
# (default 1000,8,10000), KT_VSOCK_DEVICE (a vhost-device-vsock binary;
# default: `cargo install vhost-device-vsock@0.3.0 --locked` into the cache),
# KT_BENCH_OUT (output directory).
# Exit 0 if the guest ran and at least kerntransport was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/artifacts.sh
. scripts/lib/artifacts.sh
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
VSOCK_VERSION=0.3.0
VSOCK_PORT=5000
GUEST_CID=3
params=${KT_BENCH:-1000,8,10000}
out_dir=${KT_BENCH_OUT:-docs/bench}
t0=$(date +%s)
load=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d /tmp/kt-peers.XXXXXX)
pids=()
keep=0
cleanup() {
	local rc=$?
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
		kill "${pids[$i]}" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	if [ "$rc" = 0 ] && [ "$keep" = 0 ]; then
		rm -rf "$work"
	else
		echo "bench-peers: logs kept in $work" >&2
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { printf 'bench-peers: %s\n' "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
case "$params" in
*[!0-9,]* | *,*,*,* | ,* | *,) die "KT_BENCH=$params: expected ITERATIONS,BULK_MB,SMALL_COUNT" ;;
*,*,*) ;;
*) die "KT_BENCH=$params: expected ITERATIONS,BULK_MB,SMALL_COUNT" ;;
esac

log "building (cached after the first run; log: $work/build.log)"
kt_build_artifacts "$work/build.log" || die "build failed"
kernel=$KT_KERNEL
initramfs=$KT_INITRAMFS
device=$KT_DEVICE_BIN
kt=$KT_TOOL_BIN

# vhost-device-vsock: a published crate, installed once into the cache.
vsock_dev=${KT_VSOCK_DEVICE:-$KT_CACHE/peers/vhost-device-vsock-$VSOCK_VERSION/bin/vhost-device-vsock}
vsock_na=
if [ ! -x "$vsock_dev" ] && [ -z "${KT_VSOCK_DEVICE:-}" ]; then
	log "installing vhost-device-vsock $VSOCK_VERSION (once; log: $work/vsock-install.log)"
	nice cargo install vhost-device-vsock --version "$VSOCK_VERSION" --locked \
		--root "$KT_CACHE/peers/vhost-device-vsock-$VSOCK_VERSION" >"$work/vsock-install.log" 2>&1 ||
		vsock_na="cargo install vhost-device-vsock failed: $(tail -n1 "$work/vsock-install.log")"
fi
[ -n "$vsock_na" ] || [ -x "$vsock_dev" ] || vsock_na="no vhost-device-vsock binary at $vsock_dev"

# Host peers: one echo per transport.
"$kt" serve --socket "$work/echo.sock" --mode echo >"$work/serve-kt.log" 2>&1 &
pids+=($!)
cat >"$work/policy.toml" <<TOML
[[service]]
name = "echo"
socket = "$work/echo.sock"
TOML
"$device" --socket-path "$work/kt.vhost" --policy "$work/policy.toml" --guest-id 7 \
	>"$work/kt-device.log" 2>&1 &
pids+=($!)
# vhost-device-vsock connects a guest's connection to port P to <uds>_P.
"$kt" serve --framed --socket "$work/vsock.uds_$VSOCK_PORT" --mode echo >"$work/serve-vsock.log" 2>&1 &
pids+=($!)
if [ -z "$vsock_na" ]; then
	"$vsock_dev" --guest-cid "$GUEST_CID" --socket "$work/vsock.vhost" --uds-path "$work/vsock.uds" \
		>"$work/vsock-device.log" 2>&1 &
	pids+=($!)
fi
# QEMU connects to this one as a client when it starts.
"$kt" serve --framed --socket "$work/serial.sock" --mode echo >"$work/serve-serial.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	[ -S "$work/kt.vhost" ] && [ -S "$work/echo.sock" ] && [ -S "$work/serial.sock" ] &&
		[ -S "$work/vsock.uds_$VSOCK_PORT" ] && { [ -n "$vsock_na" ] || [ -S "$work/vsock.vhost" ]; } && break
	sleep 0.1
done
[ -S "$work/kt.vhost" ] || die "kt-vhost-device did not start: $(cat "$work/kt-device.log")"
[ -S "$work/serial.sock" ] || die "the serial echo did not start: $(cat "$work/serve-serial.log")"
if [ -z "$vsock_na" ] && [ ! -S "$work/vsock.vhost" ]; then
	vsock_na="vhost-device-vsock did not start: $(tail -n1 "$work/vsock-device.log")"
fi

accel=${KT_ACCEL:-}
if [ -z "$accel" ]; then
	accel=tcg
	if [ ! -e /sys/module/kvm_pvm ] && [ -w /dev/kvm ]; then accel=kvm; fi
fi
vsock_args=()
[ -n "$vsock_na" ] || vsock_args=(-chardev "socket,id=vs0,path=$work/vsock.vhost"
	-device vhost-user-vsock-pci,chardev=vs0)
qemu_cmd=("$KT_QEMU" -nodefaults -no-user-config -display none -M q35 -cpu max -accel "$accel"
	-L /usr/share/qemu -L /usr/share/seabios -nic none -no-reboot
	-m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
	-serial "file:$work/serial.log" -kernel "$kernel" -initrd "$initramfs"
	-append "console=ttyS0 panic=-1 no_timer_check quiet kt.workload=bench-peers kt.bench=$params kt.timeout=1500"
	-chardev "socket,id=kt0,path=$work/kt.vhost,reconnect-ms=500"
	-device vhost-user-device-pci,chardev=kt0,virtio-id=60,num_vqs=3,vq_size=256,config_size=16
	"${vsock_args[@]}"
	-chardev "socket,id=ser0,path=$work/serial.sock"
	-device virtio-serial-pci -device virtserialport,chardev=ser0,name=kt.bench)
log "booting the guest ($accel, KT_BENCH=$params; serial log $work/serial.log)"
: >"$work/serial.log"
"${qemu_cmd[@]}" >"$work/qemu.log" 2>&1 &
qemu_pid=$!
pids+=("$qemu_pid")
n=0
until grep -aq "KT-RESULT:" "$work/serial.log"; do
	kill -0 "$qemu_pid" 2>/dev/null || die "QEMU exited without a result: $(tail -n3 "$work/qemu.log")"
	n=$((n + 1))
	[ "$n" -le 18000 ] || die "no result from the guest within 30 min"
	sleep 0.1
done
grep -aq "KT-RESULT: PASS" "$work/serial.log" ||
	die "the guest failed: $(grep -a 'KT-RESULT' "$work/serial.log" | tr -d '\r')"
tr -d '\r' <"$work/serial.log" | sed -n 's/^BENCH //p' >"$work/bench.txt"

# value TRANSPORT METRIC-PREFIX: the number (and unit) of one row, else
# "n/a (reason)".
value() {
	local t=$1 m=$2 na
	na=$(sed -n "s/^$t: n\/a //p" "$work/bench.txt" | head -n1)
	if [ -n "$na" ]; then
		echo "n/a ($na)"
		return
	fi
	sed -n "s/^$t: $m[^)]*) *//p" "$work/bench.txt" | head -n1 | grep . || echo "n/a (no result)"
}
[ -z "$vsock_na" ] || echo "vsock: n/a $vsock_na" >>"$work/bench.txt"
# ratio A B: kerntransport / peer, from "NUM unit" cells.
ratio() {
	case "$1 $2" in
	n/a* | *" n/a"*) echo "-" ;;
	*) awk -v a="${1%% *}" -v b="${2%% *}" 'BEGIN { if (b > 0) printf "%.2fx\n", a / b; else print "-" }' ;;
	esac
}
# csv_cell "NUM unit" | "n/a (...)": the number, or n/a.
csv_cell() {
	case "$1" in
	n/a*) echo "n/a" ;;
	*) echo "${1%% *}" ;;
	esac
}
metrics=("ping-pong latency p50" "ping-pong latency p99" "throughput, one way" "message rate")
names=("latency p50, 64 B (lower is better)" "latency p99, 64 B (lower is better)"
	"one-way throughput, 64 KiB msgs" "message rate, 16 B msgs")
csv_names=("latency p50, 64 B" "latency p99, 64 B" "one-way throughput, 64 KiB msgs" "message rate, 16 B msgs")
units=(us us MB/s msgs/s)
better=(lower lower higher higher)
{
	printf 'metric|kerntransport|vsock|virtio-serial|kt/vsock|kt/serial\n'
	for i in "${!metrics[@]}"; do
		k=$(value kt "${metrics[$i]}")
		v=$(value vsock "${metrics[$i]}")
		s=$(value serial "${metrics[$i]}")
		printf '%s|%s|%s|%s|%s|%s\n' "${names[$i]}" "$k" "$v" "$s" "$(ratio "$k" "$v")" "$(ratio "$k" "$s")"
		printf '"%s",%s,%s,%s,%s,%s\n' "${csv_names[$i]}" "${units[$i]}" \
			"$(csv_cell "$k")" "$(csv_cell "$v")" "$(csv_cell "$s")" "${better[$i]}" >>"$work/rows.csv"
	done
} >"$work/table.txt"
qemu_version=$("$KT_QEMU" --version | head -n1)
guest=$(sed -n 's/^KT: image \([^ ]*\) kernel \(.*\)/\2 (image \1)/p' "$(dirname "$initramfs")/contents.txt")
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit (with uncommitted changes)"
echo "bench-peers: one $accel guest boot, $qemu_version, guest kernel $guest, host $(nproc) cores; KT_BENCH=$params (round trips, bulk MB, 16 B messages)"
framing="kerntransport keeps message boundaries itself; vsock = SOCK_STREAM (vhost-device-vsock $VSOCK_VERSION has no SEQPACKET) and virtio-serial = byte stream, both with a 4-byte length prefix per message"
echo "framing: $framing"
column -t -s '|' "$work/table.txt"
grep -q 'n/a' "$work/table.txt" && keep=1

# The files: written in $work, then moved into $out_dir together.
{
	echo "# scripts/bench-peers.sh environment (key=value)"
	echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "git_commit=$commit"
	echo "host_cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1) ($(nproc) cores)"
	echo "host_kernel=$(uname -sr)"
	echo "host_load=$load (1/5/15-min load average when the run started; other jobs share the host)"
	echo "qemu=$qemu_version, accel $accel, -cpu max, 512 MiB"
	echo "guest_kernel=$guest"
	echo "kt_bench=$params (round trips, bulk MB, 16 B messages)"
	echo "vsock_device=vhost-device-vsock $VSOCK_VERSION${KT_VSOCK_DEVICE:+ ($KT_VSOCK_DEVICE)}"
} >"$work/peers.env"
{
	echo "row,unit,kerntransport,vsock,virtio_serial,better"
	cat "$work/rows.csv"
} >"$work/peers.csv"
{
	echo "# bench-peers: latest results"
	echo
	echo "Written by \`scripts/bench-peers.sh\` ([docs/benchmarks.md](../benchmarks.md)); chart: [peers.svg](peers.svg), data: [peers.csv](peers.csv), environment: [peers.env](peers.env)."
	echo
	sed -n 's/^\([a-z_]*\)=\(.*\)/- \1: \2/p' "$work/peers.env"
	echo
	echo "| metric | kerntransport | vsock | virtio-serial | kt/vsock | kt/serial |"
	echo "|---|---|---|---|---|---|"
	tail -n +2 "$work/table.txt" | sed 's/|/ | /g; s/^/| /; s/$/ |/'
	echo
	echo "Framing: $framing. Ratios are kerntransport / peer."
} >"$work/peers.md"
"$KT_TARGET_DIR/release/kt-benchplot" "$work/peers.csv" "$work/peers.svg" --env "$work/peers.env" \
	--title "kerntransport, vsock and virtio-serial in one $accel guest (KT_BENCH=$params)" ||
	die "kt-benchplot failed"
mkdir -p "$out_dir"
for f in peers.md peers.csv peers.env peers.svg; do
	cp "$work/$f" "$out_dir/.$f.tmp" && mv -f "$out_dir/.$f.tmp" "$out_dir/$f"
done
log "results in $out_dir: peers.md peers.csv peers.env peers.svg"
log "done in $(($(date +%s) - t0)) s"
