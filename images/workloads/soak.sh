# Workload "soak": the guest half of the soak with faults
# (tests/tests/e2e_soak.rs, docs/e2e.md). Guest traffic is `kt soak echo`
# (8 channels to the host's echo service, every echo verified); the host
# soaks `k.echo` (kernel code) and `uecho` (`kt listen uecho --echo`, user
# space) at the same time. Faults from this side: writers to the host's
# "sink" killed with SIGKILL mid-stream, and both modules unloaded and
# reloaded while the host keeps opening channels. It runs in cycles until
# the host says "done" on the guest service soak-done:
#
#   cycle C: kt soak for kt.soak_secs (default 15)  -> "KT: soak started (cycle C)"
#   SIGTERM it (it drains and reports); if the host said done -> "KT: soak done"
#   else                                            -> "KT: reload wanted (cycle C)"
#   (host: stops its k.echo soak: accepted channels pin kt_kecho.ko)
#   kill -9 the listeners, rmmod, insmod            -> "KT: modules reloaded (cycle C)"
#
# Each run ends with a `KT-SOAK guest-runC: sent=... ` line, and prints
# `KT-SOAK-PROGRESS` lines every 2 s; the test adds them to the host's.
# kt.soak_victims=N: writers killed per cycle (default 4).
. /workloads/lib.sh
need_module kerntransport
need_module kt_kecho
kt_sysfs >/dev/null || fail "no kerntransport device bound"
secs=$(kt_arg kt.soak_secs) || secs=15
victims=$(kt_arg kt.soak_victims) || victims=4

# The user-space echo listener the host soaks, and the listener for the
# host's "done" (it records it in /tmp/soak-done).
start_listeners() {
	kt listen uecho --echo --quiet >/tmp/uecho.out 2>&1 &
	lpid=$!
	kt recv soak-done --listen --count 1 >>/tmp/soak-done 2>&1 &
	dpid=$!
}

# kill_writers COUNT: COUNT times, start a writer to "sink" and SIGKILL it
# mid-stream.
kill_writers() {
	_i=0
	while [ "$_i" -lt "$1" ]; do
		kt gen sink --count 100000000 --max-size 4096 >/dev/null 2>&1 &
		_w=$!
		usleep $((200000 + _i * 150000))
		kill -9 "$_w" 2>/dev/null
		wait "$_w" 2>/dev/null
		_i=$((_i + 1))
	done
	echo "KT: killed $1 writers mid-stream"
}

gone() { ! grep -q "^$1 " /proc/modules; }
unload() { rmmod "$1" 2>/dev/null && gone "$1"; }
no_kecho_channels() { ! grep -q ' k\.echo$' "$(kt_sysfs)/channels"; }
bound() { kt_sysfs >/dev/null && [ -c /dev/kerntransport ]; }
# For a k.echo channel that outlives its host end: what is still listed,
# and the kernel stacks of tasks inside kerntransport (a kt_kecho callback
# stuck in kt_send() would show here).
dump_kecho() {
	echo "KT: channels still listed:"
	cat "$(kt_sysfs)/channels"
	for p in /proc/[0-9]*; do
		grep -q 'kt_' "$p/stack" 2>/dev/null || continue
		echo "KT: task ${p#/proc/} $(cat "$p/comm"):"
		cat "$p/stack"
	done
}

: >/tmp/soak-done
start_listeners
cycle=0
while :; do
	cycle=$((cycle + 1))
	kt soak echo --channels 8 --count 1000000000 --max-size 8192 \
		--label "guest-run$cycle" --report-secs 2 &
	spid=$!
	echo "KT: soak started (cycle $cycle)"
	kill_writers "$victims"
	sleep "$secs"
	kill -TERM "$spid" 2>/dev/null
	wait "$spid" || fail "soak run $cycle failed (see its KT-SOAK line)"
	grep -q done /tmp/soak-done && break

	echo "KT: reload wanted (cycle $cycle)"
	KT_ON_TIMEOUT=dump_kecho
	wait_until 120 "the host to close its k.echo channels" no_kecho_channels
	KT_ON_TIMEOUT=
	kill -9 "$lpid" "$dpid" 2>/dev/null
	wait "$lpid" "$dpid" 2>/dev/null
	# The host may have said done just before its listener went away.
	grep -q done /tmp/soak-done && break
	wait_until 30 "rmmod kt_kecho" unload kt_kecho
	wait_until 30 "rmmod kerntransport" unload kerntransport
	for m in kerntransport kt_kecho; do
		out=$(insmod "/lib/modules/kerntransport/$m.ko" 2>&1) || fail "insmod $m.ko: $out"
	done
	wait_until 30 "the device to be bound again" bound
	start_listeners
	echo "KT: modules reloaded (cycle $cycle)"
done
echo "KT: soak done after $cycle cycles"
echo "KT: guest stats: resets $(kt_stat resets), malformed $(kt_stat malformed)"
