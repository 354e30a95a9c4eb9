#!/bin/sh
# The body of scripts/demo-vmm.sh, run inside the KVM runner VM (installed
# as kt-demo-vmm) or directly on a host with a real /dev/kvm: a host echo
# service (`kt serve`), kt-vhost-device, and the project image under kt-vmm
# with workload vmm-demo. Shows, labeled "guest |" and "host  |": a guest
# program exchanging messages with the host service, a host program
# exchanging messages with the guest kernel's k.echo, and the counters on
# both sides. Exit 0 only if every step worked; kills what it started.
set -u
img=${KT_IMAGE_DIR:-/kt-image}
tmp=$(mktemp -d)
log=$tmp/serial.log
dev_pid=
echo_pid=
vmm_pid=
cleanup() {
	for p in $vmm_pid $dev_pid $echo_pid; do kill "$p" 2>/dev/null; done
	rm -rf "$tmp"
}
trap cleanup EXIT
head_line() { printf '\n== %s\n' "$*"; }
die() {
	echo "demo: FAILED: $*"
	echo "demo: last kt-vmm output:"
	tail -n 30 "$log" | sed 's/^/demo:   /'
	exit 1
}
alive() { [ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]; }
shown=0
show_guest() {
	total=$(wc -l <"$log")
	if [ "$total" -gt "$shown" ]; then
		sed -n "$((shown + 1)),${total}p" "$log" | tr -d '\r' | sed -n 's/^DEMO: \{0,1\}/  guest | /p'
		shown=$total
	fi
}
wait_serial() {
	i=0
	until grep -q -- "$1" "$log"; do
		show_guest
		grep -q "KT-RESULT: FAIL" "$log" && die "the guest failed: $(grep 'KT-RESULT' "$log")"
		alive "$vmm_pid" || die "kt-vmm exited before '$1'"
		i=$((i + 1))
		[ "$i" -le $(($2 * 10)) ] || die "no '$1' from the guest within $2 s"
		sleep 0.1
	done
	show_guest
}

head_line "host: service \"echo\" and kt-vhost-device"
printf '[[service]]\nname = "echo"\nsocket = "%s/echo.sock"\n' "$tmp" >"$tmp/policy.toml"
kt serve --socket "$tmp/echo.sock" --mode echo >"$tmp/serve.log" 2>&1 &
echo_pid=$!
kt-vhost-device --socket-path "$tmp/vm.vhost" --policy "$tmp/policy.toml" \
	--listen "$tmp/listen.sock" --control "$tmp/control.sock" --guest-id 7 \
	--log-level warn >"$tmp/device.log" 2>&1 &
dev_pid=$!
i=0
until [ -S "$tmp/vm.vhost" ] && [ -S "$tmp/echo.sock" ]; do
	i=$((i + 1))
	[ "$i" -le 100 ] || die "kt-vhost-device did not start: $(cat "$tmp/device.log")"
	sleep 0.1
done
echo "  host  | policy: guest programs may open \"echo\" = kt serve --socket $tmp/echo.sock --mode echo"
echo "  host  | kt-vhost-device: vhost-user socket $tmp/vm.vhost, host programs connect at $tmp/listen.sock"

head_line "guest: the project image under kt-vmm (2 vCPUs, 512 MiB, device 60 on virtio-mmio)"
: >"$log"
t0=$(cut -d' ' -f1 /proc/uptime)
kt-vmm --kernel "$img/vmlinuz" --initrd "$img/initramfs.cpio.gz" --cpus 2 --mem 512M \
	--cmdline "console=ttyS0 reboot=k panic=-1 quiet kt.workload=vmm-demo kt.timeout=120" \
	--vhost-user "socket=$tmp/vm.vhost,virtio-id=60,queues=3,queue-size=256,config-size=16" \
	>"$log" 2>&1 </dev/null &
vmm_pid=$!
wait_serial "KT: ready for host" 120

head_line "[2] host program -> guest kernel service \"k.echo\": kt --host listen.sock connect k.echo"
set -- "hello, guest kernel" "k.echo answers from kt_kecho.ko" "bye"
for m in "$@"; do echo "  host  |     host sends:     $m"; done
answers=$(printf '%s\n' "$@" | kt --host "$tmp/listen.sock" connect k.echo --count 3 --timeout 30 2>&1) ||
	die "host -> k.echo: $answers"
echo "$answers" | while IFS= read -r l; do echo "  host  |     k.echo answers: $l"; done
[ "$answers" = "$(printf '%s\n' "$@")" ] || die "k.echo's answers differ from what was sent"

head_line "[3] counters: guest driver (sysfs), then kt-vhost-device stats on the host"
wait_serial "KT-RESULT:" 60
grep -q "KT-RESULT: PASS" "$log" || die "the guest failed: $(grep 'KT-RESULT' "$log")"
kt-vhost-device stats --control "$tmp/control.sock" | sed 's/^/  host  | /'
i=0
while alive "$vmm_pid" && [ "$i" -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
wait "$vmm_pid"
rc=$?
vmm_pid=
[ "$rc" = 0 ] || die "kt-vmm exited with $rc"
secs=$(awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }')
echo
echo "demo: OK: guest program <-> host service and host program <-> guest kernel service under kt-vmm; guest powered off after ${secs}s"
