# Workload "discovery": service discovery through the device's own
# service kt.services (SPEC section 3.3). The host test
# (tests/tests/e2e_discovery.rs) plays the other end:
#   1. `kt list`: prints "KT: list1 NAME,NAME,..." (every line kt printed,
#      each followed by a comma); the host compares it with its policy.
#   2. `kt list --wait newsvc` in the background; once its kt.services
#      channel is open (sysfs open_channels), "KT: waiting for newsvc".
#      The host then rewrites its policy (adding newsvc) and reloads it.
#   3. the waiter exits 0 ("KT: wait returned 0"), and a second `kt list`
#      prints "KT: list2 ..." for the host to compare with the new policy.
#   4. `kt list --wait never --timeout 1` fails with its one-line error.
. /workloads/lib.sh
need_module kerntransport
sys=$(kt_sysfs) || fail "no kerntransport device bound"

# list_line LABEL: runs `kt list` and prints its lines as one.
list_line() {
	kt list >/tmp/list.out 2>/tmp/list.err || fail "$1: kt list failed: $(cat /tmp/list.err)"
	echo "KT: $1 $(tr '\n' ',' </tmp/list.out)"
}

list_line list1
[ "$(cat "$sys/open_channels")" = 0 ] || fail "kt list left a channel open"

waiter_open() {
	[ "$(cat "$sys/open_channels")" = 1 ]
}
kt list --wait newsvc --timeout 240 >/tmp/wait.out 2>&1 &
waiter=$!
wait_until 30 "the waiter's kt.services channel" waiter_open
# The first listing has arrived and did not name newsvc: still waiting.
sleep 1
kill -0 "$waiter" 2>/dev/null || fail "kt list --wait exited before the reload: $(cat /tmp/wait.out)"
echo "KT: waiting for newsvc"
wait "$waiter"
rc=$?
echo "KT: wait returned $rc"
[ "$rc" = 0 ] || fail "kt list --wait newsvc: exit $rc: $(cat /tmp/wait.out)"

list_line list2

if kt list --wait never --timeout 1 >/tmp/never.out 2>&1; then
	fail "kt list --wait never --timeout 1 succeeded"
fi
echo "KT: never: $(cat /tmp/never.out)"
grep -q "never: not listed by kt.services within 1 s" /tmp/never.out ||
	fail "unexpected timeout message: $(cat /tmp/never.out)"
