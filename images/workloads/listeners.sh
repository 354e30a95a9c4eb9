# Workload "listeners": service discovery, host side (SPEC §2.2, §9). The
# guest listens on two names with `kt listen`; the host test
# (tests/tests/e2e_listeners.rs) sees exactly those names in the device's
# stats and through LIST on --listen, talks to svc-a, and after the guest
# stopped svc-a sees only svc-b, which it then talks to.
#
#   kt listen svc-a, kt listen svc-b           -> "KT: listening on svc-a and svc-b"
#   (host: one session with svc-a)             -> svc-a stopped, "KT: stopped svc-a"
#   (host: one session with svc-b)             -> "KT: listeners done"
. /workloads/lib.sh
need_module kerntransport
kt_sysfs >/dev/null || fail "no kerntransport device bound"
# Only this workload's listeners: kt_kecho would add k.echo.
if grep -q '^kt_kecho ' /proc/modules; then
	rmmod kt_kecho || fail "rmmod kt_kecho failed"
fi

o0=$(kt_stat opens_in)
kt listen svc-a --echo -q >/tmp/svc-a.out 2>&1 &
a=$!
kt listen svc-b --echo -q >/tmp/svc-b.out 2>&1 &
b=$!
echo "KT: listening on svc-a and svc-b"

wait_until 120 "the host's svc-a session" host_sessions_done $((o0 + 1))
kill "$a" || fail "svc-a exited early: $(cat /tmp/svc-a.out)"
wait "$a" 2>/dev/null || true
echo "KT: stopped svc-a"

wait_until 120 "the host's svc-b session" host_sessions_done $((o0 + 2))
kill "$b" || fail "svc-b exited early: $(cat /tmp/svc-b.out)"
wait "$b" 2>/dev/null || true
echo "KT: listeners done"
