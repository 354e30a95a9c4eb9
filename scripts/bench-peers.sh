#!/usr/bin/env bash
# Side-by-side benchmark of kerntransport against virtio-vsock (vhost-user,
# vhost-device-vsock) and virtio-serial (QEMU built-in), in ONE guest boot
# with all three devices, under the same QEMU (TCG by default), guest kernel
# and message sizes. The guest runs workload "bench-peers" (`kt bench
# --direction both` per transport against a host bench peer, `kt serve
# --mode bench`: round trips, then each stream one direction at a time,
# with the CPU of both ends); this script starts the host peers, runs the
# host-initiated benches of the guest kernel service k.echo and of a
# user-space echo u.echo when the guest asks, collects the "BENCH <label>:"
# lines and prints one table: per row the three transports, the best peer,
# kerntransport / best peer, the target and whether it is met; a last row
# says what vsock does with 64 KiB writes (vhost-device-vsock 0.3.0
# stalls). A transport that fails shows "n/a (reason)". Rows and targets:
# docs/benchmarks.md.
# It also writes, into $KT_BENCH_OUT (default docs/bench, the committed
# latest results): peers.md (the table in markdown, with the environment),
# peers.csv (row,unit,kerntransport,vsock,virtio_serial,better), peers.env
# (the environment: date, commit, accelerator, host CPU and kernel, QEMU,
# guest kernel, sizes) and peers.svg (the chart, drawn by kt-benchplot
# from the CSV).
# Not part of `make test`: it is a benchmark, not a test.
#
# Environment: KT_CACHE, KT_ACCEL (tcg|kvm), KT_BENCH=ITER,BULK_MB,SMALL_COUNT
# (default 2000,32,50000: round trips, MB per bulk size and direction, 64 B
# messages per direction), KT_VSOCK_DEVICE (a vhost-device-vsock binary;
# default: `cargo install vhost-device-vsock@0.3.0 --locked` into the cache),
# KT_BENCH_OUT (output directory), KT_BENCH_VMM=1 (add kerntransport rows
# with the guest under kt-vmm: on this host's KVM, or inside the KVM runner
# VM; images/runner/in-runner-bench.sh). For experiments:
# KT_BENCH_PEERS (comma-separated subset of kt,vsock,serial, with kt;
# default all three), KT_DEVICE_ARGS (extra kt-vhost-device flags) and
# KT_BENCH_CMDLINE (extra guest kernel command-line words, e.g.
# kerntransport.window=1048576: the image's init passes MODULE.param=value
# words to insmod) and KT_BENCH_BATCH=N[,N...] (kerntransport's 64 B
# message-rate phases N messages per system call, `kt bench --batch N`: the
# first N for the kerntransport column, each further one adds rate and
# CPU-per-message rows and a ratio line against the first, same boot).
# Each is recorded in peers.env.
# Exit 0 if the guest ran and at least kerntransport was measured.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/artifacts.sh
. scripts/lib/artifacts.sh
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
VSOCK_VERSION=0.3.0
VSOCK_PORT=5000
GUEST_CID=3
params=${KT_BENCH:-2000,32,50000}
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
peers=${KT_BENCH_PEERS:-kt,vsock,serial}
case ",$peers," in *,kt,*) ;; *) die "KT_BENCH_PEERS=$peers: must include kt" ;; esac
for p in ${peers//,/ }; do
	case "$p" in kt | vsock | serial) ;; *) die "KT_BENCH_PEERS=$peers: '$p' is not kt, vsock or serial" ;; esac
done
want_peer() { case ",$peers," in *",$1,"*) return 0 ;; esac; return 1; }
read -r -a device_args <<<"${KT_DEVICE_ARGS:-}"
extra_cmdline=${KT_BENCH_CMDLINE:-}
batches=${KT_BENCH_BATCH:-}
if [ -n "$batches" ]; then
	case "$batches" in *[!0-9,]* | ,* | *, | *,,*) die "KT_BENCH_BATCH=$batches: expected N[,N...]" ;; esac
	for b in ${batches//,/ }; do
		[ "$b" -ge 1 ] && [ "$b" -le 64 ] || die "KT_BENCH_BATCH=$batches: each N must be 1..64"
	done
fi
extra_batches=
[[ "$batches" != *,* ]] || extra_batches=${batches#*,}
case "$extra_cmdline" in *[!A-Za-z0-9_.,=\ -]*) die "KT_BENCH_CMDLINE='$extra_cmdline': only words of letters, digits and _.,=- are allowed" ;; esac

log "building (cached after the first run; log: $work/build.log)"
kt_build_artifacts "$work/build.log" || die "build failed"
kernel=$KT_KERNEL
initramfs=$KT_INITRAMFS
device=$KT_DEVICE_BIN
kt=$KT_TOOL_BIN

# vhost-device-vsock: a published crate, installed once into the cache.
vsock_dev=${KT_VSOCK_DEVICE:-$KT_CACHE/peers/vhost-device-vsock-$VSOCK_VERSION/bin/vhost-device-vsock}
vsock_na=
want_peer vsock || vsock_na="not measured"
if [ -z "$vsock_na" ] && [ ! -x "$vsock_dev" ] && [ -z "${KT_VSOCK_DEVICE:-}" ]; then
	log "installing vhost-device-vsock $VSOCK_VERSION (once; log: $work/vsock-install.log)"
	nice cargo install vhost-device-vsock --version "$VSOCK_VERSION" --locked \
		--root "$KT_CACHE/peers/vhost-device-vsock-$VSOCK_VERSION" >"$work/vsock-install.log" 2>&1 ||
		vsock_na="cargo install vhost-device-vsock failed: $(tail -n1 "$work/vsock-install.log")"
fi
[ -n "$vsock_na" ] || [ -x "$vsock_dev" ] || vsock_na="no vhost-device-vsock binary at $vsock_dev"

# Host peers: one bench peer per transport (`kt serve --mode bench`: echoes
# round trips, sinks guest->host streams, sources host->guest streams and
# reports the CPU time of itself and of the processes in its --cpu-pids
# file: QEMU and the transport's backend, written once QEMU runs).
cat >"$work/policy.toml" <<TOML
[[service]]
name = "bench"
socket = "$work/bench.sock"
TOML
"$device" --socket-path "$work/kt.vhost" --policy "$work/policy.toml" --guest-id 7 \
	--listen "$work/kt.listen" "${device_args[@]}" >"$work/kt-device.log" 2>&1 &
pids+=($!)
kt_device_pid=$!
"$kt" serve --socket "$work/bench.sock" --mode bench --cpu-pids "$work/cpu-kt.pids" \
	>"$work/serve-kt.log" 2>&1 &
pids+=($!)
# vhost-device-vsock connects a guest's connection to port P to <uds>_P.
"$kt" serve --framed --socket "$work/vsock.uds_$VSOCK_PORT" --mode bench \
	--cpu-pids "$work/cpu-vsock.pids" >"$work/serve-vsock.log" 2>&1 &
pids+=($!)
vsock_dev_pid=
if [ -z "$vsock_na" ]; then
	"$vsock_dev" --guest-cid "$GUEST_CID" --socket "$work/vsock.vhost" --uds-path "$work/vsock.uds" \
		>"$work/vsock-device.log" 2>&1 &
	pids+=($!)
	vsock_dev_pid=$!
fi
# QEMU connects to this one as a client when it starts.
"$kt" serve --framed --socket "$work/serial.sock" --mode bench --cpu-pids "$work/cpu-serial.pids" \
	>"$work/serve-serial.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	[ -S "$work/kt.vhost" ] && [ -S "$work/bench.sock" ] && [ -S "$work/serial.sock" ] &&
		[ -S "$work/vsock.uds_$VSOCK_PORT" ] && { [ -n "$vsock_na" ] || [ -S "$work/vsock.vhost" ]; } && break
	sleep 0.1
done
[ -S "$work/kt.vhost" ] || die "kt-vhost-device did not start: $(cat "$work/kt-device.log")"
[ -S "$work/serial.sock" ] || die "the serial bench peer did not start: $(cat "$work/serve-serial.log")"
if [ -z "$vsock_na" ] && [ ! -S "$work/vsock.vhost" ]; then
	vsock_na="vhost-device-vsock did not start: $(tail -n1 "$work/vsock-device.log")"
fi

accel=${KT_ACCEL:-}
if [ -z "$accel" ]; then
	accel=tcg
	if [ ! -e /sys/module/kvm_pvm ] && [ -w /dev/kvm ]; then accel=kvm; fi
fi
vsock_args=()
# shellcheck disable=SC2054 # commas inside QEMU option values
[ -n "$vsock_na" ] || vsock_args=(-chardev "socket,id=vs0,path=$work/vsock.vhost"
	-device vhost-user-vsock-pci,chardev=vs0)
# shellcheck disable=SC2054 # commas inside QEMU option values
qemu_cmd=("$KT_QEMU" -nodefaults -no-user-config -display none -M q35 -cpu max -accel "$accel"
	-L /usr/share/qemu -L /usr/share/seabios -nic none -no-reboot
	-m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
	-serial "file:$work/serial.log" -kernel "$kernel" -initrd "$initramfs"
	-append "console=ttyS0 panic=-1 no_timer_check quiet kt.workload=bench-peers kt.bench=$params kt.peers=$peers kt.timeout=3300${batches:+ kt.batch=$batches}${extra_cmdline:+ $extra_cmdline}"
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
# Host CPU of each transport: QEMU, its backend (none for virtio-serial: QEMU
# is the device) and the bench peer itself.
echo "$qemu_pid $kt_device_pid" >"$work/cpu-kt.pids"
echo "$qemu_pid $vsock_dev_pid" >"$work/cpu-vsock.pids"
echo "$qemu_pid" >"$work/cpu-serial.pids"
iter=${params%%,*}
bulk_mb=${params#*,}
bulk_mb=${bulk_mb%%,*}
small=${params##*,}
# host_bench LABEL SERVICE: `kt --host` bench of a guest service (echo
# streams), output appended to bench.txt as "LABEL: ..." lines.
host_bench() {
	local out
	log "host bench of guest service $2"
	if out=$(timeout 1800 "$kt" --host "$work/kt.listen" bench "$2" --iterations "$iter" --size 64 \
		--bulk-size 65536 --bulk-mb "$bulk_mb" --small-size 64 --small-count "$small" --timeout 120 \
		2>"$work/host-bench-$1.err"); then
		printf '%s\n' "$out" | sed "s/^/$1: /" >>"$work/host-bench.txt"
	else
		echo "$1: n/a $(tail -n1 "$work/host-bench-$1.err")" >>"$work/host-bench.txt"
	fi
}
: >"$work/host-bench.txt"
host_done=0
n=0
until grep -aq "KT-RESULT:" "$work/serial.log"; do
	kill -0 "$qemu_pid" 2>/dev/null || die "QEMU exited without a result: $(tail -n3 "$work/qemu.log")"
	if [ "$host_done" = 0 ] && grep -aq "KT: bench-peers: host benches ready" "$work/serial.log"; then
		host_done=1
		host_bench kecho k.echo
		host_bench uecho u.echo
	fi
	n=$((n + 1))
	[ "$n" -le 36000 ] || die "no result from the guest within 60 min"
	sleep 0.1
done
grep -aq "KT-RESULT: PASS" "$work/serial.log" ||
	die "the guest failed: $(grep -a 'KT-RESULT' "$work/serial.log" | tr -d '\r')"
tr -d '\r' <"$work/serial.log" | sed -n 's/^BENCH //p' >"$work/bench.txt"
cat "$work/host-bench.txt" >>"$work/bench.txt"

# KT_BENCH_VMM=1: kerntransport once more with the guest under kt-vmm
# (images/runner/in-runner-bench.sh: same workload, kerntransport only, and
# the host benches of k.echo / u.echo), on this host's KVM if it boots
# Linux at speed, else inside the KVM runner VM (QEMU TCG, nested KVM).
# Its lines join bench.txt as "vmm:", "vmmkecho:", "vmmuecho:".
vmm_where=
if [ "${KT_BENCH_VMM:-0}" = 1 ]; then
	vmm_rc=0
	if [ -w /dev/kvm ] && [ ! -e /sys/module/kvm_pvm ]; then
		vmm_where="kt-vmm on this host's KVM"
		log "kt-vmm rows: $vmm_where"
		PATH=$KT_TARGET_DIR/release:$PATH KT_IMAGE_DIR=$(dirname "$kernel") \
			sh images/runner/in-runner-bench.sh "$params" >"$work/vmm.out" 2>&1 || vmm_rc=$?
	else
		vmm_where="kt-vmm on KVM inside the runner VM (QEMU TCG, nested KVM)"
		log "kt-vmm rows: $vmm_where (runner serial log $work/runner.log)"
		KT_IMAGE_KERNEL=$kernel KT_IMAGE_INITRD=$initramfs KT_RUNNER_BINS="$device $kt" \
			images/runner/run.sh --timeout 1800 --log "$work/runner.log" -- kt-bench-vmm "$params" \
			>"$work/vmm.out" 2>&1 || vmm_rc=$?
	fi
	tr -d '\r' <"$work/vmm.out" |
		sed -n 's/^BENCH kt: /vmm: /p; s/^BENCH kecho: /vmmkecho: /p; s/^BENCH uecho: /vmmuecho: /p' >>"$work/bench.txt"
	if [ "$vmm_rc" != 0 ]; then
		why=$(tr -d '\r' <"$work/vmm.out" | grep -E 'kt-bench-vmm: FAILED|run.sh:' | head -n1)
		echo "vmm: n/a ${why:-exit status $vmm_rc}" >>"$work/bench.txt"
		keep=1
	fi
	vmm_info=$(tr -d '\r' <"$work/vmm.out" | sed -n 's/^KT-VMM-BENCH: \(kt-vmm .*\)/\1/p' | head -n1)
	[ -z "$vmm_info" ] || vmm_where="$vmm_where; $vmm_info"
fi

# value TRANSPORT METRIC-PREFIX: the number (and unit) of one row, else
# "n/a (reason)".
value() {
	local t=$1 m=$2 na
	na=$(sed -n "s/^$t: n\/a //p" "$work/bench.txt" | head -n1)
	if [ -n "$na" ]; then
		echo "n/a ($na)"
		return
	fi
	sed -n "s/^${t}: ${m}[^)]*) *//p" "$work/bench.txt" | head -n1 | grep . || echo "n/a (no result)"
}
[ -z "$vsock_na" ] || echo "vsock: n/a $vsock_na" >>"$work/bench.txt"
[ -z "$vsock_na" ] || echo "vsock64k: n/a $vsock_na" >>"$work/bench.txt"
want_peer serial || echo "serial: n/a not measured" >>"$work/bench.txt"
num() { case "$1" in n/a* | -) echo "" ;; *) echo "${1%% *}" ;; esac; }
# compare KT BEST BETTER TARGET: "RATIO|MET" (kt / best and whether the
# target is met), "-|-" when a side is missing.
compare() {
	local k b
	k=$(num "$1") b=$(num "$2")
	if [ -z "$k" ] || [ -z "$b" ]; then
		echo "-|-"
		return
	fi
	awk -v k="$k" -v b="$b" -v better="$3" -v t="$4" 'BEGIN {
		if (b <= 0) { if (better == "lower") { r = (k <= 0) ? 0 : -1 } else { r = -1 } }
		else r = k / b
		if (r < 0) { print "-|-"; exit }
		met = (better == "lower") ? (r <= t + 1e-9) : (r >= t - 1e-9)
		printf "%.2fx|%s\n", r, met ? "yes" : "NO"
	}'
}
# best V S BETTER: the better of two peer cells, labeled.
best() {
	local v s
	v=$(num "$1") s=$(num "$2")
	if [ -z "$v" ] && [ -z "$s" ]; then echo "-"; return; fi
	if [ -z "$s" ]; then echo "$1 (vsock)"; return; fi
	if [ -z "$v" ]; then echo "$2 (serial)"; return; fi
	if awk -v v="$v" -v s="$s" -v b="$3" 'BEGIN { exit !((b == "lower") ? (v <= s) : (v >= s)) }'; then
		echo "$1 (vsock)"
	else
		echo "$2 (serial)"
	fi
}
csv_cell() { case "$1" in n/a* | -) echo "n/a" ;; *) echo "${1%% *}" ;; esac; }
# The rows: label | CSV name | unit | better | target ratio | kt bench metric.
rows=(
	"round trip, 64 B, p50|round trip p50, 64 B|us|lower|0.7|ping-pong latency p50 (64 B"
	"round trip, 64 B, p99|round trip p99, 64 B|us|lower|1.0|ping-pong latency p99 (64 B"
	"message rate, 64 B, guest->host|message rate, 64 B, guest to host|msgs/s|higher|2|message rate, to host (64 B"
	"message rate, 64 B, host->guest|message rate, 64 B, host to guest|msgs/s|higher|2|message rate, from host (64 B"
	"throughput, 64 KiB msgs, guest->host|throughput, 64 KiB msgs, guest to host|MB/s|higher|1.5|throughput, to host (65536 B"
	"throughput, 64 KiB msgs, host->guest|throughput, 64 KiB msgs, host to guest|MB/s|higher|1.5|throughput, from host (65536 B"
	"throughput, 4 KiB msgs, guest->host|throughput, 4 KiB msgs, guest to host|MB/s|higher|1.5|throughput, to host (4096 B"
	"throughput, 4 KiB msgs, host->guest|throughput, 4 KiB msgs, host to guest|MB/s|higher|1.5|throughput, from host (4096 B"
	"guest CPU per msg, 64 B, guest->host|guest CPU per message, 64 B, guest to host|us|lower|1.0|guest CPU per message, to host (64 B"
	"host CPU per msg, 64 B, guest->host|host CPU per message, 64 B, guest to host|us|lower|1.0|host CPU per message, to host (64 B"
	"guest CPU per msg, 64 B, host->guest|guest CPU per message, 64 B, host to guest|us|lower|1.0|guest CPU per message, from host (64 B"
	"host CPU per msg, 64 B, host->guest|host CPU per message, 64 B, host to guest|us|lower|1.0|host CPU per message, from host (64 B"
	"guest CPU per MB, 64 KiB, guest->host|guest CPU per MB, 64 KiB msgs, guest to host|ms|lower|1.0|guest CPU per MB, to host (65536 B"
	"host CPU per MB, 64 KiB, guest->host|host CPU per MB, 64 KiB msgs, guest to host|ms|lower|1.0|host CPU per MB, to host (65536 B"
	"guest CPU per MB, 64 KiB, host->guest|guest CPU per MB, 64 KiB msgs, host to guest|ms|lower|1.0|guest CPU per MB, from host (65536 B"
	"host CPU per MB, 64 KiB, host->guest|host CPU per MB, 64 KiB msgs, host to guest|ms|lower|1.0|host CPU per MB, from host (65536 B"
)
# Guest kernel service rows: the host's `kt --host bench` of k.echo
# (kt_kecho.ko) against the same bench of u.echo (guest user space).
krows=(
	"k.echo round trip, 64 B, p50|k.echo round trip p50, 64 B|us|lower|1.0|ping-pong latency p50 (64 B"
	"k.echo round trip, 64 B, p99|k.echo round trip p99, 64 B|us|lower|1.0|ping-pong latency p99 (64 B"
	"k.echo echo rate, 64 B|k.echo echoed message rate, 64 B|msgs/s|higher|1.0|message rate (64 B"
	"k.echo echo throughput, 64 KiB msgs|k.echo echoed throughput, 64 KiB msgs|MB/s|higher|1.0|throughput, one way (65536 B"
)
fmt_target() { if [ "$1" = lower ]; then echo "<= ${2}x"; else echo ">= ${2}x"; fi; }
{
	printf 'row|kerntransport|vsock|virtio-serial|best peer|kt/best|target|met\n'
	for r in "${rows[@]}"; do
		IFS='|' read -r label csv unit better target metric <<<"$r"
		k=$(value kt "$metric")
		v=$(value vsock "$metric")
		s=$(value serial "$metric")
		bp=$(best "$v" "$s" "$better")
		printf '%s|%s|%s|%s|%s|%s|%s\n' "$label" "$k" "$v" "$s" "$bp" \
			"$(compare "$k" "$bp" "$better" "$target")" "$(fmt_target "$better" "$target")" \
			| awk -F'|' -v OFS='|' '{ print $1, $2, $3, $4, $5, $6, $8, $7 }'
		printf '"%s",%s,%s,%s,%s,%s\n' "$csv" "$unit" \
			"$(csv_cell "$k")" "$(csv_cell "$v")" "$(csv_cell "$s")" "$better" >>"$work/rows.csv"
	done
	# KT_BENCH_BATCH=A,B,...: the 64 B rate and CPU-per-message rows of
	# kerntransport again for each further batch size (same boot, same peers).
	for b in ${extra_batches//,/ }; do
		for r in "${rows[@]}"; do
			IFS='|' read -r label csv unit better target metric <<<"$r"
			case "$label" in "message rate, 64 B, "* | *"CPU per msg, 64 B, "*) ;; *) continue ;; esac
			k=$(value "ktb$b" "$metric")
			v=$(value vsock "$metric")
			s=$(value serial "$metric")
			bp=$(best "$v" "$s" "$better")
			printf '%s, --batch %s|%s|%s|%s|%s|%s|%s\n' "$label" "$b" "$k" "$v" "$s" "$bp" \
				"$(compare "$k" "$bp" "$better" "$target")" "$(fmt_target "$better" "$target")" \
				| awk -F'|' -v OFS='|' '{ print $1, $2, $3, $4, $5, $6, $8, $7 }'
			printf '"%s, batch %s",%s,%s,%s,%s,%s\n' "$csv" "$b" "$unit" \
				"$(csv_cell "$k")" "$(csv_cell "$v")" "$(csv_cell "$s")" "$better" >>"$work/rows.csv"
		done
	done
	for r in "${krows[@]}"; do
		IFS='|' read -r label csv unit better target metric <<<"$r"
		k=$(value kecho "$metric")
		u=$(value uecho "$metric")
		c=$(compare "$k" "$u" "$better" "$target")
		printf '%s|%s|-|-|%s (user-space u.echo)|%s|%s|%s\n' "$label" "$k" "$u" "${c%|*}" \
			"$(fmt_target "$better" "$target")" "${c#*|}"
		printf '"%s",%s,%s,n/a,n/a,%s\n' "$csv" "$unit" "$(csv_cell "$k")" "$better" >>"$work/rows.csv"
		printf '"%s",%s,%s,n/a,n/a,%s\n' "${csv/k.echo/u.echo (user space)}" "$unit" "$(csv_cell "$u")" "$better" >>"$work/rows.csv"
	done
	if [ -n "$vmm_where" ]; then
		# kt-vmm: kerntransport only (no vsock or serial device there), so
		# absolute figures, no peer; k.echo against u.echo as above.
		for r in "${rows[@]}"; do
			IFS='|' read -r label csv unit better target metric <<<"$r"
			k=$(value vmm "$metric")
			printf 'kt-vmm: %s|%s|-|-|-|-|-|-\n' "$label" "$k"
			printf '"kt-vmm: %s",%s,%s,n/a,n/a,%s\n' "$csv" "$unit" "$(csv_cell "$k")" "$better" >>"$work/rows.csv"
		done
		for r in "${krows[@]}"; do
			IFS='|' read -r label csv unit better target metric <<<"$r"
			k=$(value vmmkecho "$metric")
			u=$(value vmmuecho "$metric")
			c=$(compare "$k" "$u" "$better" "$target")
			printf 'kt-vmm: %s|%s|-|-|%s (user-space u.echo)|%s|%s|%s\n' "$label" "$k" "$u" "${c%|*}" \
				"$(fmt_target "$better" "$target")" "${c#*|}"
			printf '"kt-vmm: %s",%s,%s,n/a,n/a,%s\n' "$csv" "$unit" "$(csv_cell "$k")" "$better" >>"$work/rows.csv"
		done
	fi
	# vsock with 64 KiB writes (no --write-chunk): vhost-device-vsock 0.3.0
	# stalls on them; whatever happened is shown, never hidden.
	v64=$(sed -n 's/^vsock64k: .*\(stalled after .*\)/\1/p' "$work/bench.txt" | head -n1)
	[ -n "$v64" ] || v64=$(value vsock64k "throughput, to host (65536 B")
	# The cell: "stalled after N s, K/M msgs"; the whole line goes below.
	v64_cell=$(printf '%s\n' "$v64" |
		sed 's/^\(stalled after [0-9.]* s\): .*: \([0-9]*\) of \([0-9]*\) messages.*/\1, \2\/\3 msgs/')
	printf 'vsock (64 KiB writes), 64 KiB guest->host|-|%s|-|-|-|-|-\n' "$v64_cell"
} >"$work/table.txt"
qemu_version=$("$KT_QEMU" --version | head -n1)
guest=$(sed -n 's/^KT: image \([^ ]*\) kernel \(.*\)/\2 (image \1)/p' "$(dirname "$initramfs")/contents.txt")
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit (with uncommitted changes)"
host_cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1) ($(nproc) cores)"
echo "bench-peers: one $accel guest boot; KT_BENCH=$params (round trips, bulk MB per size and direction, 64 B messages per direction)"
echo "environment: accel $accel; host CPU $host_cpu; host kernel $(uname -sr); guest kernel $guest; $qemu_version (-cpu max, 512 MiB, 1 vCPU); host load $load"
framing="kerntransport keeps message boundaries itself; vsock = SOCK_STREAM (vhost-device-vsock $VSOCK_VERSION has no SEQPACKET) and virtio-serial = byte stream, both with a 4-byte length prefix per message; vsock guest writes at most 16 KiB"
echo "framing: $framing"
[ -z "$vmm_where" ] || echo "kt-vmm rows: $vmm_where"
[ -z "$batches" ] || echo "kt batch: kerntransport column with --batch ${batches%%,*} (64 B message-rate phases; N > 1 = N messages per KT_IOC_SENDV/RECVV)${extra_batches:+; rows marked --batch N: the same phases with N, same boot}"
echo "ratios: kerntransport / best peer (k.echo rows: k.echo / user-space u.echo); host CPU = QEMU + backend + bench peer"
column -t -s '|' "$work/table.txt"
echo "vsock with 64 KiB writes (no --write-chunk, 20 s stall limit): $v64"
# batch_ratios: per 64 B row, each further batch size against the first.
: >"$work/batch.txt"
if [ -n "$extra_batches" ]; then
	first_batch=${batches%%,*}
	for r in "${rows[@]}"; do
		IFS='|' read -r label csv unit better target metric <<<"$r"
		case "$label" in "message rate, 64 B, "* | *"CPU per msg, 64 B, "*) ;; *) continue ;; esac
		base=$(value kt "$metric")
		line="kerntransport $label: --batch $first_batch $base"
		for b in ${extra_batches//,/ }; do
			k=$(value "ktb$b" "$metric")
			c=$(compare "$k" "$base" "$better" 1)
			line="$line; --batch $b $k (${c%|*})"
		done
		echo "$line" >>"$work/batch.txt"
	done
	echo "batch ratios (against --batch $first_batch, same boot):"
	sed 's/^/  /' "$work/batch.txt"
fi
grep -q 'n/a' "$work/table.txt" && keep=1

# The files: written in $work, then moved into $out_dir together.
{
	echo "# scripts/bench-peers.sh environment (key=value)"
	echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "git_commit=$commit"
	echo "accel=$accel"
	echo "host_cpu=$host_cpu"
	echo "host_kernel=$(uname -sr)"
	echo "host_load=$load (1/5/15-min load average when the run started; other jobs share the host)"
	echo "qemu=$qemu_version, accel $accel, -cpu max, 512 MiB"
	echo "guest_kernel=$guest"
	echo "kt_bench=$params (round trips, bulk MB per size and direction, 64 B messages per direction)"
	echo "vsock_device=vhost-device-vsock $VSOCK_VERSION${KT_VSOCK_DEVICE:+ ($KT_VSOCK_DEVICE)}"
	echo "vsock_64k_writes=$v64"
	[ "$peers" = kt,vsock,serial ] || echo "peers=$peers"
	[ -z "${KT_DEVICE_ARGS:-}" ] || echo "device_args=$KT_DEVICE_ARGS"
	[ -z "$extra_cmdline" ] || echo "guest_cmdline_extra=$extra_cmdline"
	[ -z "$batches" ] || echo "kt_batch=$batches (kerntransport 64 B message-rate phases: messages per KT_IOC_SENDV/RECVV; the first for the kerntransport column)"
	[ -z "$vmm_where" ] || echo "kt_vmm=$vmm_where"
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
	echo "| row | kerntransport | vsock | virtio-serial | best peer | kt/best | target | met |"
	echo "|---|---|---|---|---|---|---|---|"
	tail -n +2 "$work/table.txt" | sed 's/|/ | /g; s/^/| /; s/$/ |/'
	echo
	echo "vsock with 64 KiB writes (no \`--write-chunk\`, 20 s stall limit): $v64."
	if [ -s "$work/batch.txt" ]; then
		echo
		echo "Batch ratios (against \`--batch ${batches%%,*}\`, same boot):"
		echo
		sed 's/^/- /' "$work/batch.txt"
	fi
	echo
	echo "Framing: $framing. Ratios are kerntransport / best peer (k.echo rows: the guest kernel service k.echo / the same host bench against a user-space echo u.echo in the guest). Host CPU = QEMU + the transport's backend + the host bench peer (under TCG QEMU's share includes emulating the guest CPU)."
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
