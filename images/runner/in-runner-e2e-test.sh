#!/bin/sh
# Runs inside the KVM runner VM (installed as kt-test-e2e), or directly on
# a host with a real /dev/kvm: the project's guest image (KT_IMAGE_DIR, with
# virtio_mmio.ko and the vmm-e2e workload) under kt-vmm, kt-vhost-device as
# its device 60 and host-side `kt` programs. It follows the workload's
# "KT-STEP:" lines and plays the host half of each step:
#   g2h      kt verify --socket: N guest messages, 0 lost, 0 corrupt
#   h2g      kt --host LISTEN gen h2g: N messages, verified in the guest
#   k.echo   three lines through the guest kernel's echo service
#   slow     the host reader is stopped (SIGSTOP) while the guest sends:
#            the guest's kt gen must block, then everything arrives
#   restart  kill -9 kt-vhost-device, start it again on the same socket:
#            kt-vmm reconnects, the guest's open channel gets ECONNRESET,
#            new channels and traffic work
# The device serves KT_E2E_PAIRS (default 2) rx/tx queue pairs and kt-vmm
# gives it their queues (SPEC §1.4); the guest's 2 vCPUs must use them all
# ("KT-STEP: pairs N").
# Exit status 0 = every check passed and the guest said KT-RESULT: PASS.
set -u
img=${KT_IMAGE_DIR:-/kt-image}
n=${KT_E2E_MESSAGES:-20000}
pairs=${KT_E2E_PAIRS:-2}
tmp=$(mktemp -d)
log=$tmp/serial.log
pids=
t0=$(cut -d' ' -f1 /proc/uptime)
now() { awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }'; }
say() { echo "kt-test-e2e [$(now)s]: $*"; }
cleanup() {
	for p in $pids $dev_pid $vmm_pid; do kill -9 "$p" 2>/dev/null; done
	for p in $pids; do kill -CONT "$p" 2>/dev/null; done
	if [ "${KT_KEEP_TMP:-0}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
dev_pid=
vmm_pid=
trap cleanup EXIT
fail() {
	say "FAIL: $*"
	echo "---- kt-vmm serial + log (last 60 lines) ----"
	tail -n 60 "$log"
	echo "---- kt-vhost-device log (last 30 lines) ----"
	tail -n 30 "$tmp/dev.log"
	exit 1
}

# alive PID: running (busybox sh reaps background jobs only in `wait`, so
# an ended one stays a zombie that kill -0 still finds).
alive() {
	[ -r "/proc/$1/stat" ] && [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" != Z ]
}

# wait_for PATTERN SECONDS: a serial line matching PATTERN (grep -E).
wait_for() {
	i=0
	while ! grep -qE "$1" "$log"; do
		grep -q '^KT-RESULT: FAIL' "$log" && fail "guest failed while waiting for '$1'"
		alive "$vmm_pid" || fail "kt-vmm exited while waiting for '$1'"
		i=$((i + 1))
		[ "$i" -le $(($2 * 10)) ] || fail "no '$1' within $2 s"
		sleep 0.1
	done
}

# wait_pid PID SECONDS: wait for a background host program; its status.
wait_pid() {
	i=0
	while alive "$1"; do
		i=$((i + 1))
		[ "$i" -le $(($2 * 10)) ] || return 124
		sleep 0.1
	done
	wait "$1"
}

start_device() {
	rm -f "$tmp/kt.sock" "$tmp/listen.sock"
	kt-vhost-device --socket-path "$tmp/kt.sock" --listen "$tmp/listen.sock" \
		--policy "$tmp/policy.toml" --queue-pairs "$pairs" --log-level info >>"$tmp/dev.log" 2>&1 &
	dev_pid=$!
	i=0
	while [ ! -S "$tmp/kt.sock" ]; do
		i=$((i + 1))
		[ "$i" -le 100 ] || fail "kt-vhost-device made no socket"
		sleep 0.1
	done
}

wait_socket() {
	i=0
	while [ ! -S "$1" ]; do
		i=$((i + 1))
		[ "$i" -le 100 ] || fail "no socket $1"
		sleep 0.1
	done
}

{
	for s in echo g2h slow after; do
		printf '[[service]]\nname = "%s"\nsocket = "%s/%s.sock"\n' "$s" "$tmp" "$s"
	done
} >"$tmp/policy.toml"
kt serve --socket "$tmp/echo.sock" --mode echo >"$tmp/echo.out" 2>&1 &
pids="$pids $!"
kt verify --socket "$tmp/g2h.sock" --count "$n" --min-size 1 --max-size 256 --seed 11 \
	>"$tmp/g2h.out" 2>&1 &
g2h_pid=$!
kt verify --socket "$tmp/slow.sock" --count 2000 --min-size 1024 --max-size 4096 --seed 13 \
	>"$tmp/slow.out" 2>&1 &
slow_pid=$!
kt verify --socket "$tmp/after.sock" --count 2000 --min-size 1 --max-size 1024 --seed 14 \
	>"$tmp/after.out" 2>&1 &
after_pid=$!
pids="$pids $g2h_pid $slow_pid $after_pid"
for s in echo g2h slow after; do wait_socket "$tmp/$s.sock"; done
# The slow reader is stopped before the guest sends anything to it.
kill -STOP "$slow_pid"
start_device
say "host services and kt-vhost-device up; booting the image under kt-vmm"

RUST_LOG=${KT_VMM_LOG:-warn} kt-vmm --kernel "$img/vmlinuz" --initrd "$img/initramfs.cpio.gz" \
	--cpus 2 --mem 512M \
	--cmdline "console=ttyS0 reboot=k panic=-1 quiet kt.workload=vmm-e2e kt.timeout=600 kt.n=$n" \
	--vhost-user "socket=$tmp/kt.sock,virtio-id=60,queues=$((1 + 2 * pairs)),queue-size=256,config-size=20" \
	>"$log" 2>&1 </dev/null &
vmm_pid=$!

wait_for '^KT-STEP: pairs ' 180
grep -q "^KT-STEP: pairs $pairs" "$log" || fail "the driver uses $(sed -n 's/^KT-STEP: pairs //p' "$log") queue pair(s), want $pairs"
say "ok: the driver uses $pairs queue pair(s)"

wait_for '^KT-STEP: g2h start' 180
say "guest reached the workload"
wait_pid "$g2h_pid" 300 || fail "host kt verify g2h: $(cat "$tmp/g2h.out")"
grep -q "^verified $n messages, 0 lost, 0 corrupt" "$tmp/g2h.out" || fail "g2h: $(cat "$tmp/g2h.out")"
say "ok: guest -> host: $(cat "$tmp/g2h.out")"

wait_for '^KT-STEP: h2g listening' 300
out=$(printf 'one\ntwo\nthree\n' | kt --host "$tmp/listen.sock" connect k.echo --count 3 --timeout 30 2>&1) ||
	fail "host -> k.echo: $out"
[ "$(echo "$out" | tr '\n' ' ')" = "one two three " ] || fail "k.echo answered '$out'"
say "ok: host <-> guest kernel k.echo: $(echo "$out" | tr '\n' ' ')"
i=0
until kt --host "$tmp/listen.sock" gen h2g --count "$n" --min-size 1 --max-size 256 --seed 12 \
	>"$tmp/h2g.out" 2>&1; do
	i=$((i + 1))
	[ "$i" -le 20 ] || fail "host kt gen h2g: $(cat "$tmp/h2g.out")"
	sleep 0.5
done
say "host: $(cat "$tmp/h2g.out")"
wait_for '^KT: h2g: verified' 300
say "ok: host -> guest: $(grep -o 'verified.*' "$log" | head -n1)"

wait_for '^KT-STEP: backpressure start' 120
sleep 5
grep -q 'KT-STEP: backpressure gen done' "$log" && fail "guest kt gen finished while the host reader was stopped"
say "ok: host reader stopped 5 s: the guest's kt gen is blocked"
kill -CONT "$slow_pid"
wait_pid "$slow_pid" 120 || fail "host kt verify slow: $(cat "$tmp/slow.out")"
grep -q "^verified 2000 messages, 0 lost, 0 corrupt" "$tmp/slow.out" || fail "slow: $(cat "$tmp/slow.out")"
say "ok: backpressure: reader resumed: $(cat "$tmp/slow.out")"

wait_for '^KT-STEP: ready for backend restart' 120
kill -9 "$dev_pid"
wait "$dev_pid" 2>/dev/null
say "killed kt-vhost-device; starting a new one on the same socket"
echo "---- restart ----" >>"$tmp/dev.log"
start_device
wait_for '^KT: held channel failed as expected' 120
say "ok: $(grep -o 'held channel failed.*' "$log" | head -n1)"
grep -q 'reconnected after' "$log" && say "kt-vmm: $(grep -o 'vhost-user backend.*reconnected.*' "$log" | head -n1)"
wait_for '^KT-STEP: done' 180
wait_pid "$after_pid" 60 || fail "host kt verify after: $(cat "$tmp/after.out")"
grep -q "^verified 2000 messages, 0 lost, 0 corrupt" "$tmp/after.out" || fail "after: $(cat "$tmp/after.out")"
say "ok: after the restart: $(cat "$tmp/after.out")"
grep -q 'sending RESET\|starts at avail index' "$tmp/dev.log" &&
	say "kt-vhost-device: $(grep -o 'queue [0-9] starts at avail index [0-9]*' "$tmp/dev.log" | head -n1)"

wait_pid "$vmm_pid" 60
rc=$?
vmm_pid=
grep -q '^KT-RESULT: PASS' "$log" || fail "guest result: $(grep '^KT-RESULT' "$log")"
[ "$rc" = 0 ] || fail "kt-vmm exited with $rc"
say "PASS (kt-vmm exited 0 after the guest powered off)"
