#!/usr/bin/env bash
# Guest driver conformance tests under QEMU TCG (about two minutes).
#
# Boots Debian's 6.12 cloud kernel with a busybox initramfs holding
# kerntransport.ko, kt_kecho.ko, kt_api_test.ko and kt_guest_test:
#   nodev   stock QEMU, no device: load/unload/reload, the char device alone
#   dev     fake_device.py behind the patched QEMU's vhost-user-device-pci:
#           every user-space path, malformed input, illegal channel
#           transitions (counted exactly), reset, the kernel API,
#           unbind/rebind with channels open, module pinning, reload;
#           once with EVENT_IDX + INDIRECT_DESC and 4 KiB rx buffers, once
#           with neither and 256-byte rx buffers (heavy fragmentation)
#   reset   preemptible (the stock kernel with preempt=full; the debug
#           kernel is built so): a real-time reader woken
#           by the driver's walk over the channels a RESET ends preempts
#           the walk, connects a new channel and waits for its echo while
#           40 older channels are still to be ended; the new channel must
#           live (before the fix it was reset with them)
#   huge    max_msg_size 1 MiB
#   notify  fake_device.py with KT_LISTEN_NOTIFY=1: listeners announced
#           (LISTEN/UNLISTEN), again after a RESET and after unbind/bind
#   refill  debug kernel only (fail_function; the stock pass prints a
#           skip line): with the driver's rx buffer allocation failing, the
#           device uses every posted rx buffer for an echo the reader
#           holds, so the ring drains to 0 posted (sysfs rx_posted); once
#           the injection is cleared only the driver's rx_retry can post
#           buffers (no buffer is used, no interrupt comes): every held and
#           waiting echo, a new round trip and the ring's target again
#           within 5 s. Loads the driver with window=2097152 (the ring's
#           256 buffers held whole)
#   hostile fake_device.py with KT_HOSTILE=1: ring-level lies (used length
#           past the buffer, a repeated used id, the used index jumping) and
#           floods (CREDIT_*, OPEN to a listener, RESET, config interrupts)
#           while a good channel echoes verified data; counters, memory,
#           rmmod; like dev, also with neither ring feature and 256-byte rx
#           buffers (the good channel's messages in fragments)
#   mq      queue pairs (SPEC 1.4), -smp 2 (or the debug pass's count):
#           fake_device.py with KT_MQ=2 and 5 queues: the driver uses 2
#           pairs, channels opened on CPU 0 and CPU 1 live on pair 0 and
#           pair 1 with all their traffic (the device checks every
#           message's pair), a host-opened channel on pair 1 is answered
#           there, channel messages on the wrong pair are dropped and
#           counted (wrong_pair) without touching the channel, a RESET
#           ends both pairs' channels after delivering earlier data;
#           mq-fallback: the same device behind a QEMU with 3 queues (the
#           driver falls back to one pair); mq-nobit: 5 queues but no
#           KT_F_MULTIQUEUE (one pair); mq also breaks the rx and the tx
#           ring of pair 1, then of pair 0 (the device is reset, two pairs
#           again) and reloads with max_pairs=1
#   flood   no fake_device.py: vhost-user-fill (vmm/examples, built here
#           with cargo) hands back every buffer the moment it is posted,
#           filled with 0x5a, on all 3 queues (256-byte rx buffers, 256 of
#           them posted): the guest stays usable, malformed counts grow,
#           and unbind, bind and rmmod each finish within 30 s (fd3982f:
#           queues broken before teardown; the driver before it fails,
#           its remove waiting for ever on an rx drain that never runs
#           dry). QEMU and the device share one host CPU, the device
#           under SCHED_FIFO (flood_pin below), so it never falls behind
# A guest whose QEMU aborts on an assertion before the guest's init ran
# (seen once: TCG, -smp 4, in SeaBIOS) is run once more, with a RETRY
# line; a second abort fails it.
# Fails on any "FAIL:" or "N failures" (N > 0) line, a kernel splat (BUG,
# WARNING, Oops, KASAN, KFENCE, lockdep: printed), a protocol violation seen
# by fake_device.py, or a guest that did not finish (a guest whose remove is
# stuck reboots at once instead of powering off, which would wait for it).
#
# --debug-kernel (or KT_DEBUG_KERNEL=1): the same scenarios, plus refill,
# on the debug kernel images/debug-kernel/build.sh builds (KASAN, KFENCE,
# lockdep, DEBUG_ATOMIC_SLEEP, DEBUG_OBJECTS_WORK, DMA_API_DEBUG;
# fail_function), the modules built
# against its tree, each scenario with -smp 2 and then -smp 4 (KT_DEBUG_SMP,
# default "2 4"; KT_DEBUG_SMP4_SCENARIOS limits the -smp 4 runs, e.g. "dev").
# The guest prints its whole dmesg at the end, so warnings the quiet
# console hides are checked too.
#
# Needs the patched QEMU (images/ builds it into $KT_CACHE/qemu-*/); set
# QEMU_KT to use another one; KT_TEST_LOGS=<dir> keeps every serial and device
# log there; KT_TEST_ONLY="<name>..." runs only those guests (names as
# printed, e.g. dev-smp4); KT_FILL_BACKEND names a vhost-user-fill binary
# to use instead of building it; KT_TEST_TIMEOUT sets each guest's limit in
# seconds (300, or 600 with --debug-kernel). Not run by check.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
drv=$(dirname "$here")
repo=$(dirname "$drv")
cache=${KT_CACHE:-$HOME/.cache/kerntransport}
# shellcheck source=scripts/lib/kernels.sh
. "$repo/scripts/lib/kernels.sh"
kver=$(kt_require_kernel_612 run.sh) || exit 1
[ "${1:-}" != "--print-kernel" ] || { echo "$kver"; exit 0; }
debug=${KT_DEBUG_KERNEL:-0}
[ "${1:-}" != "--debug-kernel" ] || debug=1

fail() {
	echo "run.sh: $*" >&2
	exit 1
}

if [ "$debug" = 1 ]; then
	echo "run.sh: debug kernel (images/debug-kernel/build.sh; a first build takes a while)"
	dk=$("$repo/images/debug-kernel/build.sh" | tail -n1) || fail "debug kernel build failed"
	case "$dk" in
	KERNEL=*" KDIR="*) ;;
	*) fail "images/debug-kernel/build.sh printed '$dk', expected KERNEL=... KDIR=..." ;;
	esac
	kernel=${dk#KERNEL=}
	kernel=${kernel%% KDIR=*}
	kdir=${dk##* KDIR=}
	timeout=${KT_TEST_TIMEOUT:-600}
	echo "run.sh: kernel $kernel"
else
	kdir=$(kt_headers_dir "$kver")
	kernel=/boot/vmlinuz-$kver
	timeout=${KT_TEST_TIMEOUT:-300}
fi

QEMU_KT=${QEMU_KT:-$(compgen -G "$cache/qemu-*/bin/qemu-system-x86_64" | head -n1 || true)}
[ -n "$QEMU_KT" ] && [ -x "$QEMU_KT" ] ||
	fail "patched QEMU not found in $cache/qemu-*/bin (build images/ first or set QEMU_KT)"
[ -r "$kernel" ] || fail "$kernel missing"
[ -x /bin/busybox ] || fail "busybox-static missing"

work=$(mktemp -d /tmp/kt-driver-test.XXXXXX)
device_pid=
cleanup() {
	[ -z "$device_pid" ] || kill "$device_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "run.sh: building modules and the guest test program in $work"
make -s -C "$drv" dist DESTDIR="$work/drv" >/dev/null
mkdir -p "$work/drv/tests"
cp "$here/kt_api_test.c" "$here/Kbuild" "$work/drv/tests/"
if [ "$debug" = 1 ]; then
	# As check.sh does against the packaged headers: sparse and W=1, and
	# any message fails (make -s prints nothing else).
	out=$(nice make -s -C "$kdir" M="$work/drv" C=1 W=1 modules 2>&1) ||
		fail "module build against the debug kernel failed:"$'\n'"$out"
	[ -z "$out" ] || fail "compiler or sparse messages building against the debug kernel:"$'\n'"$out"
else
	nice make -s -C "$kdir" M="$work/drv" modules >/dev/null 2>&1 ||
		fail "module build failed (run guest-driver/check.sh)"
fi
nice make -s -C "$kdir" M="$work/drv/tests" \
	KBUILD_EXTRA_SYMBOLS="$work/drv/Module.symvers" modules >/dev/null 2>&1 ||
	fail "kt_api_test.ko build failed"
gcc -static -O2 -Wall -Werror -I"$repo/proto/include" \
	-o "$work/kt_guest_test" "$here/kt_guest_test.c"

root=$work/root
mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules}
cp /bin/busybox "$root/bin/"
for a in sh mount insmod rmmod lsmod cat dmesg grep sed poweroff sleep echo; do
	ln -s busybox "$root/bin/$a"
done
cp "$work/drv/kerntransport.ko" "$work/drv/kt_kecho.ko" \
	"$work/drv/tests/kt_api_test.ko" "$root/lib/modules/"
cp "$work/kt_guest_test" "$root/bin/"
cat >"$root/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
m=/lib/modules
run() { "$@" || echo "FAIL: $*"; }
scenario=$(sed -n 's/.*kt\.scenario=\([a-z]*\).*/\1/p' /proc/cmdline)
# kt.watchdog=N: a guest still running after N seconds prints every task's
# kernel stack through printk (not the tty, which may be what is stuck),
# then its dmesg, and powers off.
wd=$(sed -n 's/.*kt\.watchdog=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$wd" ]; then
	(
		sleep "$wd"
		k() { echo "<2>$*" >/dev/kmsg; }
		k "KT-WATCHDOG: still running after $wd s; task stacks:"
		for p in /proc/[0-9]*; do
			k "task ${p#/proc/} $(cat "$p/comm") $(grep State "$p/status")"
			while read -r l; do k "  $l"; done <"$p/stack"
		done
		echo "FAIL: watchdog"
		echo "KT-DMESG-BEGIN"
		dmesg
		echo "KT-DMESG-END"
		poweroff -f
	) &
fi
echo "KT-START $scenario"
run insmod $m/kerntransport.ko
run insmod $m/kt_kecho.ko
case $scenario in
nodev)
	run kt_guest_test nodev
	rmmod kerntransport 2>/dev/null && echo "FAIL: unloaded under kt_kecho"
	run rmmod kt_kecho
	run rmmod kerntransport
	run insmod $m/kerntransport.ko
	run insmod $m/kt_kecho.ko
	run rmmod kt_kecho
	run rmmod kerntransport
	;;
reset)
	run kt_guest_test resetreopen
	;;
dev)
	run kt_guest_test dev
	run insmod $m/kt_api_test.ko
	dmesg | grep "kt_api_test"
	dmesg | grep -q "kt_api_test: 0 failures" || echo "FAIL: kt_api_test"
	run rmmod kt_api_test
	run kt_guest_test unbind
	run kt_guest_test firehose
	run kt_guest_test hold
	run rmmod kerntransport
	run insmod $m/kerntransport.ko
	run kt_guest_test quick
	run kt_guest_test breakring
	run rmmod kerntransport
	;;
hostile)
	run kt_guest_test hostile
	run rmmod kt_kecho
	run rmmod kerntransport
	;;
huge)
	run kt_guest_test huge
	run rmmod kt_kecho
	run rmmod kerntransport
	;;
refill)
	# A window that holds every rx buffer of the ring (256 of 4 KiB).
	run rmmod kt_kecho
	run rmmod kerntransport
	run insmod $m/kerntransport.ko window=2097152
	run mount -t debugfs debugfs /sys/kernel/debug
	run kt_guest_test refill
	run rmmod kerntransport
	;;
mq)
	pairs=$(sed -n 's/.*kt\.pairs=\([0-9]*\).*/\1/p' /proc/cmdline)
	run kt_guest_test mq "$pairs"
	dmesg | grep "queue pair"
	if grep -q "kt\.fallback=1" /proc/cmdline; then
		dmesg | grep -q "queue pairs not available.*using one" ||
			echo "FAIL: no fallback to one pair logged"
	fi
	if [ "$pairs" != 1 ]; then
		# A broken rx or tx ring of either pair resets the device:
		# both pairs come back.
		run kt_guest_test breakring 1
		run kt_guest_test breakring 0
		run kt_guest_test mq "$pairs"
		# max_pairs=1: one pair although the device offers two.
		run rmmod kt_kecho
		run rmmod kerntransport
		run insmod $m/kerntransport.ko max_pairs=1
		run kt_guest_test mq 1
		run rmmod kerntransport
	else
		run rmmod kt_kecho
		run rmmod kerntransport
	fi
	;;
notify)
	run kt_guest_test notify
	run rmmod kt_kecho
	run rmmod kerntransport
	;;
flood)
	# kt_guest_test unloads both modules itself, each within a bound.
	# Status 3: a remove is stuck in the kernel.
	kt_guest_test flood
	rc=$?
	[ "$rc" = 0 ] || echo "FAIL: kt_guest_test flood (status $rc)"
	[ "$rc" != 3 ] || stuck=1
	;;
*)
	echo "FAIL: unknown scenario '$scenario'"
	;;
esac
dmesg | grep -E "BUG:|WARNING:|Oops|general protection|refcount_t" &&
	echo "FAIL: kernel problem"
if grep -q "kt\.dmesg=1" /proc/cmdline; then
	echo "KT-DMESG-BEGIN"
	dmesg
	echo "KT-DMESG-END"
fi
echo "KT-END"
# poweroff waits for the device a stuck remove holds; reboot does not
# (and QEMU runs with -no-reboot).
[ -z "${stuck:-}" ] || echo b >/proc/sysrq-trigger
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz"

# The first kernel splat in a serial log (the guest's dmesg dump if it got
# that far, else the console), with what follows it; nothing if none.
splat() {
	local log=$1 text
	if grep -q '^KT-DMESG-END' "$log"; then
		text=$(sed -n '/^KT-DMESG-BEGIN/,/^KT-DMESG-END/p' "$log")
	else
		text=$(cat "$log")
	fi
	printf '%s\n' "$text" | grep -E -B 2 -A 60 -m 1 "$splat_re" | head -n 80 || true
}
splat_re='BUG:|WARNING:|Oops|general protection|refcount_t|Kernel panic|KASAN|KFENCE|possible circular locking|inconsistent lock state|list_(add|del) corruption'

# reports <log>: each distinct report line of the console and the dmesg dump.
reports() {
	grep -E "$splat_re" "$1" | grep -v '^FAIL' | sort | uniq -c | head -n 20 || true
}

failed=0
smp=
append=
[ "$debug" = 0 ] || append=" kt.dmesg=1 log_buf_len=1M kfence.sample_interval=10 kt.watchdog=$((timeout / 2))"
# need_fill: sets $fill_bin to the vhost-user-fill binary (built on first
# use unless KT_FILL_BACKEND names one).
fill_bin=
need_fill() {
	[ -z "$fill_bin" ] || return 0
	fill_bin=${KT_FILL_BACKEND:-}
	if [ -z "$fill_bin" ]; then
		echo "run.sh: building vhost-user-fill"
		(cd "$repo" && nice cargo build -q --release -p kt-vmm \
			--example vhost-user-fill) || fail "vhost-user-fill build failed"
		fill_bin=${CARGO_TARGET_DIR:-$repo/target}/release/examples/vhost-user-fill
	fi
	[ -x "$fill_bin" ] || fail "vhost-user-fill: $fill_bin missing"
}

# pin: the flood scenario runs QEMU and its device on one host CPU (the
# last this script may use), the device under SCHED_FIFO: each guest kick
# wakes the device, which fills what was posted before the vCPU runs on,
# so the guest's rx drain never runs dry, however the host (itself a VM
# here) schedules its CPUs. Empty for the other scenarios.
pin=()
flood_pin() {
	local cpus
	cpus=$(awk '/^Cpus_allowed_list/ { print $2 }' /proc/self/status)
	pin=(taskset -c "$(printf '%s\n' "${cpus##*,}" | sed 's/.*-//')")
}

# start_device <name> <scenario> [env for fake_device.py...]: starts the
# guest's vhost-user device on $work/<name>.sock (the flood scenario's is
# vhost-user-fill with 3 queues, not fake_device.py) and sets $device_pid.
start_device() {
	local name=$1 scenario=$2 sock=$work/$1.sock dlog=$work/$1.device.log
	shift 2
	rm -f "$sock"
	if [ "$scenario" = flood ]; then
		# Config: max_msg_size 4096, max_channels 16, rx_buf_size
		# 256 (the driver then posts 256 rx buffers, each cheap to
		# fill), guest_id 7.
		need_fill
		"${pin[@]}" "$fill_bin" --realtime "$sock" 3 00100000100000000001000007000000 >"$dlog" 2>&1 &
	else
		env "$@" python3 "$here/fake_device.py" "$sock" >"$dlog" 2>&1 &
	fi
	device_pid=$!
	for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
	[ -S "$sock" ] || fail "$name: the device did not start: $(cat "$dlog")"
}

# run_guest <name> <scenario> <qemu binary> [env for fake_device.py...]
# ($smp, when set, is the guest's vCPU count; $vqs and $cfg, when set, the
# device's queue count and config size (3 and 16); $extra more -append
# text.)
vqs=
cfg=
extra=
run_guest() {
	local name=$1 scenario=$2 qemu=$3 log=$work/$1.log dlog=$work/$1.device.log
	shift 3
	if [ -n "${KT_TEST_ONLY:-}" ] && [[ " $KT_TEST_ONLY " != *" $name "* ]]; then
		return 0
	fi
	local args=(-L /usr/share/qemu -L /usr/share/seabios -nic none -m 512
		-kernel "$kernel" -initrd "$work/initrd.gz" -nographic -no-reboot
		-append "console=ttyS0 quiet no_timer_check kt.scenario=$scenario$append$extra")
	[ -z "$smp" ] || args+=(-smp "$smp")
	if [ "$scenario" != nodev ]; then
		local sock=$work/$name.sock
		args+=(-object memory-backend-memfd,id=mem,size=512M,share=on
			-numa node,memdev=mem -chardev "socket,id=kt,path=$sock"
			-device "vhost-user-device-pci,chardev=kt,virtio-id=60,num_vqs=${vqs:-3},vq_size=256,config_size=${cfg:-16}")
	fi
	echo "run.sh: $name"
	local t0=$SECONDS attempt crash rc
	for attempt in 1 2; do
		if [ "$scenario" != nodev ]; then
			start_device "$name" "$scenario" "$@"
		fi
		rc=0
		timeout "$timeout" "${pin[@]}" "$qemu" "${args[@]}" >"$log" 2>&1 || rc=$?
		if [ -n "$device_pid" ]; then
			kill "$device_pid" 2>/dev/null || true
			wait "$device_pid" 2>/dev/null || true
			device_pid=
		fi
		# QEMU itself crashing before the guest's init ran (seen under
		# TCG with -smp 4 while SeaBIOS or the early kernel ran: an
		# assertion in ramblock_ptr, and once a SIGSEGV) says nothing
		# about the driver: run the guest once more, and say so. A
		# second crash, or one after KT-START, is a failure. timeout(1)
		# exits 124 when it fired and 128+N when QEMU died of signal N.
		crash=$(grep -m1 -aE 'qemu-system-x86_64: .*(Assertion|assertion) .*failed' "$log" || true)
		if [ -z "$crash" ] && [ "$rc" -gt 128 ] && ! grep -aq KT-END "$log"; then
			crash="killed by signal $((rc - 128)) ($(kill -l $((rc - 128)) 2>/dev/null || echo '?'))"
		fi
		if [ "$attempt" = 1 ] && [ -n "$crash" ] && ! grep -aq KT-START "$log"; then
			echo "run.sh: $name: RETRY: QEMU crashed before the guest started ($crash)" >&2
			cp "$log" "/tmp/kt-driver-test-$name.qemu-crash.log"
			continue
		fi
		break
	done
	sed -i 's/\x1b\[[0-9;?]*[a-zA-Z]//g' "$log"
	if [ -n "${KT_TEST_LOGS:-}" ]; then
		mkdir -p "$KT_TEST_LOGS"
		cp "$log" "$KT_TEST_LOGS/"
		[ ! -f "$dlog" ] || cp "$dlog" "$KT_TEST_LOGS/"
	fi
	local bad oops
	bad=$(grep -E '^FAIL|failures' "$log" | grep -Ev ': 0 failures' || true)
	oops=$(splat "$log")
	[ -z "$oops" ] || bad+=$'\nkernel splat (the first, in full):\n'$oops$'\nevery report line:\n'$(reports "$log")
	[ -f "$dlog" ] && bad+=$'\n'$(grep -E 'VIOLATION|Traceback' "$dlog" | head -n 20 || true)
	bad=$(printf '%s\n' "$bad" | sed '/^$/d')
	if [ -n "$crash" ]; then
		bad+=$'\nQEMU crashed: '"$crash"
	elif ! grep -q KT-END "$log"; then
		if [ "$rc" = 124 ]; then
			bad+=$'\nguest did not finish within '"$timeout"' s'
		else
			bad+=$'\nguest did not finish: QEMU exited with status '"$rc"
		fi
	fi
	! grep -q KT-WATCHDOG "$log" ||
		bad+=$'\nthe guest watchdog fired; task stacks:\n'$(sed -n '/KT-WATCHDOG/,/^KT-DMESG-BEGIN/p' "$log" | head -n 400)
	if [ -n "$bad" ]; then
		echo "run.sh: $name FAILED:" >&2
		printf '%s\n' "$bad" >&2
		echo "--- serial log: $log, device log: $dlog" >&2
		cp "$log" "/tmp/kt-driver-test-$name.log"
		[ -f "$dlog" ] && cp "$dlog" "/tmp/kt-driver-test-$name.device.log"
		failed=1
	else
		echo "run.sh: $name ok ($(grep -c '^ok:' "$log") checks, $((SECONDS - t0)) s)"
	fi
}

# wanted <scenario name>: whether this pass runs it.
wanted() {
	[ "$smp" = 4 ] && [ -n "${KT_DEBUG_SMP4_SCENARIOS:-}" ] || return 0
	case " $KT_DEBUG_SMP4_SCENARIOS " in *" $1 "*) return 0 ;; esac
	return 1
}

all_scenarios() {
	local sfx=${smp:+-smp$smp}
	! wanted nodev || run_guest "nodev$sfx" nodev qemu-system-x86_64
	! wanted dev || run_guest "dev$sfx" dev "$QEMU_KT"
	! wanted dev-plain-ring ||
		run_guest "dev-plain-ring$sfx" dev "$QEMU_KT" KT_EVENT_IDX=0 KT_INDIRECT=0 KT_RX_BUF=256
	! wanted huge || run_guest "huge$sfx" huge "$QEMU_KT" KT_MAX_MSG=1048576
	! wanted notify || run_guest "notify$sfx" notify "$QEMU_KT" KT_LISTEN_NOTIFY=1
	# A real-time reader woken by the driver's reset walk preempts it (the
	# stock kernel takes preempt=full; the debug kernel, built with full
	# preemption, ignores the word).
	! wanted reset || extra=" preempt=full" run_guest "reset$sfx" reset "$QEMU_KT"
	# fail_function is in the debug kernel only.
	if [ "$debug" = 1 ]; then
		! wanted refill || run_guest "refill$sfx" refill "$QEMU_KT"
	elif [ -z "${KT_TEST_ONLY:-}" ] || [[ " $KT_TEST_ONLY " == *" refill "* ]]; then
		echo "run.sh: refill skipped: needs fail_function, which only the debug kernel has (--debug-kernel)"
	fi
	! wanted hostile || run_guest "hostile$sfx" hostile "$QEMU_KT" KT_HOSTILE=1
	! wanted hostile-plain-ring ||
		run_guest "hostile-plain-ring$sfx" hostile "$QEMU_KT" KT_HOSTILE=1 KT_EVENT_IDX=0 \
			KT_INDIRECT=0 KT_RX_BUF=256
	! wanted flood || { flood_pin; run_guest "flood$sfx" flood "$QEMU_KT"; pin=(); }
	# Queue pairs: at least two vCPUs, config space with max_queue_pairs.
	local smp0=$smp
	smp=${smp:-2}
	cfg=20
	! wanted mq || vqs=5 extra=" kt.pairs=2" run_guest "mq$sfx" mq "$QEMU_KT" KT_MQ=2
	! wanted mq-fallback ||
		vqs=3 extra=" kt.pairs=1 kt.fallback=1" run_guest "mq-fallback$sfx" mq "$QEMU_KT" KT_MQ=2
	! wanted mq-nobit ||
		vqs=5 extra=" kt.pairs=1" run_guest "mq-nobit$sfx" mq "$QEMU_KT" KT_MQ=0
	smp=$smp0
	cfg=
}

if [ "$debug" = 1 ]; then
	for smp in ${KT_DEBUG_SMP:-2 4}; do
		all_scenarios
	done
	what="under the debug kernel (-smp ${KT_DEBUG_SMP:-2 4})"
else
	all_scenarios
	what=
fi
[ "$failed" = 0 ] || fail "failed${what:+ $what} (logs copied to /tmp/kt-driver-test-*.log)"
echo "run.sh: all guest driver conformance tests passed${what:+ $what}"
