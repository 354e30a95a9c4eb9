# Workload "soak": the guest half of the soak with faults
# (tests/tests/e2e_soak.rs, docs/e2e.md). Guest traffic is `kt soak echo`
# (8 channels to the host's echo service, every echo verified); the host
# soaks `k.echo` (kernel code) and `uecho` (`kt listen uecho --echo`, user
# space) at the same time. Faults from this side: writers to the host's
# "sink" killed with SIGKILL mid-stream, all through the run, and both
# modules unloaded and reloaded while the host keeps opening channels.
#
#   run 1: kt soak for kt.soak_secs (default 15)   -> "KT: soak started"
#   SIGTERM run 1 (it drains and reports)          -> "KT: reload wanted"
#   (host: stops its k.echo soak: accepted channels pin kt_kecho.ko)
#   kill -9 the uecho listener, rmmod, insmod      -> "KT: modules reloaded"
#   run 2: kt soak until the host sends "done" on soak-done
#   SIGTERM run 2                                  -> "KT: soak run 2 done"
#
# Each run ends with a `KT-SOAK guest-runN: sent=... ` line, and prints
# `KT-SOAK-PROGRESS` lines every 2 s; the test adds them to the host's.
# kt.soak_secs=S: length of run 1 (default 15); kt.soak_victims=N: writers
# killed per run (default 4).
. /workloads/lib.sh
need_module kerntransport
need_module kt_kecho
kt_sysfs >/dev/null || fail "no kerntransport device bound"
secs=$(kt_arg kt.soak_secs) || secs=15
victims=$(kt_arg kt.soak_victims) || victims=4

start_listener() {
	kt listen uecho --echo --quiet >/tmp/uecho.out 2>&1 &
	lpid=$!
}

# kill_writers COUNT: COUNT times, start a writer to "sink" and SIGKILL it
# mid-stream; prints how many messages the driver sent meanwhile.
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

# soak_run LABEL: kt soak in the background until SIGTERM (pid in $spid).
soak_run() {
	kt soak echo --channels 8 --count 1000000000 --max-size 8192 --label "$1" \
		--report-secs 2 &
	spid=$!
}

gone() { ! grep -q "^$1 " /proc/modules; }
unload() { rmmod "$1" 2>/dev/null && gone "$1"; }
no_kecho_channels() { ! grep -q ' k\.echo$' "$(kt_sysfs)/channels"; }
bound() { kt_sysfs >/dev/null && [ -c /dev/kerntransport ]; }

start_listener
soak_run guest-run1
echo "KT: soak started: run 1 for $secs s"
kill_writers "$victims"
sleep "$secs"

kill -TERM "$spid" 2>/dev/null
wait "$spid" || fail "soak run 1 failed (see its KT-SOAK line)"
echo "KT: reload wanted"
wait_until 120 "the host to close its k.echo channels" no_kecho_channels
kill -9 "$lpid"
wait "$lpid" 2>/dev/null
wait_until 30 "rmmod kt_kecho" unload kt_kecho
wait_until 30 "rmmod kerntransport" unload kerntransport
for m in kerntransport kt_kecho; do
	out=$(insmod "/lib/modules/kerntransport/$m.ko" 2>&1) || fail "insmod $m.ko: $out"
done
wait_until 30 "the device to be bound again" bound
start_listener
echo "KT: modules reloaded"

soak_run guest-run2
kill_writers "$victims"
out=$(kt recv soak-done --listen --count 1 --timeout 2400 2>&1) ||
	fail "no word from the host that its soaks are done: $out"
kill -TERM "$spid" 2>/dev/null
wait "$spid" || fail "soak run 2 failed (see its KT-SOAK line)"
echo "KT: soak run 2 done"
echo "KT: guest stats: resets $(kt_stat resets), malformed $(kt_stat malformed)"
