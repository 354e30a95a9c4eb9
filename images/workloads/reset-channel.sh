# Workload "reset-channel": channels open across a kt-vhost-device restart.
# The host test (tests/tests/e2e_reset.rs) plays the other end.
#
# Before the restart: `kt listen g-echo --echo` (a listener), a blocked
# reader (`kt recv hold`, after one message "before-reset" from the host)
# and a blocked writer (`kt gen stall` while the host does not read) ->
# "KT: ready for backend restart". The host restarts the backend; the
# driver gets a transport reset: the reader and the writer must end with
# ECONNRESET, the listener must survive. After it: `kt gen sink` (1000 x
# 1..4096 B, --seed 42) verified by the host, then
# "KT: ready for host after reset" and the host's echo round trips through
# g-echo.
. /workloads/lib.sh
need_module kerntransport
kt_sysfs >/dev/null || fail "no kerntransport device bound"

kt listen g-echo --echo -q >/tmp/g-echo.out 2>&1 &
lpid=$!
kt recv hold --timeout 200 >/tmp/hold.out 2>&1 &
rpid=$!
s0=$(kt_stat credit_stalls)
t0=$(kt_stat tx_msgs)
kt gen stall --count 100000 --min-size 1024 --max-size 1024 --seed 41 \
	>/tmp/stall.out 2>&1 &
gpid=$!
got_hello() { grep -q before-reset /tmp/hold.out; }
wait_until 60 "'before-reset' on hold" got_hello
wait_stalled "$gpid" stall "$s0" "$t0"
r0=$(kt_stat resets)
echo "KT: ready for backend restart"

was_reset() { [ "$(kt_stat resets)" -gt "$r0" ]; }
wait_until 120 "a transport reset" was_reset
echo "KT: transport reset seen"
# ended_with_reset PID LABEL: the process must fail with ECONNRESET.
ended_with_reset() {
	if wait "$1"; then
		fail "$2 should fail after the reset: $(cat "/tmp/$2.out")"
	fi
	case "$(cat "/tmp/$2.out")" in
	*ECONNRESET*) echo "KT: $2 after the reset: $(tail -n1 "/tmp/$2.out")" ;;
	*) fail "$2: expected ECONNRESET, got: $(cat "/tmp/$2.out")" ;;
	esac
}
ended_with_reset "$rpid" hold
ended_with_reset "$gpid" stall
kill -0 "$lpid" 2>/dev/null || fail "the g-echo listener died: $(cat /tmp/g-echo.out)"

out=$(kt gen sink --count 1000 --min-size 1 --max-size 4096 --seed 42 2>&1) ||
	fail "gen to sink after the reset: $out"
echo "KT: sink after the reset: $out"
o0=$(kt_stat opens_in)
echo "KT: ready for host after reset"
wait_until 60 "the host's echo session" host_sessions_done $((o0 + 1))
kill "$lpid"
echo "KT: g-echo served the host after the reset"
