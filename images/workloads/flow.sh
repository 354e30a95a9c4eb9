# Workload "flow": backpressure and a sender killed mid-stream. The host
# test (tests/tests/e2e_flow.rs) plays the other end; stream parameters
# must match it.
#
# 1. block:   kt gen to host service "stall" (2000 x 1 KiB, --seed 31) while
#             the host does not read: the writer must stall (credit_stalls
#             grows, nothing sent for a second, still running) -> marker;
#             the host then reads and verifies everything.
# 2. nonblock: the same with --nonblock (--seed 32): kt gen reports how
#             often write() returned EAGAIN.
# 3. h-slow:  host -> guest: kt verify --listen (3000 x 1 KiB, --seed 33) is
#             stopped (SIGSTOP) once the host connected -> marker; the
#             host's non-blocking sends hit EAGAIN; the host then sends one
#             message to listener "resume", the reader continues and must
#             verify all 3000.
# 4. doomed:  kt gen of an endless stream (16..256 B, --seed 34) to
#             "doomed" is killed with SIGKILL after 1000+ messages; the host
#             must see the channel close after exactly the messages the
#             driver sent.
. /workloads/lib.sh
need_module kerntransport
kt_sysfs >/dev/null || fail "no kerntransport device bound"

writer_step() { # LABEL extra-kt-gen-args...
	label=$1
	shift
	s0=$(kt_stat credit_stalls)
	t0=$(kt_stat tx_msgs)
	kt gen stall --count 2000 --min-size 1024 --max-size 1024 "$@" \
		>"/tmp/$label.out" 2>&1 &
	pid=$!
	wait_stalled "$pid" "$label" "$s0" "$t0"
	wait "$pid" || fail "$label writer: $(cat "/tmp/$label.out")"
	echo "KT: $label writer done: $(cat "/tmp/$label.out")"
}
writer_step block --seed 31
writer_step nonblock --seed 32 --nonblock

o0=$(kt_stat opens_in)
kt verify h-slow --listen --count 3000 --min-size 1024 --max-size 1024 \
	--seed 33 --timeout 120 >/tmp/h-slow.out 2>&1 &
vpid=$!
opened() { [ "$(kt_stat opens_in)" -gt "$o0" ]; }
wait_until 60 "the host to connect to h-slow" opened
kill -STOP "$vpid"
echo "KT: h-slow reader stopped"
out=$(kt recv resume --listen --count 1 --timeout 120 2>&1) || fail "resume: $out"
kill -CONT "$vpid"
wait "$vpid" || fail "h-slow: $(cat /tmp/h-slow.out)"
echo "KT: h-slow reader resumed on '$out': $(cat /tmp/h-slow.out)"

t0=$(kt_stat tx_msgs)
kt gen doomed --count 1000000000 --min-size 16 --max-size 256 --seed 34 \
	>/tmp/doomed.out 2>&1 &
pid=$!
sent_enough() {
	kill -0 "$pid" 2>/dev/null || fail "doomed: kt gen exited early: $(cat /tmp/doomed.out)"
	[ $(($(kt_stat tx_msgs) - t0)) -ge 1000 ]
}
wait_until 60 "1000 messages on doomed" sent_enough
kill -9 "$pid"
wait "$pid"
rc=$?
closed() { [ "$(kt_stat open_channels)" = 0 ]; }
wait_until 30 "the doomed channel to close" closed
echo "KT: doomed: kt gen killed (status $rc) after $(($(kt_stat tx_msgs) - t0)) messages"
