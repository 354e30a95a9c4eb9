#!/usr/bin/env bash
# The demo `make demo` runs (through scripts/demo.sh): builds what e2e.sh
# builds (patched QEMU, release binaries, guest image; cached), starts
# kt-vhost-device with a one-service policy and a host echo service
# (`kt serve --mode echo`), boots the guest image under QEMU with workload
# "demo", and shows, labeled: a guest program talking to the host service,
# a host program talking to the guest kernel's k.echo, and the counters on
# both sides. Cleans up every process it started; exit 0 only if every
# step worked.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/artifacts.sh
. scripts/lib/artifacts.sh
export KT_CACHE=${KT_CACHE:-$HOME/.cache/kerntransport}
t0=$(date +%s)
work=$(mktemp -d /tmp/kt-demo.XXXXXX)
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
		echo "demo: logs kept in $work (serial.log, backend.log, serve.log, qemu.log)" >&2
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '%s\n' "$*"; }
head_line() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
	echo "demo: $*" >&2
	exit 1
}
# show_guest: prints the guest's new "DEMO:" serial lines, labeled. Only
# this shell prints, so guest and host output never interleave.
shown=0
show_guest() {
	local total
	total=$(wc -l <"$work/serial.log")
	if [ "$total" -gt "$shown" ]; then
		sed -n "$((shown + 1)),${total}p" "$work/serial.log" | tr -d '\r' |
			sed -n 's/^DEMO: \{0,1\}/  guest | /p'
		shown=$total
	fi
}
# wait_serial PATTERN SECONDS: shows guest lines until a serial line
# containing PATTERN has arrived.
wait_serial() {
	local n=0
	until grep -aq -- "$1" "$work/serial.log"; do
		show_guest
		grep -aq "KT-RESULT: FAIL" "$work/serial.log" &&
			die "the guest failed: $(grep -a 'KT-RESULT' "$work/serial.log")"
		kill -0 "$qemu_pid" 2>/dev/null || die "QEMU exited before '$1'"
		n=$((n + 1))
		[ "$n" -le $(($2 * 10)) ] || die "no '$1' from the guest within $2 s"
		sleep 0.1
	done
	show_guest
}

head_line "building (cached after the first run; log: $work/build.log)"
kt_build_artifacts "$work/build.log" || die "build failed"
kernel=$KT_KERNEL
initramfs=$KT_INITRAMFS
device=$KT_DEVICE_BIN
kt=$KT_TOOL_BIN
say "QEMU:      $KT_QEMU"
say "kernel:    $kernel"
say "initramfs: $initramfs"

head_line "host: service \"echo\" and kt-vhost-device"
"$kt" serve --socket "$work/echo.sock" --mode echo >"$work/serve.log" 2>&1 &
pids+=($!)
cat >"$work/policy.toml" <<TOML
# Guest programs may open exactly this host service.
[[service]]
name = "echo"
socket = "$work/echo.sock"
TOML
say "policy:    $(grep -v '^#' "$work/policy.toml" | tr '\n' ' ')"
say "host echo service: kt serve --socket $work/echo.sock --mode echo"
RUST_LOG=${RUST_LOG:-info} "$device" --socket-path "$work/vm.vhost" --policy "$work/policy.toml" \
	--listen "$work/listen.sock" --control "$work/control.sock" --guest-id 7 \
	>"$work/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
	[ -S "$work/vm.vhost" ] && [ -S "$work/echo.sock" ] && break
	sleep 0.1
done
[ -S "$work/vm.vhost" ] || die "kt-vhost-device did not start: $(cat "$work/backend.log")"
say "kt-vhost-device: vhost-user $work/vm.vhost, host programs connect to $work/listen.sock"

accel=${KT_ACCEL:-}
if [ -z "$accel" ]; then
	accel=tcg
	if [ ! -e /sys/module/kvm_pvm ] && [ -w /dev/kvm ]; then accel=kvm; fi
fi
head_line "guest: booting under QEMU ($accel) with the kerntransport device"
: >"$work/serial.log"
"$KT_QEMU" -nodefaults -no-user-config -display none -M q35 -cpu max -accel "$accel" \
	-L /usr/share/qemu -L /usr/share/seabios -nic none -no-reboot \
	-m 512M -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
	-serial "file:$work/serial.log" -kernel "$kernel" -initrd "$initramfs" \
	-append "console=ttyS0 panic=-1 no_timer_check quiet kt.workload=demo kt.timeout=120" \
	-chardev "socket,id=kt0,path=$work/vm.vhost,reconnect-ms=500" \
	-device vhost-user-device-pci,chardev=kt0,virtio-id=60,num_vqs=3,vq_size=256,config_size=16 \
	>"$work/qemu.log" 2>&1 &
qemu_pid=$!
pids+=("$qemu_pid")
wait_serial "KT: ready for host" 120
show_guest
head_line "[2] host program -> guest kernel service \"k.echo\": kt --host listen.sock connect k.echo"
msgs=("hello, guest kernel" "k.echo answers from kt_kecho.ko" "bye")
for m in "${msgs[@]}"; do say "  host  |     host sends:    $m"; done
answers=$(printf '%s\n' "${msgs[@]}" |
	timeout 60 "$kt" --host "$work/listen.sock" connect k.echo --count 3 2>&1) ||
	die "host -> k.echo: $answers"
while IFS= read -r l; do say "  host  |     k.echo answers: $l"; done <<<"$answers"
[ "$answers" = "$(printf '%s\n' "${msgs[@]}")" ] || die "k.echo's answers differ from what was sent"


head_line "[3] device counters on the host: kt-vhost-device stats"
stats=$("$device" stats --control "$work/control.sock") || die "kt-vhost-device stats failed"
sed 's/^/  host  | /' <<<"$stats"
read -r to_host to_guest < <(awk '$1 == "total" { print $2, $4 }' <<<"$stats")

wait_serial "KT-RESULT:" 60
grep -aq "KT-RESULT: PASS" "$work/serial.log" ||
	die "the guest failed: $(grep -a 'KT-RESULT' "$work/serial.log")"
for ((i = 0; i < 50; i++)); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 0.1; done
echo
say "demo: OK — guest -> host echo 3/3, host -> k.echo 3/3; kt-vhost-device carried ${to_host:-?} messages guest->host and ${to_guest:-?} host->guest; $(($(date +%s) - t0)) s"
